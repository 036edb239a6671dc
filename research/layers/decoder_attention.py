"""The attention of a Transformer decoder (Vaswani et al. 2017, arXiv 1706.03762, Sec. 3.2.3), with KV caches.

A decoder layer attends twice: causally to the target tokens so far (:class:`CausalSelfAttention`,
the encoder's :class:`~research.layers.Attention` with its fused ``qkv``) and to the encoder output
(:class:`CrossAttention`, whose queries and keys/values come from different sequences and so from
separate ``q`` and ``kv`` projections). Both share :func:`~research.layers.multi_head_attention`.

Incremental decoding passes a :class:`KVCache` per attention layer: self-attention appends the new
tokens' keys/values to it, cross-attention fills it once from the encoder output and reuses it, so
decoding token by token gives exactly the outputs of decoding the whole target at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from research.layers.attention import Attention, MultiHeadAttention


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


class CausalSelfAttention(Attention):
    """Masked self-attention of a decoder: token i attends to tokens j <= i, optionally through a cache.

    Same parameters (``qkv``, ``proj``) and arguments as :class:`~research.layers.Attention`.
    """

    def forward(self, x: Tensor, *, cache: KVCache | None = None) -> Tensor:  # type: ignore[override]
        """Attend causally from the tokens ``x``.

        Args:
            x: (B, N, C): the whole target, or with a ``cache`` only the N tokens after the cached ones.
            cache: keys/values of the earlier tokens, to which those of ``x`` are appended in place.

        Returns:
            (B, N, C).

        """
        q, k, v = self.split_heads(self.qkv(x), 3)
        if cache is not None:
            k, v = cache.append(k, v)
        n, nk = q.shape[2], k.shape[2]
        # The N new queries are the last N of Nk positions: query i sees every cached key and the new
        # keys j <= i, a bottom-right aligned causal mask (SDPA's is_causal is top-left aligned).
        keep = torch.ones(n, nk, dtype=torch.bool, device=q.device).tril(nk - n) if nk > n else None
        return self.attend(q, k, v, attn_mask=keep, is_causal=keep is None)


class CrossAttention(MultiHeadAttention):
    """Multi-head attention from queries ``x`` to another sequence ``context`` (encoder-decoder attention).

    Args:
        dim: token width C of queries, context and output.
        num_heads: number of heads h; the head dim is d = C / h.
        qkv_bias: learn a bias in the ``q`` and ``kv`` projections.
        **attn_args: ``attn_drop``, ``proj_drop`` of :class:`~research.layers.MultiHeadAttention`.

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``.

    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, **attn_args) -> None:
        q, kv = nn.Linear(dim, dim, bias=qkv_bias), nn.Linear(dim, 2 * dim, bias=qkv_bias)
        super().__init__(dim, num_heads, q=q, kv=kv, **attn_args)
        self.register_load_state_dict_pre_hook(_split_fused_qkv)

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        *,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Attend from ``x`` to ``context``; masks as in :func:`~research.layers.multi_head_attention`.

        Args:
            x: queries, (B, N, C).
            context: keys and values, (B, Nk, C), e.g. the encoder output.
            attn_mask: bool (True = may attend) or additive float mask, broadcastable to (B, h, N, Nk).
            key_padding_mask: bool (B, Nk), True = padding in ``context``.
            is_causal: query i attends only to keys j <= i (top-left aligned).
            cache: filled with the keys/values of ``context`` on the first call; once filled it
                replaces their projection (``context`` is then not read).

        Returns:
            (B, N, C).

        """
        (q,) = self.split_heads(self.q(x), 1)
        if cache is not None and cache.k is not None:
            k, v = cache.k, cache.v
        else:
            k, v = self.split_heads(self.kv(context), 2)
            if cache is not None:
                cache.k, cache.v = k, v
        return self.attend(q, k, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal)


def _split_fused_qkv(module: CrossAttention, state_dict: dict, prefix: str, *args) -> None:
    """Read a checkpoint saved before ``q`` and ``kv`` were separate: one ``qkv`` of rows q, k, v.

    Translation checkpoints trained before the split hold ``cross_attn.qkv.{weight,bias}`` (3C rows);
    rows [0, C) are the query projection and rows [C, 3C) the key/value projection, as here.
    """
    for kind in ("weight", "bias"):
        fused = state_dict.pop(f"{prefix}qkv.{kind}", None)
        if fused is not None:
            state_dict[f"{prefix}q.{kind}"], state_dict[f"{prefix}kv.{kind}"] = fused.split(
                [module.q.out_features, module.kv.out_features]
            )
