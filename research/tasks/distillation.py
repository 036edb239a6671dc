"""Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

A student classifier learns from the labels and from a frozen teacher's softened predictions:

    loss = alpha * CE(student, y) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The T^2 factor keeps the soft term's gradients on the scale of the hard term's when T changes
(section 2: the soft targets' gradients scale as 1/T^2). Everything else (normalisation, metrics,
optimizer and schedule, the dry forward that checks model against data) is ImageClassification's:
the student is the task's ``model``, the teacher an extra, frozen module.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from research.checkpoint_file import load_checkpoint
from research.models import build_model, import_weights
from research.tasks.classification import ImageClassification

log = logging.getLogger(__name__)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hinton et al.'s loss and its two terms.

    Args:
        student_logits: (B, K) student logits.
        teacher_logits: (B, K) teacher logits (no gradient flows into them).
        target: (B,) class indices, or (B, K) soft targets (mixup/CutMix).
        alpha: weight of the hard (label) term; 1 - alpha weighs the soft (teacher) term.
        temperature: T, softening both distributions in the soft term.
        label_smoothing: smoothing of the hard term (class-index targets only).

    Returns:
        (loss, hard term CE(student, y), soft term T^2 * KL(p_teacher || p_student)), each a scalar.
    """
    hard = F.cross_entropy(student_logits, target, label_smoothing=label_smoothing if target.ndim == 1 else 0.0)
    # kl_div(input=log q, target=log p, log_target=True) is KL(p || q), summed over classes and
    # averaged over the batch ("batchmean" is the true KL; "mean" would also divide by K).
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits.detach() / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * temperature**2
    return alpha * hard + (1 - alpha) * soft, hard, soft


