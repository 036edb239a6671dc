"""Sequence classification: one label per token sequence, e.g. the language of a word from its characters.

The task owns the loss (cross-entropy), the metrics (accuracy, and the majority-class baseline it
must beat) and the optimizer (AdamW without decay on biases, with a constant or warm-up + cosine
learning rate). The model is a registered sequence classifier (``{"name": "gru_classifier"}``) or
any ``nn.Module`` mapping ``(tokens (B, L), lengths (B,))`` to (B, num_classes) logits.

A spec without ``vocab_size`` or ``num_classes`` takes them (and ``pad_id``) from the datamodule
when the Trainer starts (:class:`~research.data.words.LanguageWordsDataModule` knows them from its
training split), as :class:`~research.tasks.MaskedLanguageModelling` does for ``vocab_size``;
the spec saved in checkpoints records them, so a checkpoint loads without the data.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from research.metrics import MostFrequentAccuracy
from research.models.protocols import SequenceClassifier
from research.tasks.base import Task
from research.tasks.optim import OptimizerSettings
from research.tasks.token_inputs import TokenInputs

# what the task reads from the data and passes to the model spec when the spec lacks it
_FROM_DATA = ("vocab_size", "num_classes", "pad_id")


class SequenceClassification(TokenInputs, Task):
    """Train a classifier on padded token sequences with cross-entropy.

    Batches are dicts with ``tokens`` (B, L), ``lengths`` (B,) and ``labels`` (B,)
    (:class:`~research.data.words.LanguageWordsDataModule`). Logged: ``train/loss`` and ``train/acc`` per
    step; ``val/`` and ``test/`` ``loss``, ``acc`` and ``majority_acc`` (the accuracy of always
    answering the split's most frequent class) per epoch. ``predict`` returns class probabilities.

    Args:
        model: a registered classifier as ``{"name": "gru_classifier", "hidden_size": 128, ...}``
            (``vocab_size``, ``num_classes`` and ``pad_id`` then come from the datamodule unless
            given), or an ``nn.Module`` with ``vocab_size`` and ``num_classes`` attributes.
        optim: the optimizer and schedule (:class:`~research.tasks.optim.OptimizerSettings`); by
            default AdamW, lr 1e-3, weight decay 0.01 (biases get none), constant.
        compile: compile the model with ``torch.compile`` (True, or its arguments such as ``{mode: ...}``;
            :class:`~research.tasks.base.Task`).

    """

    sizes_from_data = ("vocab_size", "num_classes")
    model_contract = (SequenceClassifier, "a sequence classifier (e.g. gru_classifier)")
    default_optim = OptimizerSettings(name="adamw", lr=1e-3, weight_decay=0.01, schedule="constant")
    checkpoint_monitor = ("val/acc", "max")

    def __init__(self, model: dict | str | nn.Module, *, optim: OptimizerSettings = default_optim,
                 compile: bool | dict = False) -> None:
        super().__init__(optim, compile=compile)
        self.init_model(model)

    def build_metrics(self) -> None:
        classes = self.model.num_classes

        def metrics() -> nn.ModuleDict:
            # average="micro" is plain accuracy; torchmetrics' default (macro) averages per class
            return nn.ModuleDict(
                {
                    "acc": MulticlassAccuracy(classes, average="micro"),
                    "majority_acc": MostFrequentAccuracy(classes),
                }
            )

        self.train_acc = MulticlassAccuracy(classes, average="micro")
        self.eval_metrics = nn.ModuleDict({"val": metrics(), "test": metrics()})

    def data_sizes(self, dm: L.LightningDataModule | None) -> dict[str, int]:
        spec = self.hparams.model if isinstance(self.hparams.model, dict) else {}
        needed = [key for key in self.sizes_from_data if key not in spec and not hasattr(dm, key)]
        if needed:
            raise ValueError(
                f"the model spec has no {' or '.join(needed)} and there is no datamodule that knows it "
                "(such as research.data.LanguageWordsDataModule); add it to the model spec"
            )
        return {key: getattr(dm, key) for key in _FROM_DATA if hasattr(dm, key)}

    def check_data(self, dm: L.LightningDataModule) -> None:
        for key, advice in (
            ("vocab_size", "a checkpoint only fits the character vocabulary it was trained with (the same corpus)"),
            ("num_classes", "set num_classes to the datamodule's number of classes"),
            ("pad_id", "set pad_id to the datamodule's padding id"),
        ):
            ours, theirs = getattr(self.model, key, None), getattr(dm, key, None)
            if ours is not None and theirs is not None and ours != theirs:
                raise ValueError(
                    f"the model has {key}={ours} but {type(dm).__name__} has {key}={theirs}; {advice}, or leave "
                    f"{key} out of the model spec to take the datamodule's"
                )

    def forward(self, tokens: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Class logits.

        Args:
            tokens: (B, L) token ids, padded after each sequence.
            lengths: (B,) tokens per sequence, or None (the model counts the non-padding ids).

        Returns:
            (B, num_classes) logits.

        """
        return self.model(tokens, lengths)

    def perturbable_tokens(self, batch: dict[str, Tensor]) -> Tensor:
        """The tokens an embedding-space attack may perturb, bool (B, L).

        Within each row's ``lengths`` (all of the row without them) and not a special token
        (padding, [CLS], [SEP], [MASK]; :meth:`~research.tasks.token_inputs.TokenInputs.special_token_ids`).
        """
        tokens, lengths = batch["tokens"], batch.get("lengths")
        ordinary = self.ordinary_tokens(tokens)
        if lengths is None:
            return ordinary
        inside = torch.arange(tokens.shape[1], device=tokens.device) < lengths.to(tokens.device)[:, None]
        return ordinary & inside

    def adversarial_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The training loss of the batch (cross-entropy), float32, without logging or metric updates."""
        return F.cross_entropy(self(batch["tokens"], batch.get("lengths")).float(), batch["labels"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self(batch["tokens"], batch.get("lengths"))
        labels = batch["labels"]
        loss = F.cross_entropy(logits, labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        self.train_acc(logits.detach(), labels)
        self.log("train/acc", self.train_acc, prog_bar=True, batch_size=len(labels))
        return loss

    def _eval_step(self, batch: dict[str, Tensor], stage: str) -> None:
        logits = self(batch["tokens"], batch.get("lengths"))
        labels = batch["labels"]
        metrics = self.eval_metrics[stage]
        metrics["acc"].update(logits, labels)
        metrics["majority_acc"].update(labels)
        size = len(labels)
        # a per-step loss averaged over the epoch with the batch sizes as weights: the split's mean loss
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels), prog_bar=True, batch_size=size, sync_dist=True)
        self.log(f"{stage}/acc", metrics["acc"], prog_bar=True, batch_size=size)
        self.log(f"{stage}/majority_acc", metrics["majority_acc"], batch_size=size)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Class probabilities (B, num_classes) for a batch with ``tokens`` (and ``lengths``; labels unused)."""
        return self(batch["tokens"], batch.get("lengths")).softmax(-1)
