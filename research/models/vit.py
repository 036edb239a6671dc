"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", arXiv 2010.11929).

Reference we match: timm's ``VisionTransformer`` (``timm/models/vision_transformer.py``) in its
default configuration. Submodule and parameter names are timm's, so a timm state_dict loads
strict through ``research.models.import_weights`` (layout "timm", which also reads our own
checkpoints), and the logits agree to float precision; ``tests/models/test_vit.py`` checks both.
Any import (timm, MAE, ours) resamples ``pos_embed`` to the model's patch grid by grid, not by
token count, and a patch kernel to its patch size, as timm's ``checkpoint_filter_fn`` does.

Deviations from timm:

- Only the paper's model: no register tokens, layer scale, qk-norm, attention pooling, dynamic
  image size or JAX/MoCo init modes.
- ``drop_rate`` is the paper's dropout (App. B.1: after adding position embeddings and after every
  dense layer except the qkv projection). timm splits it into ``pos_drop_rate``/``proj_drop_rate``
  and uses its ``drop_rate`` for dropout before the head, which the paper does not have.
- The classifier is one linear layer, as in the paper's fine-tuning (its pre-training head has an
  extra hidden layer).
- Bad input raises ``ValueError`` saying what the model was built for, not ``AssertionError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import torch
from torch import Tensor, nn

from research.layers import Block, PatchEmbed, fit_pos_embed, init_linears_, resample_patch_embed
from research.models.registry import register_model
from research.models.weights import StateDict, register_layout, register_resize


