"""A grid of generated images from fixed noise, every epoch: how the generator's samples evolve."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torchvision.utils import save_image

from research.callbacks._pictures import log_picture, run_folder


class GANSamples(Callback):
    """Save a grid of samples for the same noise at the end of every ``every_n_epochs`` training epochs.

    The noise is drawn once from ``seed``, so successive grids show the same latent points
    (Radford et al. 2016 do the same in their figures) and differences come from training alone.
    The grid goes to ``<run folder>/gan_samples/epoch=NNN.png`` and, with a WandbLogger, to
    wandb under ``train/samples``. Drawn on global rank 0, the generator in eval mode.

    The task needs ``latent_dim`` and ``sample(z)`` returning images in [0, 1], as
    :class:`research.tasks.GAN`.

    Args:
        num_images: images in the grid.
        nrow: images per row.
        every_n_epochs: draw after epochs n, 2n, 3n, ... (counted from 1).
        dirpath: folder for the ``gan_samples/`` PNGs; by default the first logger's folder
            (e.g. ``logs/csv/<experiment>/version_N``), else the Trainer's root dir.
        seed: seed of the fixed noise.

    Attributes:
        last_path: the PNG written last, or None.
    """

    def __init__(
        self,
        *,
        num_images: int = 64,
        nrow: int = 8,
        every_n_epochs: int = 1,
        dirpath: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        if num_images < 1 or nrow < 1 or every_n_epochs < 1:
            raise ValueError(
                f"num_images, nrow and every_n_epochs must be >= 1, got {num_images}, {nrow} and {every_n_epochs}"
            )
        self.num_images, self.nrow, self.every_n_epochs, self.seed = num_images, nrow, every_n_epochs, seed
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.last_path: Path | None = None
        self._noise: torch.Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        latent_dim = getattr(pl_module, "latent_dim", None)
        if not callable(getattr(pl_module, "sample", None)) or not isinstance(latent_dim, int):
            raise ValueError(
                f"GANSamples draws a generator's samples, but {type(pl_module).__name__} has no sample(z) method "
                "and int latent_dim; use it with research.tasks.GAN"
            )
        generator = torch.Generator().manual_seed(self.seed)
        self._noise = torch.randn(self.num_images, latent_dim, generator=generator)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs or not trainer.is_global_zero:
            return
        images = pl_module.sample(self._noise.to(pl_module.device)).cpu()
        path = run_folder(trainer, self.dirpath) / "gan_samples" / f"epoch={trainer.current_epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(images, path, nrow=self.nrow, padding=2, pad_value=1.0)
        self.last_path = path
        log_picture(trainer, path, key="train/samples")
