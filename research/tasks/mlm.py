"""Masked language modelling, BERT's pre-training objective (Devlin et al. 2019, arXiv 1810.04805, Sec. 3.1).

The task owns the loss (cross-entropy over the selected tokens only, labels -100 elsewhere; plus
the next-sentence loss when the data has pairs for it), the metrics (loss, perplexity = exp of the
per-token loss, masked-token accuracy, and the unigram baseline that accuracy must beat) and BERT's
optimizer (App. A.2: AdamW, lr 1e-4, betas (0.9, 0.999), weight decay 0.01, linear warm-up over
10,000 steps, then linear decay). The masking itself happens in the data
(:class:`~research.data.MaskedLanguageModellingCollator`).

The model is a registered BERT (``{"name": "bert_tiny"}``) or any module with ``forward_features``,
``mlm_logits``, ``vocab_size`` and ``max_positions``. A spec without ``vocab_size`` takes the
datamodule tokenizer's when the Trainer starts (a trained subword vocabulary may end below the
requested size), and the spec saved in checkpoints records it.
"""

from __future__ import annotations

import lightning as L
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from research.data.mlm import IGNORE_INDEX
from research.metrics import MostFrequentAccuracy
from research.models.protocols import MaskedLanguageModel
from research.tasks.base import Task
from research.tasks.checks import check_max_length, check_vocabulary
from research.tasks.optim import OptimizerSettings
from research.tasks.token_inputs import TokenInputs