class VisionTransformer(nn.Module):
    """ViT: patch embedding + learned position embedding, pre-norm transformer blocks, linear head.

    Args:
        img_size: input size, an int for square images or (H, W).
        patch_size: P; must divide the image size.
        in_chans: input channels.
        num_classes: classes of the linear head; 0 for no head (``forward`` returns pooled features).
        embed_dim: token width D.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        qkv_bias: learn a bias in the qkv projections.
        global_pool: ``"token"`` classifies the class token (paper), ``"avg"`` the mean patch token
            (then, as in timm, the final norm is applied after pooling as ``fc_norm``).
        class_token: prepend a learned class token.
        drop_rate: dropout after the position embedding and after each dense layer but qkv.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth of the last block; it rises linearly from 0 at the first.

    """

    def __init__(
        self,
        *,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        global_pool: str = "token",
        class_token: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError(
                "global_pool='token' needs the class token; pass class_token=True or global_pool='avg'"
            )
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = self.num_features = embed_dim  # num_features: width of forward_head(pre_logits=True), as timm
        self.num_prefix_tokens = int(class_token)

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim)) if class_token else None
        # One learned position per patch plus one for the class token (paper Eq. 1).
        num_tokens = self.num_prefix_tokens + self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.empty(1, num_tokens, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)  # eps of the JAX original, kept by timm
        drop_path_rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.Sequential(
            *(
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=rate,
                    norm_layer=norm_layer,
                )
                for rate in drop_path_rates
            )
        )
        self.norm = norm_layer(embed_dim) if global_pool == "token" else nn.Identity()
        self.fc_norm = norm_layer(embed_dim) if global_pool == "avg" else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Initialise as timm does; the patch-embedding conv keeps PyTorch's default init."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        init_linears_(self, partial(nn.init.trunc_normal_, std=0.02))

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layers for layer-wise lr decay, in timm's format: embeddings, each block, then the final norm."""
        blocks = [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]
        return {"stem": r"^cls_token|pos_embed|patch_embed", "blocks": blocks}

    def forward_features(self, x: Tensor) -> Tensor:
        """Embed the patches and run the transformer.

        Args:
            x: images (B, in_chans, H, W) of the size the model was built for.

        Returns:
            Tokens (B, num_prefix_tokens + N, D), the class token first; normalised unless
            ``global_pool="avg"`` (whose norm comes after pooling).

        """
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        return self.norm(self.blocks(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool the tokens and classify.

        Args:
            x: tokens from :meth:`forward_features`, (B, num_prefix_tokens + N, D).
            pre_logits: return the pooled, normalised features instead of logits.

        Returns:
            Logits (B, num_classes), or features (B, D) if ``pre_logits`` or ``num_classes=0``.

        """
        x = x[:, self.num_prefix_tokens :].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """Classify images.

        Args:
            x: (B, in_chans, H, W).

        Returns:
            Logits (B, num_classes), or pooled features (B, D) when ``num_classes=0``.

        """
        return self.forward_head(self.forward_features(x))


def _vit(kwargs: dict, **defaults) -> VisionTransformer:
    """Build a ViT from a factory's pinned ``defaults``, which the caller's ``kwargs`` override."""
    return VisionTransformer(**dict(defaults, **kwargs))


# Widths/depths/heads: B, L, H from the ViT paper (Table 1); Ti and S from DeiT (Touvron et al.
# 2021, arXiv 2012.12877), as timm names them.
@register_model
def vit_tiny_patch16_224(**kwargs) -> VisionTransformer:
    """ViT-Ti/16 at 224x224: D=192, 12 blocks, 3 heads."""
    return _vit(kwargs, img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3)


@register_model
def vit_small_patch16_224(**kwargs) -> VisionTransformer:
    """ViT-S/16 at 224x224: D=384, 12 blocks, 6 heads."""
    return _vit(kwargs, img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6)


@register_model
def vit_small_patch32_224(**kwargs) -> VisionTransformer:
    """ViT-S/32 at 224x224: D=384, 12 blocks, 6 heads."""
    return _vit(kwargs, img_size=224, patch_size=32, embed_dim=384, depth=12, num_heads=6)


@register_model
def vit_base_patch16_224(**kwargs) -> VisionTransformer:
    """ViT-B/16 at 224x224: D=768, 12 blocks, 12 heads (86.6M parameters)."""
    return _vit(kwargs, img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)


@register_model
def vit_base_patch32_224(**kwargs) -> VisionTransformer:
    """ViT-B/32 at 224x224: D=768, 12 blocks, 12 heads."""
    return _vit(kwargs, img_size=224, patch_size=32, embed_dim=768, depth=12, num_heads=12)


@register_model
def vit_large_patch16_224(**kwargs) -> VisionTransformer:
    """ViT-L/16 at 224x224: D=1024, 24 blocks, 16 heads."""
    return _vit(kwargs, img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16)


@register_model
def vit_large_patch32_224(**kwargs) -> VisionTransformer:
    """ViT-L/32 at 224x224: D=1024, 24 blocks, 16 heads."""
    return _vit(kwargs, img_size=224, patch_size=32, embed_dim=1024, depth=24, num_heads=16)


@register_model
def vit_huge_patch14_224(**kwargs) -> VisionTransformer:
    """ViT-H/14 at 224x224: D=1280, 32 blocks, 16 heads."""
    return _vit(kwargs, img_size=224, patch_size=14, embed_dim=1280, depth=32, num_heads=16)


@register_model
def vit_tiny_patch4_32(**kwargs) -> VisionTransformer:
    """ViT-Ti/4 on 32x32 images (CIFAR, resized MNIST): 64 patches, D=192, 12 blocks, 3 heads."""
    return _vit(kwargs, img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3)


@register_model
def vit_small_patch4_32(**kwargs) -> VisionTransformer:
    """ViT-S/4 on 32x32 images (CIFAR, resized MNIST): 64 patches, D=384, 12 blocks, 6 heads."""
    return _vit(kwargs, img_size=32, patch_size=4, embed_dim=384, depth=12, num_heads=6)


_VIT_KEYS = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.", "fc_norm.", "head.")


def _is_vit_state_dict(sd: Mapping[str, Tensor]) -> bool:
    """Recognise timm's ViT layout (ours is the same); MAE/ResNet/Swin checkpoints have other keys."""
    required = {"pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"}
    return required <= sd.keys() and all(k.startswith(_VIT_KEYS) for k in sd)


def _fit_to_model(model: VisionTransformer, sd: StateDict, *, source_grid: tuple[int, int] | None = None) -> StateDict:
    """Fit the checkpoint's grid-shaped tensors to this model, for every layout (timm, MAE, ours).

    - ``patch_embed.proj.weight`` of another patch size is resized as timm's ViT
      ``checkpoint_filter_fn`` does (:func:`~research.layers.resample_patch_embed`, FlexiViT).
    - ``pos_embed`` is resampled to the model's patch grid by the checkpoint's grid, not its row
      count (:func:`~research.layers.fit_pos_embed`, ViT Sec. 3.2); class-token rows are kept.
    """
    kernel = sd.get("patch_embed.proj.weight")
    if kernel is not None and kernel.dim() == 4:
        sd["patch_embed.proj.weight"] = resample_patch_embed(kernel, model.patch_embed.patch_size)
    if "pos_embed" in sd:
        sd["pos_embed"] = fit_pos_embed(
            sd["pos_embed"],
            model.patch_embed.grid_size,
            num_prefix_tokens=int("cls_token" in sd),
            source_grid=source_grid,
        )
    return sd


register_layout(VisionTransformer, "timm", detect=_is_vit_state_dict, convert=lambda model, sd: sd)
register_resize(VisionTransformer, _fit_to_model, takes_source_grid=True)
