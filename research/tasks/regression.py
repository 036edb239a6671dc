"""Regression with the mean squared error: fit a model's outputs to real-valued targets.

The task owns the loss (MSE), the metrics (MSE and mean absolute error per epoch) and the
optimizer (Adam, Kingma & Ba 2015, with an optional cosine decay of the learning rate). The model
is a registered regressor (``{"name": "mlp", "hidden_sizes": [64, 64]}``) or any ``nn.Module``
mapping (B, in_features) inputs to (B, out_features) outputs.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

from research.models import build_model
from research.tasks.checks import check_checkpoint
from research.tasks.optim import run_length, warmup_cosine


class Regression(L.LightningModule):
    """Train a regressor on ``(x, y)`` batches with the MSE loss.

    Logged: ``train/loss`` per step; ``val/loss`` and ``test/loss`` (MSE over the whole split),
    ``val/mae`` and ``test/mae`` per epoch.

    Args:
        model: a registered model as ``{"name": "mlp", ...}`` (or just a name), or an ``nn.Module``.
        lr: Adam's learning rate (the peak, with the cosine schedule).
        weight_decay: Adam's L2 penalty (coupled, as in ``torch.optim.Adam``).
        betas: Adam's betas.
        schedule: "constant", or "cosine" (per step to ``lr * min_lr_ratio`` at the end of the run).
        min_lr_ratio: where the cosine schedule ends.

    """

    #: metric and mode that ModelCheckpoint uses to keep the best checkpoint.
    checkpoint_monitor = ("val/loss", "min")

    def __init__(
        self,
        model: dict | str | nn.Module,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        schedule: str = "constant",
        min_lr_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"] if isinstance(model, nn.Module) else None)
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"unknown schedule {schedule!r}; choose 'constant' or 'cosine'")
        if lr <= 0 or weight_decay < 0 or not 0 <= min_lr_ratio <= 1:
            raise ValueError(
                f"need lr > 0, weight_decay >= 0 and 0 <= min_lr_ratio <= 1, got {lr}, {weight_decay}, {min_lr_ratio}"
            )
        self.model = build_model(model)

        def metrics(prefix: str) -> MetricCollection:
            return MetricCollection({"loss": MeanSquaredError(), "mae": MeanAbsoluteError()}, prefix=prefix)

        self.val_metrics, self.test_metrics = metrics("val/"), metrics("test/")

    def forward(self, x: Tensor) -> Tensor:
        """Predictions.

        Args:
            x: (B, in_features) inputs.

        Returns:
            (B, out_features).

        """
        return self.model(x)

    def setup(self, stage: str) -> None:
        """A model whose widths do not match the data stops here, before any step runs."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        for name in ("in_features", "out_features"):
            ours, theirs = getattr(self.model, name, None), getattr(dm, name, None)
            if ours is not None and theirs is not None and ours != theirs:
                raise ValueError(
                    f"the model has {name}={ours} but {type(dm).__name__} has {theirs}; "
                    f"set {name}: {theirs} in the model's config"
                )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint of another model stops here with a readable message, before torch's strict load."""
        check_checkpoint(self, checkpoint)

    def _check_targets(self, prediction: Tensor, y: Tensor) -> None:
        if prediction.shape != y.shape:
            # MSE would broadcast (B, 1) against (B,) into a (B, B) matrix and train on nonsense
            raise ValueError(
                f"predictions have shape {tuple(prediction.shape)} but targets {tuple(y.shape)}; "
                "give targets as (B, out_features)"
            )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        prediction = self(x)
        self._check_targets(prediction, y)
        loss = F.mse_loss(prediction, y)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(y))
        return loss

    def _eval_step(self, batch: tuple[Tensor, Tensor], metrics: MetricCollection) -> None:
        x, y = batch
        prediction = self(x)
        self._check_targets(prediction, y)
        metrics.update(prediction, y)
        # the metric objects accumulate over the epoch: the logged value is the whole split's MSE
        self.log_dict(metrics, prog_bar=True, batch_size=len(y))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics)

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        """Predictions (B, out_features) for a batch of inputs (with or without targets)."""
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.Adam(
            self.model.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay
        )
        if hp.schedule == "constant":
            return optimizer
        total = run_length(self.trainer, "cosine")
        scheduler = warmup_cosine(optimizer, warmup_steps=0, total_steps=total, min_lr_ratio=hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