class MaskedLanguageModelling(TokenInputs, Task):
    """Pre-train a BERT-style encoder by predicting masked tokens (and, optionally, the next sentence).

    Batches come from :class:`~research.data.MaskedLanguageModellingDataModule`. Logged: ``train/loss`` (MLM,
    plus NSP when present), ``train/ppl``, ``train/acc`` per step; ``val/`` and ``test/`` ``loss``,
    ``ppl`` (exp of the per-token MLM loss), ``acc`` (masked-token accuracy: top-1 over the
    selected positions) and ``unigram_acc`` (:class:`~research.metrics.MostFrequentAccuracy`) per epoch, and
    ``nsp_loss``, ``nsp_acc`` with next-sentence prediction.

    Args:
        model: a registered BERT as ``{"name": "bert_tiny"}`` (``vocab_size`` then comes from the
            datamodule) or ``{"name": "bert_tiny", "vocab_size": 8000}``, or an ``nn.Module`` with
            ``forward_features``, ``mlm_logits``, ``vocab_size`` and ``max_positions``.
        optim: the optimizer and schedule (:class:`~research.tasks.optim.OptimizerSettings`); by
            default BERT's (App. A.2): AdamW, lr 1e-4, betas (0.9, 0.999), weight decay 0.01
            (biases and norms get none), linear warm-up over 10,000 steps (of 1,000,000), then
            linear decay to 0.
        compile: compile the model with ``torch.compile`` (True, or its arguments such as ``{mode: ...}``;
            :class:`~research.tasks.base.Task`).

    """

    sizes_from_data = ("vocab_size",)
    model_contract = (MaskedLanguageModel, "a BERT-style model (e.g. bert_tiny)")
    default_optim = OptimizerSettings(name="adamw", lr=1e-4, weight_decay=0.01, schedule="linear", warmup_steps=10_000)

    def __init__(self, model: dict | str | nn.Module, *, optim: OptimizerSettings = default_optim,
                 compile: bool | dict = False) -> None:
        super().__init__(optim, compile=compile)
        self.init_model(model)

    def build_metrics(self) -> None:
        vocab = self.model.vocab_size
        self.nsp = getattr(self.model, "next_sentence", None) is not None

        def metrics() -> nn.ModuleDict:
            stage = {
                "loss": MeanMetric(),
                # the task feeds only selected positions; ignore_index guards any -100 that slips in
                "acc": MulticlassAccuracy(vocab, average="micro", ignore_index=IGNORE_INDEX),
                "unigram_acc": MostFrequentAccuracy(vocab, ignore_index=IGNORE_INDEX),
            }
            if self.nsp:
                stage |= {"nsp_loss": MeanMetric(), "nsp_acc": MeanMetric()}
            return nn.ModuleDict(stage)

        self.eval_metrics = nn.ModuleDict({"val": metrics(), "test": metrics()})

    def data_sizes(self, dm: L.LightningDataModule | None) -> dict[str, int]:
        if dm is None or not hasattr(dm, "vocab_size"):
            raise ValueError("the model spec has no vocab_size and there is no text datamodule to take it from; "
                             "add vocab_size to the model spec")
        return {"vocab_size": dm.vocab_size}

    def check_data(self, dm: L.LightningDataModule) -> None:
        check_vocabulary(self.model.vocab_size, getattr(dm, "vocab_size", None))
        check_max_length(getattr(dm, "max_length", None), self.model.max_positions)
        if getattr(dm, "next_sentence_prediction", False) and not self.nsp:
            raise ValueError(
                "the datamodule labels next sentences but the model has no next-sentence head; add "
                "next_sentence_head: true to the model spec, or set next_sentence_prediction: false"
            )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint of another vocabulary or model stops here with a readable message."""
        state = checkpoint["state_dict"]
        embedding = next((v for k, v in state.items() if k.endswith("embeddings.word_embeddings.weight")), None)
        if embedding is not None and self.model is not None:
            check_vocabulary(embedding.shape[0], self.model.vocab_size, trained=True)
        super().on_load_checkpoint(checkpoint)

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, padding_mask: Tensor | None = None
    ) -> Tensor:
        """MLM logits at every position.

        Args:
            input_ids: (B, N) token ids.
            token_type_ids: (B, N) segment ids, or None.
            padding_mask: bool (B, N), True = padding, or None.

        Returns:
            (B, N, V).

        """
        return self.model.mlm_logits(self.model.forward_features(input_ids, token_type_ids, padding_mask))

    def _losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        hidden = self.model.forward_features(batch["input_ids"], batch["token_type_ids"], batch["padding_mask"])
        selected = batch["labels"] != IGNORE_INDEX
        targets = batch["labels"][selected]
        # Only the selected ~15% of positions go through the (H x V) decoder.
        logits = self.model.mlm_logits(hidden[selected])
        count = targets.numel()
        # A batch may select no token at all; its loss is then 0, not NaN.
        mlm_loss = F.cross_entropy(logits, targets, reduction="sum") / max(count, 1)
        out = {"mlm_loss": mlm_loss, "loss": mlm_loss, "logits": logits, "targets": targets}
        if "next_sentence_label" in batch:
            if not self.nsp:
                raise ValueError("the batch has next_sentence_label but the model has no next-sentence head")
            nsp_logits = self.model.next_sentence_logits(hidden)
            nsp_loss = F.cross_entropy(nsp_logits, batch["next_sentence_label"])
            out |= {"nsp_loss": nsp_loss, "loss": mlm_loss + nsp_loss}  # BERT sums the two (App. A.2)
            out["nsp_correct"] = (nsp_logits.argmax(-1) == batch["next_sentence_label"]).float()
        return out

    def perturbable_tokens(self, batch: dict[str, Tensor]) -> Tensor:
        """The input tokens an embedding-space attack may perturb, bool (B, N).

        Not padding, [CLS], [SEP] or [MASK] (``TokenInputs.special_token_ids``); a selected token that
        the collator kept or replaced by a random one is an ordinary input token.
        """
        ordinary = self.ordinary_tokens(batch["input_ids"])
        padding = batch.get("padding_mask")
        return ordinary if padding is None else ordinary & ~padding

    def adversarial_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The training loss of the batch (MLM, plus NSP when the batch has it), float32, without logging."""
        return self._losses(batch)["loss"].float()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self._losses(batch)
        size = len(batch["input_ids"])
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=size)
        self.log("train/ppl", out["mlm_loss"].detach().exp(), batch_size=size)
        if out["targets"].numel():
            accuracy = (out["logits"].detach().argmax(-1) == out["targets"]).float().mean()
            self.log("train/acc", accuracy, prog_bar=True, batch_size=size)
        if "nsp_loss" in out:
            self.log("train/nsp_loss", out["nsp_loss"], batch_size=size)
        return out["loss"]

    def _eval_step(self, batch: dict[str, Tensor], stage: str) -> None:
        out = self._losses(batch)
        metrics = self.eval_metrics[stage]
        count = out["targets"].numel()
        if count:
            metrics["loss"].update(out["mlm_loss"], weight=count)  # a per-token mean over the epoch
            metrics["acc"].update(out["logits"], out["targets"])
            metrics["unigram_acc"].update(out["targets"])
        if "nsp_loss" in out:
            metrics["nsp_loss"].update(out["nsp_loss"], weight=len(batch["input_ids"]))
            metrics["nsp_acc"].update(out["nsp_correct"])

    def _log_epoch(self, stage: str) -> None:
        metrics = self.eval_metrics[stage]
        if not metrics["loss"].update_called:
            return
        mlm_loss = metrics["loss"].compute()
        values = {
            "ppl": mlm_loss.exp(),
            "acc": metrics["acc"].compute(),
            "unigram_acc": metrics["unigram_acc"].compute(),
        }
        loss = mlm_loss
        if self.nsp and metrics["nsp_loss"].update_called:
            values |= {"nsp_loss": metrics["nsp_loss"].compute(), "nsp_acc": metrics["nsp_acc"].compute()}
            loss = mlm_loss + values["nsp_loss"]
        self.log(f"{stage}/loss", loss, prog_bar=True)
        for name, value in values.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "acc")
        for metric in metrics.values():
            metric.reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
