"""Image classification: any registered model (or any ``nn.Module``) trained with cross-entropy.

The task receives images in [0, 1] and normalises them itself (its first step), so an attack's
epsilon is in pixel units and clamping to [0, 1] is always right (ARCHITECTURE.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from research.checkpoint_file import load_checkpoint
from research.models import import_weights
from research.models.protocols import FeatureClassifier, require
from research.tasks.base import ImageTask
from research.tasks.checks import check_checkpoint
from research.tasks.optim import OptimizerSettings

log = logging.getLogger(__name__)


class ImageClassification(ImageTask):
    """Supervised image classification.

    Args:
        model: a registered model as ``{"name": "resnet20", "num_classes": 10, ...}`` (or just a
            name), or any ``nn.Module`` mapping (B, C, H, W) images to (B, num_classes) logits.
        num_classes: number of classes; read from the model (``model.num_classes``) when omitted.
        mean: per-channel mean for normalisation; taken from the datamodule when omitted.
        std: per-channel std for normalisation; taken from the datamodule when omitted.
        label_smoothing: cross-entropy label smoothing (Szegedy et al. 2016).
        mixup_alpha: Beta(alpha, alpha) mixup (Zhang et al. 2018); 0 disables it.
        cutmix_alpha: Beta(alpha, alpha) CutMix (Yun et al. 2019); 0 disables it.
        optim: the optimizer and schedule (:class:`~research.tasks.optim.OptimizerSettings`); by
            default AdamW, lr 1e-3, weight decay 0.05, cosine decay per step. ``layer_decay`` is for
            fine-tuning a ViT or Swin (MAE's fine-tuning: 0.65 for ViT-B, 0.75 for ViT-L/H).
        pretrained: path of a checkpoint whose weights initialise the model, read through
            :func:`~research.models.import_weights` when the task is built: e.g. an MAE
            pre-training checkpoint, whose encoder loads into a ViT (position embeddings resampled
            for another image size; the classifier head stays freshly initialised). A checkpoint of
            this task (resume, ``--ckpt_path``) is restored over it.
        linear_probe: freeze the model and train only a new head on its pooled features
            (``forward_head(..., pre_logits=True)``): BatchNorm without affine parameters, then a
            linear layer, as MAE's linear probing (He et al. 2022, App. A.2). The frozen model stays
            in eval mode (no dropout, drop path or BatchNorm updates); its own head is unused.
        compile: compile the model with ``torch.compile`` (True, or its arguments such as ``{mode: ...}``;
            :class:`~research.tasks.base.Task`).
        channels_last: run the model and its input in ``torch.channels_last`` memory format, faster
            for CNNs (:meth:`~research.tasks.base.ImageTask.init_memory_format`).
    """

    default_optim = OptimizerSettings(name="adamw", lr=1e-3, weight_decay=0.05, schedule="cosine")
    checkpoint_monitor = ("val/acc", "max")
    weight_sources = ("pretrained",)

    def __init__(
        self,
        model: dict | str | nn.Module,
        *,
        num_classes: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        optim: OptimizerSettings = default_optim,
        pretrained: str | None = None,
        linear_probe: bool = False,
        compile: bool | dict = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__(optim, compile=compile)
        self.init_model(model)
        self.num_classes = num_classes or getattr(self.model, "num_classes", None)
        if not self.num_classes:
            raise ValueError("cannot tell the number of classes: pass num_classes to the task")
        if pretrained is not None:
            self._load_pretrained(Path(pretrained))
        self.probe = self._linear_probe_head() if linear_probe else None
        if linear_probe and self.optim.layer_decay is not None:
            raise ValueError("layer_decay scales the lr of the model's layers, which a linear probe freezes: drop one")
        self.init_normalization(mean, std)
        self.init_memory_format(channels_last)

        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            from timm.data import Mixup

            # timm's Mixup already smooths the mixed targets, so the loss must not smooth again.
            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                label_smoothing=label_smoothing,
                num_classes=self.num_classes,
            )

        def metrics(prefix: str) -> MetricCollection:
            # average="micro" is plain accuracy; torchmetrics' default (macro) averages per class.
            return MetricCollection(
                {
                    "acc": MulticlassAccuracy(self.num_classes, average="micro"),
                    "acc_top5": MulticlassAccuracy(
                        self.num_classes, top_k=min(5, self.num_classes), average="micro"
                    ),
                },
                prefix=prefix,
            )

        self.train_metrics, self.val_metrics, self.test_metrics = (
            metrics("train/"),
            metrics("val/"),
            metrics("test/"),
        )

    def _load_pretrained(self, path: Path) -> None:
        """Initialise the model from ``path``; a checkpoint that does not fit stops here, before training."""
        checkpoint = load_checkpoint(path, what="pretrained checkpoint")  # names the pre-training that writes it
        try:
            layout = import_weights(self.model, checkpoint)
        except ValueError as err:
            raise ValueError(f"cannot initialise {self._model_description()} from {str(path)!r}: {err}") from err
        log.info("initialised the model from %s (%s layout)", path, layout)

    def _linear_probe_head(self) -> nn.Sequential:
        """Freeze the model and build MAE's probe head (App. A.2) on its pooled features."""
        require(self.model, FeatureClassifier,
                "linear_probe needs a model with forward_features/forward_head and num_features (ViT, ResNet, ...)")
        num_features = self.model.num_features
        self.model.requires_grad_(False)
        self.model.eval()  # and train() keeps it so: Lightning starts fitting in the modes it finds
        # "an extra BatchNorm layer without affine transformation" normalises the features' scales,
        # which differ a lot between pre-trained encoders (App. A.2); eps as in the official code.
        norm = nn.BatchNorm1d(num_features, affine=False, eps=1e-6)
        head = nn.Linear(num_features, self.num_classes)
        nn.init.trunc_normal_(head.weight, std=0.01)  # the official linear probe's head init
        nn.init.zeros_(head.bias)
        return nn.Sequential(norm, head)

    def train(self, mode: bool = True) -> ImageClassification:
        """Set train/eval mode; a linear probe's frozen model stays in eval mode."""
        super().train(mode)
        if self.probe is not None:
            self.model.eval()
        return self

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.probe is None:
            return self.model(x)
        return self.probe(self.model.forward_head(self.model.forward_features(x), pre_logits=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images in [0, 1].

        Args:
            x: (B, C, H, W) images in [0, 1].

        Returns:
            (B, num_classes) logits.
        """
        return self._logits(self.normalize(x))

    def check_data(self, dm: L.LightningDataModule) -> None:
        """The model's classes against the datamodule's."""
        data_classes = getattr(dm, "num_classes", None)
        if data_classes is not None and data_classes != self.num_classes:
            named = getattr(dm, "class_names", None)
            if data_classes > self.num_classes and named and list(named) == [str(i) for i in range(data_classes)]:
                # classes counted from the largest label: name the labels the model has no class for
                bad = f"label {self.num_classes}" + (f" to {data_classes - 1}" if data_classes - 1 > self.num_classes
                                                     else "")
                raise ValueError(
                    f"{type(dm).__name__} has {bad}, but the model predicts {self.num_classes} classes "
                    f"(labels 0 to {self.num_classes - 1}): if {bad.removeprefix('label ')} is a wrong label, fix "
                    f"the data; if there are {data_classes} classes, set num_classes: {data_classes} in the model"
                )
            raise ValueError(
                f"the model predicts {self.num_classes} classes but {type(dm).__name__} has {data_classes}; "
                f"set num_classes: {data_classes} in the model's config"
            )

    def dry_run(self, image: torch.Tensor) -> torch.Tensor:
        return self(image)

    def check_output(self, output: torch.Tensor) -> None:
        if output.ndim != 2 or output.shape[-1] != self.num_classes:
            raise ValueError(f"the model returns shape {tuple(output.shape)}, expected (B, {self.num_classes}) logits")

    def _model_description(self) -> str:
        return str(self.hparams.get("model", type(self.model).__name__))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)  # ``pretrained`` kept as a record only (Task.weight_sources)
        checkpoint["model_description"] = self._model_description()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint of another model stops here with a readable message, before torch's strict load."""
        check_checkpoint(self, checkpoint, holds=checkpoint.get("model_description", "another model"))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.mixup is not None:
            x, target = self.mixup(x, y)  # soft targets (B, num_classes)
            logits = self(x)
            loss = F.cross_entropy(logits, target)
        else:
            logits = self(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        self.train_metrics.update(logits.detach(), y)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(y))
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def _eval_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metrics: MetricCollection
    ) -> None:
        x, y = batch
        logits = self(x)
        metrics.update(logits, y)
        self.log(
            f"{stage}/loss", F.cross_entropy(logits, y), prog_bar=True, batch_size=len(y), sync_dist=True
        )
        self.log_dict(metrics, prog_bar=True, batch_size=len(y))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Class probabilities (B, num_classes) for a batch of images (with or without labels)."""
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x).softmax(-1)

    def optimized_module(self) -> nn.Module:
        return self.model if self.probe is None else self.probe  # a probe's model is frozen
