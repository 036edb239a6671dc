"""Multi-head self-attention (Vaswani et al. 2017, arXiv 1706.03762) over ``F.scaled_dot_product_attention``.

:class:`Attention` is the self-attention of every encoder (ViT, MAE, BERT, the seq2seq encoder) and,
inside windows, of Swin (:class:`~research.layers.WindowAttention`, whose relative position bias and
shift mask come in as ``attn_mask``). Submodule names (``qkv``, ``proj``) are timm's, so timm
checkpoints load by name.

:func:`multi_head_attention` is the one SDPA call, with every mask merged into one; its module form
:class:`MultiHeadAttention` (heads, SDPA, output projection) is what this class and the decoder's
attention (:mod:`research.layers.decoder_attention`) share.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class MultiHeadAttention(nn.Module):
    """What every attention here shares: heads, SDPA and the output projection ``proj``.

    A subclass passes its input projections (e.g. ``qkv=nn.Linear(C, 3C)``), which are registered
    first, as in timm, and calls :meth:`attend` on the queries, keys and values they make.

    Args:
        dim: token width C (input and output).
        num_heads: number of heads h; the head dim is d = C / h.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
        **in_proj: the input projections, by name.

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``.

    """

    def __init__(
        self, dim: int, num_heads: int, *, attn_drop: float = 0.0, proj_drop: float = 0.0, **in_proj: nn.Module
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        for name, module in in_proj.items():
            self.add_module(name, module)
        self.attn_drop = attn_drop  # a probability for SDPA's dropout_p, not a module
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def split_heads(self, x: Tensor, parts: int) -> Tensor:
        """(B, N, parts * C) projections -> (parts, B, h, N, d): e.g. q, k, v of a fused ``qkv``."""
        return rearrange(x, "b n (parts h d) -> parts b h n d", parts=parts, h=self.num_heads)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, **masks) -> Tensor:
        """Attention of queries (B, h, N, d) to keys/values (B, h, Nk, d), projected to (B, N, C).

        ``masks``: ``attn_mask``, ``key_padding_mask``, ``is_causal`` of :func:`multi_head_attention`.
        """
        out = multi_head_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0, **masks)
        return self.proj_drop(self.proj(out))


class Attention(MultiHeadAttention):
    """Multi-head self-attention with a fused ``qkv`` projection.

    Args:
        dim: token width C (input and output).
        num_heads: number of heads h; the head dim is d = C / h.
        qkv_bias: learn a bias in the ``qkv`` projection.
        **attn_args: ``attn_drop``, ``proj_drop`` of :class:`MultiHeadAttention`.

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``.

    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, **attn_args) -> None:
        super().__init__(dim, num_heads, qkv=nn.Linear(dim, 3 * dim, bias=qkv_bias), **attn_args)

    def forward(
        self,
        x: Tensor,
        *,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """Attend from every token of ``x`` to every token of ``x``; masks as in :func:`multi_head_attention`.

        Args:
            x: (B, N, C).
            attn_mask: bool (True = may attend) or additive float mask, broadcastable to (B, h, N, N).
            key_padding_mask: bool (B, N), True = padding, never attended to.
            is_causal: token i attends only to tokens j <= i.

        Returns:
            (B, N, C).

        """
        q, k, v = self.split_heads(self.qkv(x), 3)
        return self.attend(q, k, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal)


def multi_head_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
) -> Tensor:
    """softmax(Q K^T / sqrt(d) + mask) V per head (Eq. 1), with the heads concatenated again.

    All masks may be given together; they are merged (:func:`merge_masks`) into the one mask SDPA takes.

    Args:
        q: queries (B, h, N, d).
        k: keys (B, h, Nk, d).
        v: values (B, h, Nk, d).
        attn_mask: broadcastable to (B, h, N, Nk); either an additive float bias (e.g. Swin's
            relative position bias, ``-inf``/``-100`` to block) or a bool mask with True = may
            attend, as in ``F.scaled_dot_product_attention``.
        key_padding_mask: bool (B, Nk), True = padding, never attended to (as in
            ``nn.MultiheadAttention``; note the opposite sense to a bool ``attn_mask``).
        is_causal: query i attends only to keys j <= i (top-left aligned when N != Nk, as SDPA).
        dropout_p: dropout on the attention weights; pass 0 outside training.

    Returns:
        (B, N, h * d).

    Raises:
        ValueError: a mask whose shape or dtype does not fit.

    """
    mask = merge_masks(attn_mask, key_padding_mask, is_causal, shape=(*q.shape[:3], k.shape[2]))
    if mask is not None and mask.is_floating_point():
        mask = mask.to(q.dtype)  # SDPA wants a float mask in the query's dtype (bf16 under autocast)
    # SDPA refuses is_causal together with attn_mask; merge_masks folded it in then.
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal and mask is None
    )
    return rearrange(out, "b h n d -> b n (h d)")


def merge_masks(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    is_causal: bool,
    *,
    shape: tuple[int, int, int, int],
) -> Tensor | None:
    """Fold a padding mask and, if other masks are present, causality into one SDPA ``attn_mask``.

    A bare ``is_causal`` is left to SDPA (which then picks its fast causal kernels), so this returns
    None when only ``is_causal`` is set.

    Args:
        attn_mask: None, a bool mask (True = may attend) or an additive float bias, broadcastable
            to ``shape``.
        key_padding_mask: None or bool (B, Nk), True = padding.
        is_causal: whether query i may only see keys j <= i.
        shape: (B, h, N, Nk) of the attention scores.

    Returns:
        None, a bool mask (True = may attend) or an additive float mask, broadcastable to ``shape``.

    Raises:
        ValueError: a mask whose shape or dtype does not fit.

    """
    b, _, n, nk = shape
    if attn_mask is not None:
        fits = attn_mask.dim() <= 4 and all(m in (1, s) for m, s in zip(attn_mask.shape[::-1], shape[::-1]))
        if not fits:
            raise ValueError(
                f"attn_mask has shape {tuple(attn_mask.shape)}, "
                f"which does not broadcast to (B, h, N, Nk) = {shape}"
            )
    if key_padding_mask is None and not (is_causal and attn_mask is not None):
        return attn_mask

    keep = None  # bool, True = may attend
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (b, nk):
            raise ValueError(
                f"key_padding_mask must be bool of shape (B, Nk) = ({b}, {nk}) with True = padding; "
                f"got {key_padding_mask.dtype} of shape {tuple(key_padding_mask.shape)}"
            )
        keep = rearrange(~key_padding_mask, "b k -> b 1 1 k")
    if is_causal:
        device = (attn_mask if attn_mask is not None else key_padding_mask).device
        causal = torch.ones(n, nk, dtype=torch.bool, device=device).tril()
        keep = causal if keep is None else keep & causal
    if attn_mask is None:
        return keep
    if attn_mask.dtype == torch.bool:
        return attn_mask & keep
    return torch.where(keep, attn_mask, float("-inf"))