class Distillation(ImageClassification):
    """Train the ``model`` (student) on labels and on a frozen teacher's soft targets.

    The teacher is built from ``teacher`` (any registered model) and initialised from
    ``teacher_checkpoint`` through :func:`~research.models.import_weights`, the loader behind
    ImageClassification's ``pretrained`` (so a checkpoint of ImageClassification, a bare
    state_dict or a reference layout all work). It sees the same normalised images as the
    student, so it must have been trained on the same data. It never trains: no gradients, left
    out of the optimizer, and in eval mode even when Lightning calls ``.train()`` (no dropout, no
    BatchNorm statistics updates).

    Checkpoints of this task hold the teacher's weights too, so that a run resumes, and the task
    is rebuilt by ``load_from_checkpoint``, without the teacher's file (its path is kept as
    ``teacher_checkpoint_from``). That costs the teacher's size on disk.

    Args:
        model: the student, as for ImageClassification.
        teacher: the teacher's model spec, e.g. ``{"name": "resnet18", "num_classes": 10, "in_chans": 1}``.
        teacher_checkpoint: the teacher's trained weights; required to fit (unless restored from
            a checkpoint of this task).
        alpha: weight of the hard-label cross-entropy; ``1 - alpha`` weighs the distillation term.
            1 trains the student alone (the baseline), 0 on the teacher alone.
        temperature: softmax temperature T of the distillation term (Hinton et al. use 1-20).
        **kwargs: the other ImageClassification arguments (optim, mean/std, ...).
            ``linear_probe`` is not supported: the student is trained whole.
    """

    weight_sources = ("pretrained", "teacher_checkpoint")

    def __init__(
        self,
        model: dict | str | nn.Module,
        *,
        teacher: dict | str | nn.Module,
        teacher_checkpoint: str | None = None,
        alpha: float = 0.5,
        temperature: float = 4.0,
        **kwargs,
    ) -> None:
        if kwargs.get("linear_probe"):
            raise ValueError("Distillation trains the whole student; remove linear_probe from its config")
        super().__init__(model, **kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha weighs the label loss against the teacher's and must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (1 = plain softmax; Hinton et al. use 1-20), got {temperature}")
        self.teacher = build_model(teacher)
        teacher_classes = getattr(self.teacher, "num_classes", None)
        if teacher_classes is not None and teacher_classes != self.num_classes:
            raise ValueError(
                f"the teacher {self._teacher_description()} predicts {teacher_classes} classes but the student "
                f"predicts {self.num_classes}; distil from a teacher trained on this data (num_classes: "
                f"{self.num_classes} in both specs)"
            )
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self._teacher_loaded = False
        if teacher_checkpoint is not None:
            self._load_teacher(Path(teacher_checkpoint))

    def _teacher_description(self) -> str:
        spec = self.hparams.get("teacher")
        return str(spec) if spec is not None and not isinstance(spec, nn.Module) else type(self.teacher).__name__

    def _load_teacher(self, path: Path) -> None:
        """Load the teacher's weights; a checkpoint for other classes or another model stops here."""
        checkpoint = load_checkpoint(path, what="teacher checkpoint")  # names the command that trains it
        # A checkpoint of our tasks records the model it holds: name the class count mismatch plainly.
        saved_spec = checkpoint.get("hyper_parameters", {}).get("model") if isinstance(checkpoint, dict) else None
        saved_classes = saved_spec.get("num_classes") if isinstance(saved_spec, dict) else None
        if saved_classes is not None and saved_classes != self.num_classes:
            raise ValueError(
                f"the teacher checkpoint {str(path)!r} was trained for {saved_classes} classes ({saved_spec}) but "
                f"this data and student have {self.num_classes}; distil from a teacher trained on this data"
            )
        try:
            layout = import_weights(self.teacher, checkpoint)
        except ValueError as err:
            raise ValueError(
                f"cannot load the teacher {self._teacher_description()} from {str(path)!r}: {err}"
            ) from err
        self._teacher_loaded = True
        log.info("loaded the teacher from %s (%s layout)", path, layout)

    def train(self, mode: bool = True) -> Distillation:
        """Set train/eval mode; the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for images in [0, 1], normalised as the student's. Shape: (B, C, H, W) -> (B, K)."""
        return self.teacher(self.normalize(x))

    def fit_to_data(self, dm: L.LightningDataModule | None) -> None:
        """The student's checks (ImageClassification's), then the teacher's dry forward on the same blank image."""
        super().fit_to_data(dm)
        image = self.blank_image(dm) if dm is not None else None
        if image is None:
            return
        out = self.dry_forward(self.teacher_logits, image, who=f"the teacher {self._teacher_description()}",
                               advice="Distil from a teacher trained on this data.")
        if out.ndim != 2 or out.shape[-1] != self.num_classes:
            raise ValueError(
                f"the teacher returns shape {tuple(out.shape)}, expected (B, {self.num_classes}) logits: "
                "its classes differ from the data's; distil from a teacher trained on this data"
            )

    def on_fit_start(self) -> None:
        if not self._teacher_loaded:
            raise ValueError(
                f"Distillation needs a trained teacher: set teacher_checkpoint to a checkpoint of "
                f"{self._teacher_description()} trained on this data (e.g. --model.init_args.teacher_checkpoint "
                "checkpoints/resnet/mnist_resnet18/last.ckpt)"
            )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._teacher_loaded = True  # the state_dict (checked to fit above) holds the teacher

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        target = y
        if self.mixup is not None:
            x, target = self.mixup(x, y)  # soft targets (B, num_classes); the teacher sees the mixed images too
        logits = self(x)
        loss, hard, soft = distillation_loss(
            logits,
            self.teacher_logits(x),
            target,
            alpha=self.hparams.alpha,
            temperature=self.hparams.temperature,
            label_smoothing=self.hparams.label_smoothing,
        )
        self.train_metrics.update(logits.detach(), y)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(y))
        self.log_dict({"train/ce": hard, "train/kd": soft}, batch_size=len(y))
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=len(y))
        return loss
