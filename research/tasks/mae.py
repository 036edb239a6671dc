"""Masked-autoencoder pre-training (He et al. 2022, arXiv 2111.06377) with the paper's recipe.

The task owns what the model leaves out: normalisation of the [0, 1] images (its first step), the
loss on the masked patches (Sec. 3, "Reconstruction target"), and the optimizer of App. A.1
(AdamW with betas (0.9, 0.95), weight decay 0.05, lr = 1.5e-4 x effective batch / 256, linear
warm-up then cosine decay). The model is any masked autoencoder that
returns ``(pred, mask)`` and has ``patchify``/``unpatchify``, e.g. ``mae_vit_base_patch16``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from research.models.mae import num_visible
from research.models.protocols import MaskedAutoencoder
from research.tasks.base import ImageTask
from research.tasks.optim import OptimizerSettings


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Normalise each patch by its own pixels' mean and variance (the paper's ``norm_pix_loss``, Table 2d).

    Args:
        patches: (B, L, P*P*C).
        eps: added to the variance; the official value, so constant patches map to 0.

    Returns:
        (B, L, P*P*C).
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)  # unbiased, as the official code (torch's default)
    return (patches - mean) / (var + eps).sqrt()


def masked_patch_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error in pixel space on the masked patches only (Sec. 3, "Reconstruction target").

    Each masked patch's MSE over its pixels, averaged over all masked patches of the batch.

    Args:
        pred: (B, L, P*P*C) predicted pixels.
        target: (B, L, P*P*C) true (possibly per-patch normalised) pixels.
        mask: (B, L), 1 = masked (counted), 0 = visible (ignored).

    Returns:
        Scalar loss.
    """
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # float32 under bf16 autocast too
    return (per_patch * mask).sum() / mask.sum()


class Reconstruction(NamedTuple):
    """Images rebuilt by :meth:`MAEPretraining.reconstruct`, in [0, 1] pixel units.

    Attributes:
        pred: (B, C, H, W) the decoder's prediction of every patch.
        mask: (B, 1, H, W), 1 on masked pixels, 0 on visible ones.
    """

    pred: Tensor
    mask: Tensor


class MAEPretraining(ImageTask):
    """Self-supervised pre-training of a masked autoencoder; labels in the batches are ignored.

    Args:
        model: a registered masked autoencoder as ``{"name": "mae_vit_tiny_patch4_28", "in_chans": 1}``
            (or just a name), or an ``nn.Module`` that maps (B, C, H, W) images to ``(pred, mask)``
            and has ``patchify``/``unpatchify``.
        mask_ratio: fraction of patches masked in training and evaluation; the model's when None.
        norm_pix_loss: predict per-patch normalised pixels (Table 2d; the paper's best setting).
        mean: per-channel mean for normalisation; taken from the datamodule when omitted.
        std: per-channel std for normalisation; taken from the datamodule when omitted.
        optim: the optimizer and schedule (:class:`~research.tasks.optim.OptimizerSettings`); by
            default App. A.1's: AdamW with betas (0.9, 0.95) (following Chen et al. 2020, iGPT) and
            weight decay 0.05, lr 1.5e-4 per 256 images of effective batch (``reference_batch``
            256; ``reference_batch: null`` takes ``lr`` as it is), 40 warm-up epochs (of 800/1600)
            and cosine decay to 0.
        compile: compile the model with ``torch.compile`` (True, or its arguments such as ``{mode: ...}``;
            :class:`~research.tasks.base.Task`).
    """

    model_contract = (MaskedAutoencoder, "a masked autoencoder (e.g. mae_vit_base_patch16; a classifier is trained "
                      "with ImageClassification)")
    default_optim = OptimizerSettings(name="adamw", lr=1.5e-4, reference_batch=256, weight_decay=0.05,
                                      betas=(0.9, 0.95), schedule="cosine", warmup_epochs=40.0)

    def __init__(
        self,
        model: dict | str | nn.Module,
        *,
        mask_ratio: float | None = None,
        norm_pix_loss: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        optim: OptimizerSettings = default_optim,
        compile: bool | dict = False,
    ) -> None:
        super().__init__(optim, compile=compile)
        self.init_model(model)
        if mask_ratio is not None:
            num_visible(self.model.num_patches, mask_ratio)  # a bad ratio stops before training
        self.init_normalization(mean, std)

    def forward(self, x: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Predict the masked patches of images in [0, 1].

        Args:
            x: (B, C, H, W) images in [0, 1].
            noise: (B, L) masking noise; random when None.

        Returns:
            pred: (B, L, P*P*C) predicted patches.
            target: (B, L, P*P*C) the patches to predict (per-patch normalised with ``norm_pix_loss``).
            mask: (B, L), 1 = masked.
        """
        x = self.normalize(x)
        pred, mask = self.model(x, self.hparams.mask_ratio, noise)
        target = self.model.patchify(x)
        if self.hparams.norm_pix_loss:
            target = normalize_patches(target)
        return pred, target, mask

    @torch.no_grad()
    def reconstruct(self, x: Tensor, noise: Tensor | None = None) -> Reconstruction:
        """Reconstruct images for display: predictions and mask back in [0, 1] pixel units.

        With ``norm_pix_loss`` the predictions are per-patch normalised; they are given each true
        patch's mean and std back (as the official demo does), which shows structure, not colour.

        Args:
            x: (B, C, H, W) images in [0, 1].
            noise: (B, L) masking noise; random when None.

        Returns:
            :class:`Reconstruction` with ``pred`` (B, C, H, W) and ``mask`` (B, 1, H, W).
        """
        pred, _, mask = self(x, noise)
        if self.hparams.norm_pix_loss:
            patches = self.model.patchify(self.normalize(x))
            pred = pred * (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt() + patches.mean(dim=-1, keepdim=True)
        pred = self.denormalize(self.model.unpatchify(pred))
        p = self.model.patch_size
        mask = self.model.unpatchify(mask[..., None].expand(-1, -1, p * p))  # (B, 1, H, W)
        return Reconstruction(pred.clamp(0, 1), mask)

    def dry_run(self, image: Tensor) -> None:
        self.model(self.normalize(image), self.hparams.mask_ratio)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x = batch[0]
        loss = masked_patch_mse(*self(x))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(x))
        return loss

    def _eval_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, stage: str) -> None:
        x = batch[0]
        # The same masks every epoch, so that evaluation losses of different epochs compare.
        generator = torch.Generator().manual_seed(batch_idx)
        noise = torch.rand(len(x), self.model.num_patches, generator=generator).to(x.device)
        loss = masked_patch_mse(*self(x, noise))
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=len(x), sync_dist=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")
