"""Shifted-window self-attention (Liu et al. 2021, "Swin Transformer", arXiv 2103.14030, Sec. 3.2).

Self-attention is computed inside non-overlapping M x M windows of a (B, H, W, C) feature map
(W-MSA); every other block shifts the window grid by floor(M/2) (SW-MSA) so that information
crosses window borders. The shift is a cyclic roll of the map (Sec. 3.2, "efficient batch
computation for shifted configuration", Fig. 4), so a shifted window may hold tokens from opposite
edges of the map: :func:`cyclic_shift_mask` blocks attention between such sub-windows. Each head
adds a learned bias indexed by the relative offset of query and key (Eq. 4), looked up through
:func:`relative_position_index`.

:class:`WindowAttention` *is* the shared :class:`~research.layers.Attention` (same ``qkv``/``proj``,
same SDPA call): it only partitions the map, and hands the bias plus the shift mask to SDPA as one
additive float ``attn_mask``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from timm.layers import to_2tuple
from torch import Tensor, nn

from research.layers.attention import Attention


def window_partition(x: Tensor, window_size: int | tuple[int, int]) -> Tensor:
    """Cut a feature map into non-overlapping windows, each flattened to a token sequence.

    Args:
        x: (B, H, W, C), H and W multiples of the window's height and width.
        window_size: M, or (Mh, Mw) for a rectangular window.

    Returns:
        (B * nW, Mh * Mw, C): windows in row-major order within each image (images outermost),
        tokens in row-major order within each window; nW = (H / Mh) * (W / Mw).

    """
    mh, mw = to_2tuple(window_size)
    if x.dim() != 4 or x.shape[1] % mh or x.shape[2] % mw:
        raise ValueError(
            f"window_partition needs (B, H, W, C) with H, W multiples of the window {mh}x{mw}; "
            f"got shape {tuple(x.shape)} (pad the map first)"
        )
    return rearrange(x, "b (nh mh) (nw mw) c -> (b nh nw) (mh mw) c", mh=mh, mw=mw)


def window_reverse(windows: Tensor, window_size: int | tuple[int, int], height: int, width: int) -> Tensor:
    """Invert :func:`window_partition`.

    Args:
        windows: (B * nW, Mh * Mw, C).
        window_size: M or (Mh, Mw), as given to :func:`window_partition`.
        height: H of the map, a multiple of Mh.
        width: W of the map, a multiple of Mw.

    Returns:
        (B, H, W, C).

    """
    mh, mw = to_2tuple(window_size)
    if height % mh or width % mw or windows.dim() != 3 or windows.shape[1] != mh * mw:
        raise ValueError(
            f"window_reverse needs (B * nW, {mh * mw}, C) windows of a {height}x{width} map that the "
            f"{mh}x{mw} window tiles; got shape {tuple(windows.shape)}"
        )
    return rearrange(windows, "(b nh nw) (mh mw) c -> b (nh mh) (nw mw) c", nh=height // mh, nw=width // mw, mh=mh)


def relative_position_index(
    window_size: int | tuple[int, int],
    table_size: int | tuple[int, int] | None = None,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """Row of the relative position bias table for every (query, key) pair of a window (Sec. 3.2, Eq. 4).

    The offset (dy, dx) of query i from key j lies in [-(Mh-1), Mh-1] x [-(Mw-1), Mw-1], so the
    table has (2Mh-1)(2Mw-1) rows, read row-major in (dy, dx). A window smaller than the table's
    (a stage whose map is smaller than M) reads the rows of the offsets it can see, so a bias
    learned for the larger window keeps its meaning.

    Args:
        window_size: (Mh, Mw) of the window being attended over, or M.
        table_size: window (Th, Tw) the table was built for, at least ``window_size``;
            default ``window_size``.
        device: where to build the index.

    Returns:
        Long tensor (Mh*Mw, Mh*Mw) of rows in [0, (2Th-1)(2Tw-1)).

    """
    mh, mw = to_2tuple(window_size)
    th, tw = to_2tuple(table_size) if table_size is not None else (mh, mw)
    if mh > th or mw > tw:
        raise ValueError(f"a {mh}x{mw} window does not fit a bias table built for {th}x{tw} windows")
    rows = torch.arange(mh, device=device).repeat_interleave(mw)  # (N,) row of each token, row-major
    cols = torch.arange(mw, device=device).repeat(mh)
    dy = rows[:, None] - rows[None, :]  # (N, N), query minus key
    dx = cols[:, None] - cols[None, :]
    return (dy + th - 1) * (2 * tw - 1) + (dx + tw - 1)


def cyclic_shift_mask(
    height: int,
    width: int,
    window_size: int | tuple[int, int],
    shift_size: int | tuple[int, int],
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """Additive attention mask of SW-MSA on a map rolled by ``-shift_size`` (Sec. 3.2, Fig. 4).

    After the roll, the last window row/column holds tokens from both the bottom/right strip of
    the map and the top/left strip that wrapped around; such tokens were never neighbours and
    must not attend to each other. Along each axis the rolled map splits into three regions,
    [0, H - Mh), [H - Mh, H - s), [H - s, H); two tokens may attend to each other iff they lie in
    the same region along both axes (the regions of the official implementation).

    Args:
        height: H of the (padded) map, a multiple of Mh.
        width: W of the (padded) map, a multiple of Mw.
        window_size: M or (Mh, Mw).
        shift_size: s or (sh, sw), each in [0, M).
        device: where to build the mask.

    Returns:
        Float (nW, Mh*Mw, Mh*Mw): 0 where query i may attend to key j, -inf where not; windows
        in :func:`window_partition` order.

    """
    (mh, mw), (sh, sw) = to_2tuple(window_size), to_2tuple(shift_size)
    if height % mh or width % mw or not (0 <= sh < mh and 0 <= sw < mw):
        raise ValueError(
            f"cyclic_shift_mask needs a {height}x{width} map tiled by the {mh}x{mw} window and shifts in "
            f"[0, window); got shift ({sh}, {sw})"
        )

    def regions(length: int, window: int, shift: int) -> Tensor:
        pos = torch.arange(length, device=device)
        return (pos >= length - window).long() + (pos >= length - shift).long() if shift else pos * 0

    region = regions(height, mh, sh)[:, None] * 3 + regions(width, mw, sw)[None, :]  # (H, W)
    region = window_partition(region[None, :, :, None], (mh, mw))[..., 0]  # (nW, N)
    blocked = region[:, :, None] != region[:, None, :]  # (nW, N, N)
    return torch.zeros(blocked.shape, device=device).masked_fill_(blocked, float("-inf"))


class WindowAttention(Attention):
    """W-MSA or SW-MSA over a (B, H, W, C) map: :class:`Attention` within windows, plus Eq. 4's bias.

    Any map size works. A map side not a multiple of the window is zero-padded at the bottom/right
    before the shift and cropped afterwards, as the official implementation does; a map side no
    larger than the window shrinks the window to it and turns the shift off along that axis (one
    window already sees the whole side). The index table and the shift mask for the last map size
    seen are non-persistent buffers, rebuilt only when the size (or device) changes.

    Args:
        dim: token width C.
        num_heads: attention heads h.
        window_size: M or (Mh, Mw): the largest window, which sizes the bias table.
        shifted: SW-MSA (roll the map by floor(M/2) first) instead of W-MSA.
        use_rel_pos_bias: add Eq. 4's learned relative position bias (the paper's default); False
            leaves out the table (timm BEiT's name), for the "no pos." / "abs. pos." rows of Table 4.
        **attn_args: ``qkv_bias``, ``attn_drop``, ``proj_drop`` of :class:`~research.layers.Attention`.

    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        window_size: int | tuple[int, int],
        shifted: bool = False,
        use_rel_pos_bias: bool = True,
        **attn_args,
    ) -> None:
        super().__init__(dim, num_heads, **attn_args)
        self.window_size = to_2tuple(window_size)
        if min(self.window_size) < 1:
            raise ValueError(f"window_size must be positive, got {window_size}")
        self.shifted = shifted
        mh, mw = self.window_size
        self.relative_position_bias_table = None
        if use_rel_pos_bias:
            # one learned bias per head and relative offset (Eq. 4): (2M-1)^2 x h
            self.relative_position_bias_table = nn.Parameter(torch.empty((2 * mh - 1) * (2 * mw - 1), num_heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", None, persistent=False)
        self.register_buffer("attn_mask", None, persistent=False)
        self._buffers_key: tuple | None = None  # (H, W, device) the two buffers were built for

    def window_and_shift(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Window (Mh, Mw) and shift (sh, sw) used on a ``height`` x ``width`` map."""
        mh, mw = self.window_size
        window = (min(height, mh), min(width, mw))
        # shift by floor(M/2) (Sec. 3.2); a side the window already covers whole has nothing to shift
        shift = tuple(m // 2 if self.shifted and side > m else 0 for side, m in ((height, mh), (width, mw)))
        return window, shift

    def _refresh_buffers(self, height: int, width: int, device: torch.device) -> None:
        """Build the index (and, if shifted, the mask) for a padded ``height`` x ``width`` map."""
        key = (height, width, device)
        if key == self._buffers_key:
            return
        window, shift = self.window_and_shift(height, width)
        self.relative_position_index = relative_position_index(window, self.window_size, device=device).flatten()
        self.attn_mask = cyclic_shift_mask(height, width, window, shift, device=device) if any(shift) else None
        self._buffers_key = key

    def _attention_bias(self, batch: int, window: tuple[int, int]) -> Tensor | None:
        """Relative position bias plus the shift mask, as one mask broadcastable to (B * nW, h, N, N).

        Call after :meth:`_refresh_buffers`. Without a shift the bias is (1, h, N, N) and broadcasts
        over every window; with one, each window has its own mask, so the sum is repeated per image.
        Without the bias table it is the shift mask alone, (B * nW, 1, N, N), or None (no mask at all).
        """
        if self.relative_position_bias_table is None:
            if self.attn_mask is None:
                return None
            return repeat(self.attn_mask[:, None], "w 1 i j -> (b w) 1 i j", b=batch)
        n = window[0] * window[1]
        bias = self.relative_position_bias_table[self.relative_position_index]  # (N*N, h)
        bias = rearrange(bias, "(i j) h -> h i j", i=n)
        if self.attn_mask is None:
            return bias[None]
        # SDPA takes one 4-D mask over the (B * nW) windows, so the (nW, h, N, N) sum is repeated per
        # image: one (B * nW, h, N, N) tensor, the size of the scores timm masks in place. In training
        # (a mask that needs a gradient) SDPA computes on its math path as timm does; at inference its
        # fused kernel never builds the scores.
        return repeat(self.attn_mask[:, None] + bias, "w h i j -> (b w) h i j", b=batch)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]  # a map, not a sequence
        """Self-attention within (shifted) windows.

        Args:
            x: (B, H, W, C) feature map, any H and W.

        Returns:
            (B, H, W, C).

        """
        b, h, w, _ = x.shape
        window, (sh, sw) = self.window_and_shift(h, w)
        pad_h, pad_w = -h % window[0], -w % window[1]
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # zeros at the bottom/right, before the shift
        hp, wp = h + pad_h, w + pad_w  # padding never changes the window or the shift
        self._refresh_buffers(hp, wp, x.device)
        if sh or sw:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))  # cyclic shift (Fig. 4)
        windows = window_partition(x, window)  # (B * nW, N, C)
        windows = super().forward(windows, attn_mask=self._attention_bias(b, window))
        x = window_reverse(windows, window, hp, wp)  # (B, Hp, Wp, C)
        if sh or sw:
            x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))  # reverse cyclic shift
        return x[:, :h, :w] if pad_h or pad_w else x

    def extra_repr(self) -> str:
        rel = "" if self.relative_position_bias_table is not None else ", use_rel_pos_bias=False"
        return f"window_size={self.window_size}, shifted={self.shifted}{rel}"
