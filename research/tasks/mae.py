"""Masked-autoencoder pre-training (He et al. 2022, arXiv 2111.06377) with the paper's recipe.

The task owns what the model leaves out: normalisation of the [0, 1] images (its first step), the
loss on the masked patches (Sec. 3, "Reconstruction target"), and the optimizer of App. A.1
(AdamW with betas (0.9, 0.95), weight decay 0.05, lr = base_lr x effective batch / 256 with
base_lr 1.5e-4, linear warm-up then cosine decay). The model is any masked autoencoder that
returns ``(pred, mask)`` and has ``patchify``/``unpatchify``, e.g. ``mae_vit_base_patch16``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import lightning as L
import torch
from torch import Tensor, nn

from research.models import build_model
from research.models.mae import num_visible
from research.tasks.checks import check_checkpoint
from research.tasks.optim import build_optimizer, warmup_cosine_per_epoch

log = logging.getLogger(__name__)


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


class MAEPretraining(L.LightningModule):
    """Self-supervised pre-training of a masked autoencoder; labels in the batches are ignored.

    Args:
        model: a registered masked autoencoder as ``{"name": "mae_vit_tiny_patch4_28", "in_chans": 1}``
            (or just a name), or an ``nn.Module`` that maps (B, C, H, W) images to ``(pred, mask)``
            and has ``patchify``/``unpatchify``.
        mask_ratio: fraction of patches masked in training and evaluation; the model's when None.
        norm_pix_loss: predict per-patch normalised pixels (Table 2d; the paper's best setting).
        mean: per-channel mean for normalisation; taken from the datamodule when omitted.
        std: per-channel std for normalisation; taken from the datamodule when omitted.
        base_lr: learning rate per 256 images of effective batch (App. A.1: 1.5e-4).
        lr: absolute learning rate; when given, ``base_lr`` and the batch scaling are ignored.
        weight_decay: AdamW weight decay (0.05); biases, norms and tokens get none.
        betas: AdamW betas (0.9, 0.95), App. A.1 following Chen et al. 2020 (iGPT).
        warmup_epochs: linear warm-up length in epochs (the paper: 40 of 800/1600).
        min_lr_ratio: the cosine schedule ends at ``lr * min_lr_ratio`` (official: 0).
    """

    #: metric and mode that ModelCheckpoint uses to keep the best checkpoint.
    checkpoint_monitor = ("val/loss", "min")

    def __init__(
        self,
        model: dict | str | nn.Module,
        *,
        mask_ratio: float | None = None,
        norm_pix_loss: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        base_lr: float = 1.5e-4,
        lr: float | None = None,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 40.0,
        min_lr_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"] if isinstance(model, nn.Module) else None)
        self.model = build_model(model)
        if not all(hasattr(self.model, a) for a in ("patchify", "unpatchify", "num_patches")):
            raise ValueError(
                f"MAEPretraining needs a masked autoencoder (e.g. mae_vit_base_patch16), "
                f"got {type(self.model).__name__}; a classifier is trained with ImageClassification"
            )
        if mask_ratio is not None:
            num_visible(self.model.num_patches, mask_ratio)  # a bad ratio stops before training
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither (then the datamodule's are used)")
        self._set_normalization(mean, std)
        self.lr: float | None = None  # the learning rate in use, set by configure_optimizers

    def _set_normalization(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        empty = torch.zeros(0)
        for name, value in (("mean", mean), ("std", std)):
            stats = torch.tensor(value, dtype=torch.float32).view(-1, 1, 1) if value else empty
            self.register_buffer(name, stats, persistent=False)

    def normalize(self, x: Tensor) -> Tensor:
        """Map [0, 1] images to the model's input scale: (x - mean) / std, per channel."""
        return (x - self.mean) / self.std if self.mean.numel() else x

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
        pred = self.model.unpatchify(pred)
        if self.mean.numel():
            pred = pred * self.std + self.mean
        p = self.model.patch_size
        mask = self.model.unpatchify(mask[..., None].expand(-1, -1, p * p))  # (B, 1, H, W)
        return Reconstruction(pred.clamp(0, 1), mask)

    def setup(self, stage: str) -> None:
        """Adopt the datamodule's mean/std and check the model takes its images, before any step runs."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        if not self.mean.numel() and getattr(dm, "mean", None) is not None:
            self.hparams["mean"], self.hparams["std"] = tuple(dm.mean), tuple(dm.std)  # saved in checkpoints
            self._set_normalization(dm.mean, dm.std)
        in_chans, img_size = getattr(dm, "in_chans", None), getattr(dm, "img_size", None)
        if in_chans is not None and img_size is not None:
            self._check_input(in_chans, img_size)

    @torch.no_grad()
    def _check_input(self, in_chans: int, img_size: int | tuple[int, int]) -> None:
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        if self.mean.numel() and self.mean.numel() != in_chans:
            raise ValueError(f"mean/std have {self.mean.numel()} channels but the images have {in_chans}")
        try:
            self.model(torch.zeros(1, in_chans, h, w, device=self.device), self.hparams.mask_ratio)
        except (ValueError, RuntimeError) as err:
            raise ValueError(
                f"the model cannot take this data's images (shape (B, {in_chans}, {h}, {w})): {err}\n"
                "Build the model for these images (in_chans/img_size in its config) or convert the images "
                "(data in_chans/img_size)."
            ) from err

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint of another model stops here with a readable message, before torch's strict load."""
        check_checkpoint(self, checkpoint)

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

    def effective_batch_size(self) -> int:
        """Images per optimizer step: batch x devices x gradient accumulation (App. A.1's "batch size")."""
        if self.trainer.train_dataloader is None:  # configure_optimizers runs before the loop loads it
            self.trainer.fit_loop.setup_data()
        loader = self.trainer.train_dataloader
        # a loader built on a batch sampler (research.data.loaders: seeded batches) has batch_size None
        batch_size = getattr(loader, "batch_size", None) or getattr(getattr(loader, "batch_sampler", None),
                                                                     "batch_size", None)
        if batch_size is None:
            raise ValueError(
                "cannot tell the training batch size (the train loader has no batch_size); "
                "set the learning rate directly with lr"
            )
        return batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def configure_optimizers(self):
        hp = self.hparams
        if hp.lr is not None:
            self.lr = hp.lr
        else:
            batch = self.effective_batch_size()
            self.lr = hp.base_lr * batch / 256  # linear scaling rule (Goyal et al. 2017), App. A.1
            log.info("MAE learning rate %.3g = base_lr %.3g x %d / 256", self.lr, hp.base_lr, batch)
        optimizer = build_optimizer(
            self.model, "adamw", lr=self.lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas)
        )
        scheduler = warmup_cosine_per_epoch(
            self.trainer, optimizer, warmup_epochs=hp.warmup_epochs, min_lr_ratio=hp.min_lr_ratio
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
