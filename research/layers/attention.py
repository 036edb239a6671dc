"""Multi-head attention (Vaswani et al. 2017, arXiv 1706.03762) over ``F.scaled_dot_product_attention``.

One implementation for every model: ViT/MAE/BERT self-attention, causal decoding, seq2seq
cross-attention and Swin's windowed attention (whose relative position bias and shift mask come in
as ``attn_mask``). Submodule names (``qkv``, ``proj``) are timm's, so timm checkpoints load by name.

Incremental decoding passes a :class:`KVCache` per attention layer: self-attention appends the new
keys/values to it, cross-attention fills it once from the encoder output and reuses it afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


@dataclass
class KVCache:
    """Keys and values one attention layer has computed so far, for incremental decoding.

    The attention layer that receives it updates it in place: self-attention appends the keys and
    values of the new tokens, cross-attention stores the encoder output's keys and values on the
    first call and reuses them on later calls (so the context is projected once per sequence).

    Attributes:
        k: keys, (B, h, Nk, d), or None before the first call.
        v: values, (B, h, Nk, d), or None before the first call.

    """

    k: Tensor | None = None
    v: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add the keys/values (B, h, N, d) of new tokens; return all of them, (B, h, Nk, d)."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def index_select(self, indices: Tensor) -> KVCache:
        """A cache whose batch row i is row ``indices[i]`` of this one (beam search reordering)."""
        if self.k is None:
            return KVCache()
        return KVCache(self.k.index_select(0, indices), self.v.index_select(0, indices))


class Attention(nn.Module):
    """Multi-head attention with a fused ``qkv`` projection.

    Args:
        dim: token width C (input and output).
        num_heads: number of heads h; the head dim is d = C / h.
        qkv_bias: learn a bias in the ``qkv`` projection.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.

    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop  # a probability for SDPA's dropout_p, not a module
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Attend from ``x`` to itself, or to ``context`` (cross-attention).

        All masks may be given together; they are merged into the one mask SDPA takes.

        Args:
            x: queries (and, without ``context``, keys and values), (B, N, C).
            context: keys and values for cross-attention, (B, Nk, C). The query rows and the
                key/value rows of the same ``qkv`` weight project ``x`` and ``context``, so self- and
                cross-attention share one parameter set.
            attn_mask: broadcastable to (B, h, N, Nk); either an additive float bias (e.g. Swin's
                relative position bias, ``-inf``/``-100`` to block) or a bool mask with
                True = may attend, as in ``F.scaled_dot_product_attention``.
            key_padding_mask: bool (B, Nk), True = padding, never attended to (as in
                ``nn.MultiheadAttention``; note the opposite sense to a bool ``attn_mask``).
            is_causal: query i attends only to keys j <= i (top-left aligned when N != Nk, as SDPA).
                With a self-attention ``cache`` the N new queries are the last N positions, so the
                mask is bottom-right aligned: new query i sees every cached key and new keys j <= i.
            cache: keys/values of earlier calls, updated in place (see :class:`KVCache`). For
                self-attention ``x`` then holds only the new tokens and ``key_padding_mask``, if
                given, must cover cached and new keys, (B, Nk). For cross-attention a filled cache
                replaces the projection of ``context``.

        Returns:
            (B, N, C).

        """
        if context is None:
            qkv = self.qkv(x)
            q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
            if cache is not None:
                k, v = cache.append(k, v)
                if is_causal and k.shape[2] > q.shape[2]:
                    attn_mask = _with_causal(attn_mask, q.shape[2], k.shape[2], device=q.device)
                    is_causal = False
        elif cache is not None and cache.k is not None:
            w_q, b_q = self.qkv.weight[: self.dim], None if self.qkv.bias is None else self.qkv.bias[: self.dim]
            q = rearrange(F.linear(x, w_q, b_q), "b n (h d) -> b h n d", h=self.num_heads)
            k, v = cache.k, cache.v
        else:
            # Slices of the fused weight: rows [0, C) project queries, rows [C, 3C) keys and values.
            sizes = [self.dim, 2 * self.dim]
            w_q, w_kv = self.qkv.weight.split(sizes)
            b_q, b_kv = self.qkv.bias.split(sizes) if self.qkv.bias is not None else (None, None)
            q = rearrange(F.linear(x, w_q, b_q), "b n (h d) -> b h n d", h=self.num_heads)
            kv = F.linear(context, w_kv, b_kv)
            k, v = rearrange(kv, "b n (two h d) -> two b h n d", two=2, h=self.num_heads)
            if cache is not None:
                cache.k, cache.v = k, v
        mask = merge_masks(
            attn_mask, key_padding_mask, is_causal, shape=(q.shape[0], self.num_heads, q.shape[2], k.shape[2])
        )
        if mask is not None and mask.is_floating_point():
            mask = mask.to(q.dtype)  # SDPA wants a float mask in the query's dtype (bf16 under autocast)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.attn_drop if self.training else 0.0,
            # SDPA refuses is_causal together with attn_mask; merge_masks folded it in then.
            is_causal=is_causal and mask is None,
        )
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.proj_drop(self.proj(out))


def _with_causal(attn_mask: Tensor | None, n: int, nk: int, *, device: torch.device) -> Tensor:
    """``attn_mask`` combined with a bottom-right aligned causal mask: query i sees keys j <= i + nk - n."""
    keep = torch.ones(n, nk, dtype=torch.bool, device=device).tril(diagonal=nk - n)
    if attn_mask is None:
        return keep
    if attn_mask.dtype == torch.bool:
        return attn_mask & keep
    return torch.where(keep, attn_mask, float("-inf"))


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
