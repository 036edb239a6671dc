"""Transformer encoder block, pre-norm (ViT paper, Eq. 2-3; Xiong et al. 2020, arXiv 2002.04745) or post-norm.

Pre-norm (LayerNorm inside the residual branch) trains without learning-rate warm-up tricks and is
what ViT, MAE, Swin and timm use. Post-norm (``norm_first=False``: LayerNorm after each residual
sum) is the original Transformer's (Vaswani et al. 2017, Sec. 3.1) and BERT's. The decoder layer
of the seq2seq Transformer, with cross-attention and KV caches, is :class:`~research.layers.DecoderBlock`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from research.layers.attention import Attention
from research.layers.drop_path import DropPath
from research.layers.mlp import Mlp


class Block(nn.Module):
    """Pre-norm block: x += attn(norm1(x)); x += mlp(norm2(x)).

    With ``norm_first=False``, post-norm: x = norm1(x + attn(x)); x = norm2(x + mlp(x)). Each
    residual branch goes through drop path (stochastic depth).

    Submodule names are timm's (``norm1``, ``attn``, ``norm2``, ``mlp``), so a timm ViT or Swin
    block's weights load by name.

    Args:
        dim: token width C.
        num_heads: attention heads h.
        mlp_ratio: MLP hidden width / C.
        qkv_bias: learn a bias in the qkv projection.
        proj_drop: dropout after the attention projection and in the MLP.
        attn_drop: dropout on attention weights.
        drop_path: stochastic depth probability of each residual branch.
        norm_layer: normalisation class, called as ``norm_layer(dim)``.
        act_layer: MLP activation class.
        norm_first: pre-norm (True) or post-norm (False).
        attn_layer: the attention class, called as ``attn_layer(dim, num_heads, qkv_bias=...,
            attn_drop=..., proj_drop=...)``: :class:`~research.layers.Attention`, or e.g. Swin's
            ``partial(WindowAttention, window_size=7)``.

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
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        norm_first: bool = True,
        attn_layer: Callable[..., nn.Module] = Attention,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = norm_layer(dim)
        self.attn = attn_layer(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor, **attn_args) -> Tensor:
        """Run the block.

        Args:
            x: tokens (B, N, C), or whatever the attention takes (Swin's: a map (B, H, W, C)).
            **attn_args: passed on to the attention; for :class:`~research.layers.Attention` its
                masks ``attn_mask`` (broadcastable to (B, h, N, N)) and ``key_padding_mask`` (bool
                (B, N), True = padding).

        Returns:
            The shape of ``x``.

        """
        if not self.norm_first:
            x = self.norm1(x + self.drop_path(self.attn(x, **attn_args)))
            return self.norm2(x + self.drop_path(self.mlp(x)))
        x = x + self.drop_path(self.attn(self.norm1(x), **attn_args))
        return x + self.drop_path(self.mlp(self.norm2(x)))
