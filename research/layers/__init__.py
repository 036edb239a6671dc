"""Building blocks shared by every model: pure torch + einops, no Lightning.

Shape legend used in every docstring:

- ``B`` batch size
- ``N`` tokens (``Nk``: keys/values when they differ from the queries)
- ``C`` channels or token width
- ``H``, ``W`` spatial height and width
- ``h`` attention heads, ``d`` head dim (C = h * d)
- ``P`` patch size
"""

from research.layers.attention import Attention, merge_masks
from research.layers.block import Block
from research.layers.drop_path import DropPath, drop_path
from research.layers.mlp import Mlp
from research.layers.patch_embed import PatchEmbed, patchify, unpatchify
from research.layers.pos_embed import resample_pos_embed, sincos_pos_embed_1d, sincos_pos_embed_2d

__all__ = [
    "Attention",
    "Block",
    "DropPath",
    "Mlp",
    "PatchEmbed",
    "drop_path",
    "merge_masks",
    "patchify",
    "resample_pos_embed",
    "sincos_pos_embed_1d",
    "sincos_pos_embed_2d",
    "unpatchify",
]
