"""Regression with the mean squared error: fit a model's outputs to real-valued targets.

The task owns the loss (MSE), the metrics (MSE and mean absolute error per epoch) and the
optimizer (Adam, Kingma & Ba 2015, by default with a constant learning rate). The model
is a registered regressor (``{"name": "mlp_regressor", "hidden_sizes": [64, 64]}``) or any ``nn.Module``
mapping (B, in_features) inputs to (B, out_features) outputs.
"""

from __future__ import annotations

import lightning as L
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

from research.tasks.base import Task
from research.tasks.optim import OptimizerSettings


class Regression(Task):
    """Train a regressor on ``(x, y)`` batches with the MSE loss.

    Logged: ``train/loss`` per step; ``val/loss`` and ``test/loss`` (MSE over the whole split),
    ``val/mae`` and ``test/mae`` per epoch.

    Args:
        model: a registered model as ``{"name": "mlp_regressor", ...}`` (or just a name), or an ``nn.Module``.
        optim: the optimizer and schedule (:class:`~research.tasks.optim.OptimizerSettings`); by
            default Adam (AdamW without weight decay), lr 1e-3, constant.
        compile: compile the model with ``torch.compile`` (True, or its arguments such as ``{mode: ...}``;
            :class:`~research.tasks.base.Task`).

    """

    default_optim = OptimizerSettings(name="adamw", lr=1e-3, weight_decay=0.0, schedule="constant")

    def __init__(self, model: dict | str | nn.Module, *, optim: OptimizerSettings = default_optim,
                 compile: bool | dict = False) -> None:
        super().__init__(optim, compile=compile)
        self.init_model(model)
        self._targets_checked = False

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

    def check_data(self, dm: L.LightningDataModule) -> None:
        """A model whose widths do not match the data stops here, before any step runs."""
        for name in ("in_features", "out_features"):
            ours, theirs = getattr(self.model, name, None), getattr(dm, name, None)
            if ours is not None and theirs is not None and ours != theirs:
                raise ValueError(
                    f"the model has {name}={ours} but {type(dm).__name__} has {theirs}; "
                    f"set {name}: {theirs} in the model's config"
                )

    def _check_targets(self, prediction: Tensor, y: Tensor) -> None:
        """On the first batch only: targets of another shape than the predictions stop the run."""
        if self._targets_checked:
            return
        self._targets_checked = True
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
