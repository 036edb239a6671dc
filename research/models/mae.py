"""Masked autoencoder (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners", arXiv 2111.06377).

Reference we match: the official ``models_mae.py`` (facebookresearch/mae). A state_dict in its key
names (the timm ViT names for the encoder: ``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.*``, ``norm``; plus ``mask_token``, ``decoder_embed``, ``decoder_pos_embed``,
``decoder_blocks.*``, ``decoder_norm``, ``decoder_pred``) loads strict through
``research.models.import_weights`` (layout "mae"), and for the same noise our predictions are
theirs (``tests/models/test_mae.py`` checks both against a transcription of their forward).

The encoder is our :class:`~research.models.vit.VisionTransformer` (no head) run on the visible
patches only (Sec. 3, "MAE encoder"); its position embeddings are fixed 2D sin-cos, as in the
official code. ``import_weights(create_model("vit_base_patch16_224"), mae_checkpoint)`` loads the
encoder of an MAE checkpoint, ours or official, into a ViT classifier for fine-tuning or linear
probing (layout "mae" of ``VisionTransformer``, registered below).

Deviations from the official code:

- ``forward`` returns predictions and the mask; the loss (Sec. 3, "Reconstruction target") lives in
  ``research.tasks.MAEPretraining``, as ARCHITECTURE.md keeps losses out of models.
- ``in_chans`` is honoured everywhere (the official ``patchify`` hard-codes 3 channels) and the
  patch grid may be non-square.
- A keep count of zero, an image size the patch does not divide, or a mask ratio outside (0, 1)
  raise ``ValueError`` instead of asserting.
- ``mask_token_in_encoder=True`` is Table 1c's ablation "encoder w/ [M]" (not in the official code):
  the encoder sees all L patches, the masked ones replaced by the learned ``mask_token`` (of the
  encoder's width; BEiT's way), and the decoder gets the encoder's L + 1 outputs with no tokens
  added. The default is the paper's MAE, whose encoder skips the masked patches.
- The decoder's sin-cos table is a persistent buffer (official: a frozen ``nn.Parameter``; the
  state_dict key is the same).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from typing import NamedTuple

import torch
from einops import repeat
from torch import Tensor, nn

from research.layers import Block, init_linears_, patchify, sincos_grid, sincos_pos_embed_2d, unpatchify
from research.models.registry import register_model
from research.models.vit import VisionTransformer
from research.models.weights import StateDict, register_layout, register_resize


class MAEOutput(NamedTuple):
    """What :class:`MaskedAutoencoderViT` returns.

    Attributes:
        pred: predicted pixels of every patch, (B, L, P*P*C), in :func:`~research.layers.patchify`
            order; only the masked ones are trained.
        mask: (B, L) float, 1 = masked (predicted), 0 = visible (seen by the encoder).
    """

    pred: Tensor
    mask: Tensor


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches the encoder sees: ``int(L * (1 - mask_ratio))``, as the official code rounds (down).

    Raises:
        ValueError: ``mask_ratio`` outside (0, 1), or a ratio so high that no patch stays visible.
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie strictly between 0 and 1 (the paper uses 0.75), got {mask_ratio}")
    keep = int(num_patches * (1 - mask_ratio))
    if keep < 1:
        raise ValueError(
            f"mask_ratio={mask_ratio} leaves no visible patch out of {num_patches}; lower it below "
            f"{1 - 1 / num_patches:.3f} or use smaller patches"
        )
    return keep


def random_masking(x: Tensor, mask_ratio: float, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Keep a random subset of tokens per sample by sorting uniform noise (Sec. 3, "Masking").

    The ``int(L * (1 - mask_ratio))`` tokens with the smallest noise stay; the order they are kept
    in is the shuffled one, and ``ids_restore`` undoes the shuffle for the decoder.

    Args:
        x: tokens (B, L, D).
        mask_ratio: fraction of tokens to remove, in (0, 1).
        noise: (B, L) sort keys; uniform random when None. Pass it to mask reproducibly.

    Returns:
        x_visible: the kept tokens, (B, L_keep, D), in shuffled order.
        mask: (B, L) float in the original token order, 0 = kept, 1 = removed.
        ids_restore: (B, L) long; ``ids_restore[b, i]`` is the shuffled position of token i, so
            ``gather(shuffled, 1, ids_restore)`` puts the tokens back in their original order.

    Raises:
        ValueError: a mask ratio outside (0, 1), no token left visible, or noise of another shape.
    """
    b, length, dim = x.shape
    keep = num_visible(length, mask_ratio)
    if noise is None:
        noise = torch.rand(b, length, device=x.device)
    elif noise.shape != (b, length):
        raise ValueError(f"noise must have shape (B, L) = ({b}, {length}), got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    x_visible = torch.gather(x, 1, repeat(ids_keep, "b l -> b l d", d=dim))
    mask = torch.ones(b, length, device=x.device)  # float32 also under autocast: it is summed over the batch
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # back to the original token order
    return x_visible, mask, ids_restore


class MaskedAutoencoderViT(nn.Module):
    """MAE: a ViT encoder on the visible patches and a light transformer decoder that predicts pixels.

    Args:
        img_size: input size, an int for square images or (H, W); P must divide both.
        patch_size: P.
        in_chans: image channels C (1 for grey digits).
        embed_dim: encoder width D.
        depth: encoder blocks.
        num_heads: encoder attention heads.
        decoder_embed_dim: decoder width (the paper's default: 512).
        decoder_depth: decoder blocks (default 8).
        decoder_num_heads: decoder attention heads (default 16).
        mlp_ratio: MLP hidden width / width, encoder and decoder.
        mask_ratio: fraction of patches removed when ``forward`` is not told otherwise (Sec. 3: 0.75).
        mask_token_in_encoder: Table 1c's "encoder w/ [M]": the encoder runs on all patches, the masked
            ones replaced by ``mask_token`` (then of width ``embed_dim``), about 4x its FLOPs at ratio 0.75;
            False (the paper's MAE): the encoder skips them and the decoder fills them in.

    Attributes:
        encoder: the :class:`VisionTransformer` (``num_classes=0``) whose patch embedding, blocks
            and norm encode the visible patches.
        grid_size: (H / P, W / P); ``num_patches`` = L, their product.
    """

    def __init__(
        self,
        *,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        mask_token_in_encoder: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = VisionTransformer(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=0,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
        )
        self.patch_size, self.in_chans = patch_size, in_chans
        self.grid_size = self.encoder.patch_embed.grid_size
        self.num_patches = self.encoder.patch_embed.num_patches
        num_visible(self.num_patches, mask_ratio)  # a bad ratio stops here, not in the first step
        self.mask_ratio = mask_ratio

        # Sec. 3: "we add positional embeddings (the sine-cosine version) to both the encoder and
        # decoder inputs"; fixed, with a zero row for the class token as in the official code.
        self.encoder.pos_embed.requires_grad_(False)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token_in_encoder = mask_token_in_encoder
        # one, shared by all masked patches; in the encoder's width where the encoder takes it (Table 1c)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim if mask_token_in_encoder else decoder_embed_dim))
        self.register_buffer(
            "decoder_pos_embed", sincos_pos_embed_2d(self.grid_size, decoder_embed_dim, num_prefix_tokens=1)[None]
        )
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, norm_layer=norm_layer) for _ in range(decoder_depth)
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size * patch_size * in_chans)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise as the official ``initialize_weights`` does (which follows the JAX ViT)."""
        self.encoder.pos_embed.copy_(sincos_pos_embed_2d(self.grid_size, self.encoder.embed_dim, num_prefix_tokens=1))
        # The patch projection is initialised like a Linear layer on the flattened patch.
        proj = self.encoder.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        # timm's trunc_normal_(std=.02) is effectively normal_(std=.02): the cut at +-2 is 100 std away.
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        init_linears_(self, nn.init.xavier_uniform_)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def patchify(self, imgs: Tensor) -> Tensor:
        """Cut images into the model's flattened patches, the reconstruction targets.

        Args:
            imgs: (B, C, H, W).

        Returns:
            (B, L, P*P*C).
        """
        return patchify(imgs, self.patch_size)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """Reassemble images from flattened patches (e.g. predictions).

        Args:
            patches: (B, L, P*P*C).

        Returns:
            (B, C, H, W).
        """
        return unpatchify(patches, self.patch_size, *self.grid_size)

    def forward_encoder(
        self, imgs: Tensor, mask_ratio: float, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Embed all patches, drop the masked ones, and encode the rest with the class token.

        Args:
            imgs: (B, C, H, W).
            mask_ratio: fraction of patches to mask.
            noise: (B, L) masking noise, see :func:`random_masking`.

        Returns:
            latent: (B, 1 + L_keep, D), the class token first; (B, 1 + L, D) with ``mask_token_in_encoder``.
            mask: (B, L), 1 = masked.
            ids_restore: (B, L), see :func:`random_masking`.
        """
        enc = self.encoder
        x = enc.patch_embed(imgs)
        if self.mask_token_in_encoder:  # Table 1c, "encoder w/ [M]": every patch, the masked ones as [M]
            _, mask, ids_restore = random_masking(x, mask_ratio, noise)
            x = torch.lerp(x, self.mask_token.to(x.dtype), mask[..., None].to(x.dtype)) + enc.pos_embed[:, 1:]
        else:
            x = x + enc.pos_embed[:, 1:]  # positions are added before masking
            x, mask, ids_restore = random_masking(x, mask_ratio, noise)
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        return enc.norm(enc.blocks(x)), mask, ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Fill the masked positions with the mask token, unshuffle, and predict every patch's pixels.

        Args:
            latent: encoder output (B, 1 + L_keep, D), or (B, 1 + L, D) with ``mask_token_in_encoder``
                (already whole and in order: nothing to fill in).
            ids_restore: (B, L) from :func:`random_masking`.

        Returns:
            (B, L, P*P*C) predicted pixels.
        """
        x = self.decoder_embed(latent)
        if self.mask_token_in_encoder:
            return self.decode_tokens(x)
        b, num_tokens, dim = x.shape
        masked = self.mask_token.expand(b, ids_restore.shape[1] + 1 - num_tokens, -1)
        x_ = torch.cat([x[:, 1:], masked], dim=1)  # shuffled order: visible tokens, then mask tokens
        x_ = torch.gather(x_, 1, repeat(ids_restore, "b l -> b l d", d=dim))
        return self.decode_tokens(torch.cat([x[:, :1], x_], dim=1))

    def decode_tokens(self, x: Tensor) -> Tensor:
        """Run the decoder on a full, unshuffled token sequence (class token first).

        Args:
            x: (B, 1 + L, decoder_embed_dim).

        Returns:
            (B, L, P*P*C); the class token's output is dropped.
        """
        x = x + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward(self, imgs: Tensor, mask_ratio: float | None = None, noise: Tensor | None = None) -> MAEOutput:
        """Mask, encode the visible patches, and predict the pixels of all patches.

        Args:
            imgs: (B, C, H, W), normalised as the training data.
            mask_ratio: overrides the model's ``mask_ratio`` for this call.
            noise: (B, L) masking noise; equal noise gives equal masks.

        Returns:
            :class:`MAEOutput` with ``pred`` (B, L, P*P*C) and ``mask`` (B, L).
        """
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, noise)
        return MAEOutput(self.forward_decoder(latent, ids_restore), mask)


def _mae(kwargs: dict, **defaults) -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(**dict(defaults, **kwargs))


# The paper's models (Sec. 4 and App. A.1): ViT-B/L/H encoders with the default decoder, 8 blocks of
# width 512 and 16 heads (the official names add "_dec512d8b").
@register_model
def mae_vit_base_patch16(**kwargs) -> MaskedAutoencoderViT:
    """MAE ViT-B/16 at 224x224: encoder D=768, 12 blocks, 12 heads; decoder 512 wide, 8 blocks, 16 heads."""
    return _mae(kwargs, patch_size=16, embed_dim=768, depth=12, num_heads=12)


@register_model
def mae_vit_large_patch16(**kwargs) -> MaskedAutoencoderViT:
    """MAE ViT-L/16 at 224x224: encoder D=1024, 24 blocks, 16 heads; decoder 512 wide, 8 blocks, 16 heads."""
    return _mae(kwargs, patch_size=16, embed_dim=1024, depth=24, num_heads=16)


@register_model
def mae_vit_huge_patch14(**kwargs) -> MaskedAutoencoderViT:
    """MAE ViT-H/14 at 224x224: encoder D=1280, 32 blocks, 16 heads; decoder 512 wide, 8 blocks, 16 heads."""
    return _mae(kwargs, patch_size=14, embed_dim=1280, depth=32, num_heads=16)


# Small images (ours, not the paper's): ViT-Ti/4 and ViT-S/4 encoders, the ones vit.py registers for
# 32x32, with a decoder scaled down in proportion (4 blocks instead of 8); its width stays below the
# encoder's, the paper's "lightweight" ratio. Their encoders load into vit_{tiny,small}_patch4_32.
_SMALL_DECODER = dict(decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4)


@register_model
def mae_vit_tiny_patch4_28(**kwargs) -> MaskedAutoencoderViT:
    """MAE ViT-Ti/4 on 28x28 images (MNIST, Fashion-MNIST): 7x7 patches; decoder 128 wide, 4 blocks, 4 heads."""
    return _mae(kwargs, img_size=28, patch_size=4, embed_dim=192, depth=12, num_heads=3, **_SMALL_DECODER)


@register_model
def mae_vit_tiny_patch4_32(**kwargs) -> MaskedAutoencoderViT:
    """MAE ViT-Ti/4 on 32x32 images (CIFAR): 8x8 patches; decoder 128 wide, 4 blocks, 4 heads."""
    return _mae(kwargs, img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3, **_SMALL_DECODER)


@register_model
def mae_vit_small_patch4_32(**kwargs) -> MaskedAutoencoderViT:
    """MAE ViT-S/4 on 32x32 images (CIFAR): 8x8 patches; decoder 256 wide, 4 blocks, 8 heads."""
    return _mae(
        kwargs,
        img_size=32,
        patch_size=4,
        embed_dim=384,
        depth=12,
        num_heads=6,
        decoder_embed_dim=256,
        decoder_depth=4,
        decoder_num_heads=8,
    )


# ---- weight layouts ------------------------------------------------------------------------------

_DECODER_KEYS = (
    "mask_token",
    "decoder_embed.",
    "decoder_pos_embed",
    "decoder_blocks.",
    "decoder_norm.",
    "decoder_pred.",
)
_ENCODER_KEYS = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")


def _is_official_mae(sd: Mapping[str, Tensor]) -> bool:
    """The official layout: timm-style encoder keys at the top level next to the decoder's."""
    required = {"mask_token", "decoder_pred.weight", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"}
    return required <= sd.keys() and all(k.startswith(_ENCODER_KEYS + _DECODER_KEYS) for k in sd)


def _is_our_mae(sd: Mapping[str, Tensor]) -> bool:
    required = {"mask_token", "decoder_pred.weight", "encoder.patch_embed.proj.weight"}
    return required <= sd.keys() and all(k.startswith(("encoder.", *_DECODER_KEYS)) for k in sd)


def _official_to_ours(model: nn.Module, sd: StateDict) -> StateDict:
    return {(k if k.startswith(_DECODER_KEYS) else f"encoder.{k}"): v for k, v in sd.items()}


register_layout(MaskedAutoencoderViT, "mae", detect=_is_official_mae, convert=_official_to_ours)


def _fixed_tables_for_model(model: MaskedAutoencoderViT, sd: StateDict) -> StateDict:
    """Give the model its own sin-cos tables when the checkpoint's are for another patch grid.

    Both position tables are fixed 2D sin-cos functions of the patch grid (Sec. 3, not learned),
    so for another grid the right table is the model's own, not a resample. The checkpoint's grid
    is read from its table's values (:func:`~research.layers.sincos_grid`), so a table of another
    grid with the same number of patches (8x8 vs 4x16) is caught too; a table of the model's shape
    that is not a sin-cos table loads as it is. Other shapes (width, patch size: ``decoder_pred``
    predicts P*P*C pixels) are left for the fit check to refuse.
    """
    own = model.state_dict()
    for key in ("encoder.pos_embed", "decoder_pos_embed"):
        if key not in sd or sd[key].shape[-1] != own[key].shape[-1]:
            continue
        grid = sincos_grid(sd[key], num_prefix_tokens=1)
        if sd[key].shape != own[key].shape or (grid is not None and grid != tuple(model.grid_size)):
            sd[key] = own[key].detach().clone()
    return sd


register_resize(MaskedAutoencoderViT, _fixed_tables_for_model)


def _mae_encoder_for_vit(model: nn.Module, sd: StateDict) -> StateDict:
    """The encoder of an MAE checkpoint as a ViT classifier's weights (MAE's fine-tuning, App. A.2/A.3).

    The decoder is dropped; the classifier keeps its own freshly initialised ``head`` (and
    ``fc_norm`` with average pooling, where MAE's fine-tuning also drops the encoder's ``norm``).
    ``pos_embed`` becomes a learned table, resampled (by ViT's resize, after this) if the
    classifier has another patch grid; the grid of the MAE's sin-cos table is read from its values,
    so a non-square pre-training grid is resampled right too.
    """
    sd = {re.sub(r"^encoder\.", "", k): v for k, v in sd.items() if not k.startswith(_DECODER_KEYS)}
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if k in own or not k.startswith("norm.")}  # avg pool: no norm
    for key in own:
        if key.startswith(("head.", "fc_norm.")):
            sd[key] = own[key]
    return sd  # VisionTransformer's resize then fits pos_embed and the patch kernel to its grid


register_layout(
    VisionTransformer, "mae", detect=lambda sd: _is_official_mae(sd) or _is_our_mae(sd), convert=_mae_encoder_for_vit
)
