"""Transformer decoder layer (Vaswani et al. 2017, "Attention Is All You Need", arXiv 1706.03762, Sec. 3.1).

Causal self-attention, cross-attention to the encoder output, then the MLP; post-norm as in the
paper, or pre-norm.
"""

from __future__ import annotations

from torch import Tensor, nn

from research.layers.block import Block
from research.layers.decoder_attention import CausalSelfAttention, CrossAttention, KVCache


class DecoderBlock(Block):
    """Pre-norm: x += attn(norm1(x)); x += cross_attn(norm_cross(x), context); x += mlp(norm2(x)).

    With ``norm_first=False``, post-norm: x = norm1(x + attn(x)); x = norm_cross(x + cross_attn(x,
    context)); x = norm2(x + mlp(x)). Each residual branch goes through drop path (stochastic depth).
    :class:`~research.layers.Block` with a causal ``attn`` and ``norm_cross`` + ``cross_attn`` added.

    Args:
        dim: token width C.
        num_heads: attention heads h, in both attentions.
        mlp_ratio: MLP hidden width / C.
        norm_layer: normalisation class, called as ``norm_layer(dim)``.
        **block_args: the other arguments of :class:`~research.layers.Block` but ``attn_layer``
            (``qkv_bias``, ``proj_drop``, ``attn_drop``, ``drop_path``, ``act_layer``, ``norm_first``);
            the cross-attention takes the same ``qkv_bias``, ``attn_drop`` and ``proj_drop``.

    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        **block_args,
    ) -> None:
        super().__init__(dim, num_heads, mlp_ratio, norm_layer=norm_layer, attn_layer=CausalSelfAttention, **block_args)
        attn_args = {k: v for k, v in block_args.items() if k in ("qkv_bias", "attn_drop", "proj_drop")}
        self.norm_cross = norm_layer(dim)
        self.cross_attn = CrossAttention(dim, num_heads, **attn_args)

    def forward(  # type: ignore[override]  # needs the encoder output
        self,
        x: Tensor,
        context: Tensor,
        *,
        context_padding_mask: Tensor | None = None,
        cache: KVCache | None = None,
        context_cache: KVCache | None = None,
    ) -> Tensor:
        """Decode: token i sees target tokens j <= i and every unpadded token of ``context``.

        Args:
            x: target tokens (B, N, C); with a ``cache``, only the N tokens after the cached ones.
            context: encoder output, (B, Nk, C).
            context_padding_mask: bool (B, Nk), True = padding in ``context``.
            cache: self-attention keys/values of earlier tokens, updated in place (incremental
                decoding, see :class:`~research.layers.KVCache`).
            context_cache: cross-attention keys/values of ``context``, filled on the first call and
                reused afterwards.

        Returns:
            (B, N, C).

        """

        def cross(h: Tensor) -> Tensor:
            return self.cross_attn(h, context, key_padding_mask=context_padding_mask, cache=context_cache)

        if not self.norm_first:
            x = self.norm1(x + self.drop_path(self.attn(x, cache=cache)))
            x = self.norm_cross(x + self.drop_path(cross(x)))
            return self.norm2(x + self.drop_path(self.mlp(x)))
        x = x + self.drop_path(self.attn(self.norm1(x), cache=cache))
        x = x + self.drop_path(cross(self.norm_cross(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
