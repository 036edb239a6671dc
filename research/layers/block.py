"""Transformer block, pre-norm (ViT paper, Eq. 2-3; Xiong et al. 2020, arXiv 2002.04745) or post-norm.

Pre-norm (LayerNorm inside the residual branch) trains without learning-rate warm-up tricks and is
what ViT, MAE and timm use. Post-norm (``norm_first=False``: LayerNorm after each residual sum) is
the original Transformer's (Vaswani et al. 2017, Sec. 3.1) and BERT's. With
``cross_attention=True`` the block becomes a decoder layer of the seq2seq Transformer:
self-attention, then cross-attention to the encoder output, then the MLP.
"""

from __future__ import annotations

from torch import Tensor, nn

from research.layers.attention import Attention, KVCache
from research.layers.drop_path import DropPath
from research.layers.mlp import Mlp


class Block(nn.Module):
    """Pre-norm block: x += attn(norm1(x)); [x += cross_attn(norm_cross(x), context);] x += mlp(norm2(x)).

    With ``norm_first=False``, post-norm: x = norm1(x + attn(x)); [x = norm_cross(x + cross_attn(x,
    context));] x = norm2(x + mlp(x)). Each residual branch goes through drop path (stochastic depth).

    Submodule names are timm's (``norm1``, ``attn``, ``norm2``, ``mlp``), so a timm ViT block's
    weights load by name.

    Args:
        dim: token width C.
        num_heads: attention heads h.
        mlp_ratio: MLP hidden width / C.
        qkv_bias: learn a bias in the qkv projections.
        proj_drop: dropout after the attention projection and in the MLP.
        attn_drop: dropout on attention weights.
        drop_path: stochastic depth probability of each residual branch.
        norm_layer: normalisation class, called as ``norm_layer(dim)``.
        act_layer: MLP activation class.
        cross_attention: add ``norm_cross`` and ``cross_attn`` between self-attention and MLP.
        norm_first: pre-norm (True) or post-norm (False).

    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        cross_attention: bool = False,
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        attn_args = dict(qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, **attn_args)
        self.cross_attention = cross_attention
        if cross_attention:
            self.norm_cross = norm_layer(dim)
            self.cross_attn = Attention(dim, num_heads, **attn_args)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        context_padding_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        context_cache: KVCache | None = None,
    ) -> Tensor:
        """Run the block; masks have the meaning they have in :class:`~research.layers.Attention`.

        Args:
            x: (B, N, C).
            context: encoder output for cross-attention, (B, Nk, C); required iff ``cross_attention``.
            attn_mask: self-attention bool (True = may attend) or additive float mask,
                broadcastable to (B, h, N, N).
            key_padding_mask: bool (B, N), True = padding in ``x``.
            context_padding_mask: bool (B, Nk), True = padding in ``context``.
            is_causal: causal self-attention (decoders).
            cache: self-attention keys/values of earlier tokens, updated in place; ``x`` then holds
                only the new tokens (incremental decoding, see :class:`~research.layers.KVCache`).
            context_cache: cross-attention keys/values of ``context``, filled on the first call and
                reused afterwards.

        Returns:
            (B, N, C).

        """
        if self.cross_attention != (context is not None):
            raise ValueError(
                "this block was built with cross_attention=True and needs a context tensor"
                if self.cross_attention
                else "context given to a block without cross-attention; build it with cross_attention=True"
            )
        self_args = dict(attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal, cache=cache)
        cross_args = dict(key_padding_mask=context_padding_mask, cache=context_cache)
        if not self.norm_first:
            x = self.norm1(x + self.drop_path(self.attn(x, **self_args)))
            if self.cross_attention:
                cross = self.cross_attn(x, context, **cross_args)
                x = self.norm_cross(x + self.drop_path(cross))
            return self.norm2(x + self.drop_path(self.mlp(x)))
        x = x + self.drop_path(self.attn(self.norm1(x), **self_args))
        if self.cross_attention:
            x = x + self.drop_path(self.cross_attn(self.norm_cross(x), context, **cross_args))
        return x + self.drop_path(self.mlp(self.norm2(x)))
