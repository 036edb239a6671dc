"""Swin Transformer (Liu et al. 2021, "Hierarchical Vision Transformer using Shifted Windows", arXiv 2103.14030).

Built as in the paper's Sec. 3.1 (Fig. 3a): a 4x4 patch partition with a linear embedding, then
four stages of Swin blocks (the shared pre-norm :class:`~research.layers.Block`) that alternate W-MSA
and SW-MSA (:class:`~research.layers.WindowAttention`, the shared attention with a relative position
bias), each stage after the first opening with a patch merging that halves the map and doubles the
width; global average pooling and a linear head.

Reference we match: timm's ``SwinTransformer`` (``timm/models/swin_transformer.py``), whose
state_dicts load strict through ``research.models.import_weights`` (layout "timm") and give the same
logits; the official Microsoft checkpoints (patch merging at the *end* of a stage, ``head.weight``,
persistent index/mask buffers) load too (layout "microsoft"). ``tests/models/test_swin.py`` checks
both, the parameter count and the paper's FLOPs.

Deviations from timm:

- Any input whose sides the patch size divides runs through a model built for any ``img_size``:
  a side that is not a multiple of the window is padded before the shift and cropped afterwards,
  as the official (detection) implementation does (timm pads after the shift); ``img_size`` only
  fixes each stage's window, which shrinks to a stage map no larger than it (as in timm).
- ``drop_rate`` is the official one (after the patch embedding and in the MLP and projections),
  not timm's dropout before the head.
- Table 4's ablations are options (defaults are the paper's model): ``shift_windows=False`` keeps
  every block W-MSA ("w/o shifting"); ``ape=True`` adds the official code's learned absolute
  position embedding ``absolute_pos_embed`` after the patch embedding (timm dropped it);
  ``use_rel_pos_bias=False`` leaves out Eq. 4's bias tables (timm BEiT's name).
- Only the paper's model: no per-stage head dims, ``always_partition``, feature taps, or
  JAX/MoCo init modes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from research.layers import (
    Block,
    PatchEmbed,
    WindowAttention,
    init_linears_,
    resample_patch_embed,
    resize_rel_pos_bias_table,
)
from research.models.registry import register_model
from research.models.weights import StateDict, register_layout, register_resize


class PatchMerging(nn.Module):
    """Concatenate each 2x2 group of neighbours (4C), LayerNorm, then a linear 4C -> 2C (Sec. 3.1).

    An odd side is zero-padded at the bottom/right first, as in the official implementation. The
    concatenation order is the official one (top-left, bottom-left, top-right, bottom-right), so
    the ``reduction`` weights of timm and Microsoft checkpoints apply unchanged.

    Args:
        dim: input width C; the output width is 2C.

    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Halve the map.

        Args:
            x: (B, H, W, C).

        Returns:
            (B, ceil(H / 2), ceil(W / 2), 2C).

        """
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
        x = rearrange(x, "b (h p) (w q) c -> b h w (q p c)", p=2, q=2)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """One stage: an optional patch merging, then blocks alternating W-MSA and SW-MSA (Fig. 3b).

    Args:
        dim: token width of the blocks (after merging).
        depth: number of blocks; odd ones (1, 3, ...) shift their windows.
        num_heads: attention heads.
        window_size: (Mh, Mw) of this stage.
        downsample: open with a :class:`PatchMerging` from width ``dim // 2``.
        drop_path: one stochastic depth probability per block.
        shift_windows: odd blocks use SW-MSA (the paper); False keeps every block W-MSA (Table 4, "w/o shifting").
        use_rel_pos_bias: the blocks add Eq. 4's relative position bias (the paper; Table 4).
        **block_kwargs: :class:`~research.layers.Block` arguments shared by every block.

    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        *,
        window_size: tuple[int, int],
        downsample: bool,
        drop_path: Sequence[float],
        shift_windows: bool = True,
        use_rel_pos_bias: bool = True,
        **block_kwargs,
    ) -> None:
        super().__init__()
        self.downsample = PatchMerging(dim // 2) if downsample else nn.Identity()
        self.blocks = nn.Sequential(
            *(
                # Eq. 3: x += (S)W-MSA(LN(x)); x += MLP(LN(x)), the pre-norm block around a window attention
                Block(
                    dim,
                    num_heads,
                    attn_layer=partial(WindowAttention, window_size=window_size, shifted=shift_windows and i % 2 == 1,
                                       use_rel_pos_bias=use_rel_pos_bias),
                    drop_path=drop_path[i],
                    **block_kwargs,
                )
                for i in range(depth)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        """Merge patches (if this stage does), then run the blocks.

        Args:
            x: (B, H, W, C_in), C_in = C / 2 when the stage merges patches, else C.

        Returns:
            (B, H', W', C), H' = ceil(H / 2) when the stage merges patches, else H.

        """
        return self.blocks(self.downsample(x))


class SwinTransformer(nn.Module):
    """Swin Transformer: patch embedding, four stages of shifted-window blocks, average pooling, linear head.

    Args:
        img_size: input size the stage windows are chosen for, an int or (H, W). Other sizes run
            too (see the module docstring); the patch size must divide the sides.
        patch_size: P of the patch partition.
        in_chans: input channels.
        num_classes: classes of the linear head; 0 for no head (``forward`` returns pooled features).
        embed_dim: width C of stage 1; stage i has width C * 2^(i-1).
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: M, the window side; a stage whose map side is at most M uses the whole side.
        mlp_ratio: MLP hidden width / token width.
        qkv_bias: learn a bias in the qkv projections.
        drop_rate: dropout after the patch embedding, after attention projections and in the MLPs.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth of the last block; it rises linearly from 0 over all blocks.
        shift_windows: alternate W-MSA and SW-MSA (the paper); False: W-MSA only (Table 4, "w/o shifting").
        ape: add a learned absolute position embedding ``absolute_pos_embed`` (1, L, C) after the patch
            embedding, as the official code's ``ape`` (Table 4, "abs. pos."); it fixes the input to ``img_size``.
        use_rel_pos_bias: add the relative position bias of Eq. 4 in every block (the paper; Table 4,
            "rel. pos."); ``ape=True, use_rel_pos_bias=False`` is "abs. pos.", both False "no pos.".

    Raises:
        ValueError: ``depths`` and ``num_heads`` of different lengths; with ``ape``, an input of another size.

    """

    def __init__(
        self,
        *,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        shift_windows: bool = True,
        ape: bool = False,
        use_rel_pos_bias: bool = True,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads) or not depths:
            raise ValueError(
                f"depths {tuple(depths)} and num_heads {tuple(num_heads)} need one entry per stage, the same number"
            )
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.in_chans = in_chans
        widths = [embed_dim * 2**i for i in range(len(depths))]
        self.num_features = widths[-1]  # width of forward_head(pre_logits=True), as timm

        # Patch partition + linear embedding (Sec. 3.1) as one conv; PatchEmbed checks img_size.
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.patch_norm = nn.LayerNorm(embed_dim)  # the official "patch_norm" after the embedding
        self.absolute_pos_embed = None
        if ape:  # the official code: zeros, then truncated normal (std 0.02), added after the patch norm
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)

        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        grid, stages = self.patch_embed.grid_size, []
        for i, (depth, heads, width) in enumerate(zip(depths, num_heads, widths)):
            if i > 0:
                grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)  # patch merging pads odd sides
            stages.append(
                SwinStage(
                    width,
                    depth,
                    heads,
                    window_size=(min(grid[0], window_size), min(grid[1], window_size)),
                    downsample=i > 0,
                    drop_path=rates[sum(depths[:i]) : sum(depths[: i + 1])],
                    shift_windows=shift_windows,
                    use_rel_pos_bias=use_rel_pos_bias,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=drop_rate,
                    attn_drop=attn_drop_rate,
                )
            )
        self.layers = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Initialise as the official code: truncated normal (std 0.02) linears, zero biases, unit norms.

        The patch-embedding conv keeps PyTorch's default init; bias tables are set by
        :class:`~research.layers.WindowAttention` (truncated normal, std 0.02).
        """
        init_linears_(self, partial(nn.init.trunc_normal_, std=0.02))

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layers for layer-wise lr decay, in timm's format.

        The embedding, then each block (a stage's patch merging goes with its first block), then the final norm.
        """
        stem = r"^patch_embed|patch_norm|absolute_pos_embed"
        if coarse:
            return {"stem": stem, "blocks": r"^layers\.(\d+)"}
        blocks = [(r"^layers\.(\d+).downsample", (0,)), (r"^layers\.(\d+)\.\w+\.(\d+)", None), (r"^norm", (99999,))]
        return {"stem": stem, "blocks": blocks}

    def forward_features(self, x: Tensor) -> Tensor:
        """Embed the patches and run the four stages.

        Args:
            x: images (B, in_chans, H, W), H and W multiples of the patch size.

        Returns:
            Normalised feature map (B, H', W', C') of the last stage (channels last, as timm),
            H' = H / P / 2^(stages - 1) rounded up, C' = ``num_features``.

        """
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected images of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}; "
                f"pass in_chans={x.shape[1] if x.dim() == 4 else '...'} to build for other channels"
            )
        h, w = x.shape[2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"a {h}x{w} image is not divisible into {self.patch_size}x{self.patch_size} patches; "
                f"resize or crop it to multiples of {self.patch_size}, or build with another patch_size"
            )
        # The conv of PatchEmbed without its fixed-size check: Swin takes any size P divides.
        x = self.patch_norm(rearrange(self.patch_embed.proj(x), "b c h w -> b h w c"))
        if self.absolute_pos_embed is not None:
            grid = tuple(self.patch_embed.grid_size)
            if x.shape[1:3] != grid:
                raise ValueError(
                    f"a model with an absolute position embedding (ape=True) takes {grid[0] * self.patch_size}x"
                    f"{grid[1] * self.patch_size} images, got {h}x{w}; resize them or build with img_size=({h}, {w})"
                )
            x = x + rearrange(self.absolute_pos_embed, "1 (h w) c -> 1 h w c", h=grid[0])
        x = self.pos_drop(x)
        return self.norm(self.layers(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Average-pool the map and classify.

        Args:
            x: feature map from :meth:`forward_features`, (B, H', W', C').
            pre_logits: return the pooled features instead of logits.

        Returns:
            Logits (B, num_classes), or features (B, C') if ``pre_logits`` or ``num_classes=0``.

        """
        x = x.mean(dim=(1, 2))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """Classify images.

        Args:
            x: (B, in_chans, H, W).

        Returns:
            Logits (B, num_classes), or pooled features (B, C') when ``num_classes=0``.

        """
        return self.forward_head(self.forward_features(x))


def _swin(kwargs: dict, **defaults) -> SwinTransformer:
    """Build a Swin from a factory's pinned ``defaults``, which the caller's ``kwargs`` override."""
    return SwinTransformer(**dict(defaults, **kwargs))


# Architectures of the paper's Sec. 3.3: C and the layer numbers per stage; heads have width 32.
# The paper trains with stochastic depth 0.2 / 0.3 / 0.5 / 0.2 (T / S / B / L, Sec. 4.1 and App. A2):
# a training choice, so it goes in a config (drop_path_rate), not here.
_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
_S = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
_L = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))


@register_model
def swin_tiny_patch4_window7_224(**kwargs) -> SwinTransformer:
    """Swin-T at 224x224: C=96, depths (2, 2, 6, 2), 28.3M parameters, 4.5G multiply-adds."""
    return _swin(kwargs, img_size=224, patch_size=4, window_size=7, **_T)


@register_model
def swin_small_patch4_window7_224(**kwargs) -> SwinTransformer:
    """Swin-S at 224x224: C=96, depths (2, 2, 18, 2), 8.7G multiply-adds."""
    return _swin(kwargs, img_size=224, patch_size=4, window_size=7, **_S)


@register_model
def swin_base_patch4_window7_224(**kwargs) -> SwinTransformer:
    """Swin-B at 224x224: C=128, depths (2, 2, 18, 2), 15.4G multiply-adds."""
    return _swin(kwargs, img_size=224, patch_size=4, window_size=7, **_B)


@register_model
def swin_large_patch4_window7_224(**kwargs) -> SwinTransformer:
    """Swin-L at 224x224: C=192, depths (2, 2, 18, 2), 34.5G multiply-adds."""
    return _swin(kwargs, img_size=224, patch_size=4, window_size=7, **_L)


@register_model
def swin_base_patch4_window12_384(**kwargs) -> SwinTransformer:
    """Swin-B at 384x384 with 12x12 windows (the paper's fine-tuning at 384, Sec. 4.1)."""
    return _swin(kwargs, img_size=384, patch_size=4, window_size=12, **_B)


@register_model
def swin_large_patch4_window12_384(**kwargs) -> SwinTransformer:
    """Swin-L at 384x384 with 12x12 windows."""
    return _swin(kwargs, img_size=384, patch_size=4, window_size=12, **_L)


@register_model
def swin_tiny_patch2_window4_32(**kwargs) -> SwinTransformer:
    """Swin-T on 32x32 images (CIFAR): 2x2 patches, maps 16/8/4/2 with 4x4 windows (2x2 in the last stage)."""
    return _swin(kwargs, img_size=32, patch_size=2, window_size=4, **_T)


@register_model
def swin_tiny_patch2_window7_28(**kwargs) -> SwinTransformer:
    """Swin-T on 28x28 images (MNIST, Fashion-MNIST): 2x2 patches, maps 14/7/4/2, 7x7 windows where they fit."""
    return _swin(kwargs, img_size=28, patch_size=2, window_size=7, **_T)


# ----------------------------------------------------------------------------------------------
# Weight import: timm's layout and the official Microsoft one.

# Buffers that older timm and the official code saved; ours are rebuilt for each window, never loaded.
_BUFFERS = ("relative_position_index", "attn_mask")
_SWIN_KEYS = ("patch_embed.", "layers.", "norm.", "head.")


def _is_swin(sd: Mapping[str, Tensor]) -> bool:
    required = {"patch_embed.proj.weight", "patch_embed.norm.weight", "layers.0.blocks.0.attn.qkv.weight"}
    return required <= sd.keys() and all(k.startswith(_SWIN_KEYS) for k in sd)


def _is_timm(sd: Mapping[str, Tensor]) -> bool:
    """Recognise timm's layout: patches merge at the start of stages 1..3, so stage 0 has no ``downsample``."""
    return _is_swin(sd) and "layers.0.downsample.reduction.weight" not in sd


def _is_microsoft(sd: Mapping[str, Tensor]) -> bool:
    """Recognise the official layout: patches merge at the end of stages 0..2 (``layers.0.downsample`` exists)."""
    return _is_swin(sd) and "layers.0.downsample.reduction.weight" in sd


def _fit_to_model(model: SwinTransformer, sd: StateDict) -> StateDict:
    """Fit the checkpoint's grid-shaped tensors to this model, for every layout (timm, Microsoft, ours).

    - Each ``relative_position_bias_table`` of another window is resized to its block's window
      (:func:`~research.layers.resize_rel_pos_bias_table`): cropped for a smaller window (what the
      larger-window model computes on a stage that shrinks its window), interpolated as timm does
      for a larger one. A checkpoint's window is read from the table as a square window (every
      published Swin has one); a table of a non-square window is refused.
    - ``patch_embed.proj.weight`` of another patch size is resized as timm's Swin
      ``checkpoint_filter_fn`` does (:func:`~research.layers.resample_patch_embed`, FlexiViT).

    The ``relative_position_index`` and ``attn_mask`` buffers are never loaded: they are functions
    of the window, rebuilt by each block for its own window.
    """
    own = model.state_dict()
    for key, table in sd.items():
        if not key.endswith("relative_position_bias_table") or key not in own or table.shape == own[key].shape:
            continue
        window = model.get_submodule(key.rsplit(".", 1)[0]).window_size
        try:
            sd[key] = resize_rel_pos_bias_table(table, window)
        except ValueError as err:
            raise ValueError(f"{key}: {err}") from None
    kernel = sd.get("patch_embed.proj.weight")
    if kernel is not None and kernel.dim() == 4:
        sd["patch_embed.proj.weight"] = resample_patch_embed(kernel, model.patch_embed.patch_size)
    return sd


def _from_timm(model: SwinTransformer, sd: StateDict) -> StateDict:
    out = {}
    for key, value in sd.items():
        if key.endswith(_BUFFERS):
            continue
        key = key.replace("patch_embed.norm.", "patch_norm.").replace("head.fc.", "head.")
        out[key] = value
    return out


def _from_microsoft(model: SwinTransformer, sd: StateDict) -> StateDict:
    # Stage i's closing merge is stage i+1's opening one here; the classifier is a bare ``head``.
    def move(key: str) -> str:
        return re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) + 1}.downsample", key)

    return _from_timm(model, {move(k): v for k, v in sd.items()})


register_layout(SwinTransformer, "timm", detect=_is_timm, convert=_from_timm)
register_layout(SwinTransformer, "microsoft", detect=_is_microsoft, convert=_from_microsoft)
register_resize(SwinTransformer, _fit_to_model)
