"""Pictures of what a masked autoencoder reconstructs, as in Figures 2-4 of He et al. 2022."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from einops import rearrange
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torchvision.utils import save_image

from research.callbacks._pictures import log_picture

#: grey level of the masked patches in the "masked" column (black would vanish on MNIST's background)
MASK_FILL = 0.5


class MAEReconstructions(Callback):
    """Save a grid of reconstructions every ``every_n_epochs`` epochs, as a PNG and to wandb.

    One row per image, four columns: original | masked (the patches the encoder sees, the others
    grey) | reconstruction (the decoder's output for every patch) | reconstruction with the visible
    patches pasted back (the paper's figures). The images are the first ``num_images`` of the
    first validation batch and their masks are drawn from a fixed seed, so pictures of different
    epochs show the same images under the same masks. Drawn after the validation loop of the
    epochs due (sanity checks excluded), on global rank 0.

    The task must have ``reconstruct(images, noise)`` returning predictions and mask in [0, 1]
    pixel units and a ``model`` with ``num_patches``, as :class:`research.tasks.MAEPretraining`.

    Args:
        every_n_epochs: draw after epochs n, 2n, 3n, ... (counted from 1).
        num_images: rows of the grid (fewer if the validation batch is smaller).
        dirpath: folder for the PNGs; by default the run's checkpoint folder
            (``checkpoints/<experiment>/``), else ``trainer.log_dir``, else the Trainer's root dir.
        seed: seed of the masking noise.

    Attributes:
        last_path: the PNG written last, or None.
    """

    def __init__(
        self, *, every_n_epochs: int = 1, num_images: int = 8, dirpath: str | Path | None = None, seed: int = 0
    ) -> None:
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError(f"every_n_epochs and num_images must be >= 1, got {every_n_epochs} and {num_images}")
        self.every_n_epochs, self.num_images, self.seed = every_n_epochs, num_images, seed
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.last_path: Path | None = None
        self._images: Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "reconstruct", None)):
            raise ValueError(
                f"MAEReconstructions draws a masked autoencoder's reconstructions, but {type(pl_module).__name__} "
                "has no reconstruct(images, noise) method; use it with research.tasks.MAEPretraining"
            )

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._images is None and batch_idx == 0 and dataloader_idx == 0:
            images = batch[0] if isinstance(batch, list | tuple) else batch
            self._images = images[: self.num_images].detach().cpu()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        due = (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if trainer.sanity_checking or not due or self._images is None or not trainer.is_global_zero:
            return
        grid = self.grid(pl_module, self._images.to(pl_module.device))
        folder = self._folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        self.last_path = folder / f"reconstructions_epoch{trainer.current_epoch:03d}.png"
        save_image(grid, self.last_path, nrow=4, padding=1, pad_value=1.0)
        caption = "original | masked | reconstruction | reconstruction + visible"
        log_picture(trainer, self.last_path, key="val/reconstructions", caption=caption)

    def grid(self, pl_module: L.LightningModule, images: Tensor) -> Tensor:
        """The four pictures of each image, row after row.

        Args:
            pl_module: the task (see the class docstring).
            images: (N, C, H, W) in [0, 1].

        Returns:
            (4N, C, H, W) in [0, 1]: for each image original, masked, reconstruction, pasted.
        """
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.rand(len(images), pl_module.model.num_patches, generator=generator).to(images.device)
        pred, mask = pl_module.reconstruct(images, noise)
        masked = images * (1 - mask) + MASK_FILL * mask
        pasted = images * (1 - mask) + pred * mask
        return rearrange([images, masked, pred, pasted], "four n c h w -> (n four) c h w").cpu()

    def _folder(self, trainer: L.Trainer) -> Path:
        if self.dirpath is not None:
            return self.dirpath
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and getattr(checkpoint, "dirpath", None):
            return Path(checkpoint.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir)
