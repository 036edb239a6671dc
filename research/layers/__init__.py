"""Building blocks shared by every model: pure torch + einops, no Lightning.

The one exception: fitting position tables and patch kernels to another size calls timm's
resampling functions (``timm.layers``), so a converted checkpoint equals timm's; sizes given as an
int or a pair go through timm's ``to_2tuple``.

Shape legend used in every docstring:

- ``B`` batch size
- ``N`` tokens (``Nk``: keys/values when they differ from the queries)
- ``C`` channels or token width
- ``H``, ``W`` spatial height and width
- ``h`` attention heads, ``d`` head dim (C = h * d)
- ``P`` patch size
"""

from research.layers.attention import Attention, MultiHeadAttention, merge_masks, multi_head_attention
from research.layers.block import Block
from research.layers.decoder_attention import CausalSelfAttention, CrossAttention, KVCache
from research.layers.decoder_block import DecoderBlock
from research.layers.drop_path import DropPath, drop_path
from research.layers.mlp import Mlp
from research.layers.patch_embed import PatchEmbed, patchify, resample_patch_embed, unpatchify
from research.layers.pos_embed import (
    fit_pos_embed,
    resample_pos_embed,
    resize_rel_pos_bias_table,
    sincos_grid,
    sincos_pos_embed_1d,
    sincos_pos_embed_2d,
)
from research.layers.separable import DepthwiseSeparableConv2d, separable_weight_ratio
from research.layers.weight_init import init_linears_
from research.layers.window import (
    WindowAttention,
    cyclic_shift_mask,
    relative_position_index,
    window_partition,
    window_reverse,
)

__all__ = [
    "Attention",
    "Block",
    "CausalSelfAttention",
    "CrossAttention",
    "DecoderBlock",
    "DepthwiseSeparableConv2d",
    "DropPath",
    "KVCache",
    "MultiHeadAttention",
    "Mlp",
    "PatchEmbed",
    "WindowAttention",
    "cyclic_shift_mask",
    "drop_path",
    "fit_pos_embed",
    "init_linears_",
    "merge_masks",
    "multi_head_attention",
    "patchify",
    "relative_position_index",
    "resample_patch_embed",
    "resample_pos_embed",
    "resize_rel_pos_bias_table",
    "separable_weight_ratio",
    "sincos_grid",
    "sincos_pos_embed_1d",
    "sincos_pos_embed_2d",
    "unpatchify",
    "window_partition",
    "window_reverse",
]
