"""Sequence-to-sequence translation, trained as in "Attention Is All You Need" (Vaswani et al. 2017, arXiv 1706.03762).

The task owns the recipe of the paper's Sec. 5: cross-entropy with label smoothing 0.1 over the
real (non-padding) target tokens (Sec. 5.4), Adam with betas (0.9, 0.98) and eps 1e-9, and the
inverse-square-root schedule with 4,000 warm-up steps (Sec. 5.3, Eq. 3,
:func:`~research.tasks.optim.inverse_sqrt`). It measures BLEU with torchmetrics'
``SacreBLEUScore`` (13a tokenisation, on detokenised text) against the raw reference sentences:
on validation with greedy decoding over a fixed, evenly spread subset (speed), on test with beam
search (beam 4, length penalty 0.6, Sec. 6.1) over the whole split; both configurable. A table of
sample translations goes to wandb when a WandbLogger is present, and to a CSV file under the
CSVLogger's folder (or stdout, without either) otherwise.

The model is any seq2seq model of :mod:`research.models` (``transformer_small``, ``gru_attention``,
...; the interface of :mod:`research.models.decoding`). A spec without ``vocab_size`` or
``pad_id`` takes the datamodule tokenizer's when the Trainer starts, and the spec saved in the
checkpoint records them, as do ``bos_id`` and ``eos_id`` (the tokenizer's ``[CLS]`` and ``[SEP]``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.text import SacreBLEUScore

from research.models.decoding import beam_search, greedy_decode
from research.models.protocols import Seq2SeqModel
from research.tasks.base import Task
from research.tasks.checks import check_max_length, check_vocabulary
from research.tasks.optim import OptimizerSettings
from research.tasks.token_inputs import TokenInputs

Decoding = Literal["greedy", "beam"]


def label_smoothed_loss(logits: Tensor, targets: Tensor, *, pad_id: int, smoothing: float) -> tuple[Tensor, Tensor]:
    """Label-smoothed cross-entropy and plain NLL, each averaged over the non-padding targets.

    Label smoothing (Szegedy et al. 2016; Vaswani et al. 2017, Sec. 5.4) trains towards
    ``(1 - smoothing)`` on the target and ``smoothing / V`` spread over the whole vocabulary; the
    NLL is what perplexity is computed from.

    Args:
        logits: (B, T, V).
        targets: (B, T) ids, ``pad_id`` where there is no target.
        pad_id: the padding id; its positions count in neither loss.
        smoothing: the label-smoothing epsilon (0.1 in the paper).

    Returns:
        ``(loss, nll)``, two scalars (0 when there is no target token at all).

    """
    flat_logits, flat_targets = logits.flatten(0, 1).float(), targets.flatten()
    real = flat_targets != pad_id
    if not real.any():
        zero = flat_logits.sum() * 0.0  # keeps the graph: a step on an all-padding batch is a no-op
        return zero, zero.detach()
    log_probs = flat_logits[real].log_softmax(-1)
    nll = F.nll_loss(log_probs, flat_targets[real])
    return (1 - smoothing) * nll - smoothing * log_probs.mean(-1).mean(), nll.detach()


class Translation(TokenInputs, Task):
    """Train an encoder-decoder on sentence pairs; measure BLEU; log sample translations.

    Batches come from :class:`~research.data.TranslationDataModule`. Logged: ``train/loss``
    (label-smoothed), ``train/nll``, ``train/padding`` (fraction of the batch's source and decoder
    tokens that are padding) per step; ``val/`` and ``test/`` ``loss``, ``nll``, ``ppl`` (exp of the
    per-token NLL) and ``bleu`` (0-100) per epoch.

    Args:
        model: a registered seq2seq model, ``{"name": "transformer_small"}`` (``vocab_size`` and
            ``pad_id`` then come from the datamodule), a full spec, or an ``nn.Module`` with the
            seq2seq interface.
        label_smoothing: epsilon of the label-smoothed loss (paper: 0.1).
        optim: the optimizer and schedule (:class:`~research.tasks.optim.OptimizerSettings`); by
            default the paper's: Adam (AdamW without weight decay) with betas (0.9, 0.98) and eps
            1e-9, the inverse-square-root schedule with 4,000 warm-up steps and ``lr`` 1, its
            scale (a peak of lr * (d_model * warmup_steps)^-0.5, 7e-4 for the base model).
        model_dim: d_model of the inverse-square-root schedule; None reads the model's ``dim``.
        val_decoding: "greedy" or "beam" decoding for the validation BLEU.
        test_decoding: "greedy" or "beam" decoding for the test BLEU.
        val_bleu_samples: sentences decoded for the validation BLEU, spread evenly over the
            split (the same ones every epoch); None decodes all.
        test_bleu_samples: likewise for the test BLEU (None: all, the paper's measure).
        beam_size: beam width (paper: 4).
        length_penalty: GNMT length-penalty alpha of the beam search (paper: 0.6).
        num_logged_samples: rows of the sample-translation table, per evaluation.
        bos_id: the decoder's first token; None takes the datamodule's ``[CLS]``.
        eos_id: the end-of-sentence token; None takes the datamodule's ``[SEP]``.
        compile: compile the model with ``torch.compile`` (True, or its arguments such as ``{mode: ...}``;
            :class:`~research.tasks.base.Task`).

    """

    sizes_from_data = ("vocab_size", "pad_id")
    model_contract = (Seq2SeqModel, "a seq2seq model (e.g. transformer_small, gru_attention)")
    default_optim = OptimizerSettings(name="adamw", lr=1.0, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0,
                                      schedule="inverse_sqrt", warmup_steps=4000)
    checkpoint_monitor = ("val/bleu", "max")

    def __init__(
        self,
        model: dict | str | nn.Module,
        *,
        label_smoothing: float = 0.1,
        optim: OptimizerSettings = default_optim,
        model_dim: int | None = None,
        val_decoding: Decoding = "greedy",
        test_decoding: Decoding = "beam",
        val_bleu_samples: int | None = 500,
        test_bleu_samples: int | None = None,
        beam_size: int = 4,
        length_penalty: float = 0.6,
        num_logged_samples: int = 8,
        bos_id: int | None = None,
        eos_id: int | None = None,
        compile: bool | dict = False,
    ) -> None:
        super().__init__(optim, compile=compile)
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}; the paper uses 0.1")
        for name in ("val_bleu_samples", "test_bleu_samples"):
            if self.hparams[name] is not None and self.hparams[name] < 1:
                raise ValueError(f"{name} must be at least 1, or null to decode every sentence")
        if beam_size < 1 or num_logged_samples < 0:
            raise ValueError(f"need beam_size >= 1 and num_logged_samples >= 0, got {beam_size}, {num_logged_samples}")
        self.init_model(model)
        self._decode_every = {"val": 1, "test": 1}
        self._samples: dict[str, list[tuple[int, str, str, str]]] = {"val": [], "test": []}

    def build_metrics(self) -> None:
        def metrics() -> nn.ModuleDict:
            return nn.ModuleDict({"loss": MeanMetric(), "nll": MeanMetric(), "bleu": SacreBLEUScore()})

        self.eval_metrics = nn.ModuleDict({"val": metrics(), "test": metrics()})

    def fit_to_data(self, dm: L.LightningDataModule | None) -> None:
        """Build the model if its vocabulary comes from the data, check it, take BOS/EOS from the tokenizer."""
        super().fit_to_data(dm)
        if dm is not None and hasattr(dm, "special_tokens"):
            for name, token in (("bos_id", dm.special_tokens.cls), ("eos_id", dm.special_tokens.sep)):
                if self.hparams[name] is None:
                    self.hparams[name] = token

    def data_sizes(self, dm: L.LightningDataModule | None) -> dict[str, int]:
        if dm is None or not hasattr(dm, "vocab_size"):
            raise ValueError("the model spec has no vocab_size/pad_id and there is no translation datamodule to take "
                             "them from; add vocab_size and pad_id to the model spec")
        return {"vocab_size": dm.vocab_size, "pad_id": dm.special_tokens.pad}

    def check_data(self, dm: L.LightningDataModule) -> None:
        if not hasattr(dm, "special_tokens"):  # not a translation datamodule: nothing to compare
            return
        check_vocabulary(self.model.vocab_size, getattr(dm, "vocab_size", None))
        pad = dm.special_tokens.pad
        if pad != self.model.pad_id:
            raise ValueError(
                f"the model pads with id {self.model.pad_id} but the tokenizer's [PAD] is {pad}; "
                "drop pad_id from the model spec to take the tokenizer's"
            )
        check_max_length(getattr(dm, "max_length", None), self.model.max_positions)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint of another vocabulary or model stops here with a readable message."""
        spec = checkpoint.get("hyper_parameters", {}).get("model")
        trained = spec.get("vocab_size") if isinstance(spec, dict) else None
        if trained is not None and self.model is not None:
            check_vocabulary(trained, self.model.vocab_size, trained=True)
        super().on_load_checkpoint(checkpoint)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits.

        Args:
            src: (B, S) source ids, padded.
            tgt_in: (B, T) decoder input, BOS first, padded.

        Returns:
            (B, T, V).

        """
        return self.model(src, tgt_in)

    def translate(self, src: Tensor, *, decoding: Decoding = "greedy") -> Tensor:
        """Generated ids (B, L) without BOS, up to and including EOS, padded (see research.models.decoding).

        Args:
            src: (B, S) source ids, padded.
            decoding: "greedy" or "beam" (``beam_size`` and ``length_penalty`` of this task).

        """
        bos, eos = self.hparams.bos_id, self.hparams.eos_id
        if bos is None or eos is None:
            raise ValueError("bos_id/eos_id are unknown: pass them to the task or train with a translation datamodule")
        if decoding == "beam":
            return beam_search(
                self.model,
                src,
                bos_id=bos,
                eos_id=eos,
                beam_size=self.hparams.beam_size,
                length_penalty=self.hparams.length_penalty,
            )
        return greedy_decode(self.model, src, bos_id=bos, eos_id=eos)

    def _losses(self, batch: dict) -> tuple[Tensor, Tensor, int]:
        logits = self.model(batch["src"], batch["tgt_in"])
        pad = self.model.pad_id
        loss, nll = label_smoothed_loss(logits, batch["tgt_out"], pad_id=pad, smoothing=self.hparams.label_smoothing)
        return loss, nll, int((batch["tgt_out"] != pad).sum())

    def special_token_ids(self) -> list[int]:
        """The tokenizer's special ids (:class:`~research.tasks.token_inputs.TokenInputs`) plus BOS and EOS."""
        extra = [self.hparams.bos_id, self.hparams.eos_id]
        return sorted({*super().special_token_ids(), *(i for i in extra if i is not None)})

    def perturbable_tokens(self, batch: dict) -> Tensor:
        """The source tokens an attack may perturb, bool (B, S): True except padding and special tokens."""
        return self.ordinary_tokens(batch["src"])

    def adversarial_loss(self, batch: dict) -> Tensor:
        """The training loss of the batch (label-smoothed cross-entropy), float32, without logging."""
        return self._losses(batch)[0].float()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, nll, _ = self._losses(batch)
        size, pad = len(batch["src"]), self.model.pad_id
        padding = ((batch["src"] == pad).sum() + (batch["tgt_in"] == pad).sum()) / (
            batch["src"].numel() + batch["tgt_in"].numel()
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/nll", nll, batch_size=size)
        self.log("train/padding", padding.float(), batch_size=size)
        return loss

    def _start_eval(self, stage: str, dataloaders) -> None:
        """Decode every k-th sentence (by its index in the split), k spreading the subset over the split."""
        wanted = self.hparams[f"{stage}_bleu_samples"]
        loaders = dataloaders if isinstance(dataloaders, list | tuple) else [dataloaders]
        limits = getattr(self.trainer, f"num_{stage}_batches", None) or [None] * len(loaders)
        # Sentences this epoch will see: the split, or the share of it that limit_{stage}_batches lets through.
        seen = [
            len(loader.dataset) * (min(1.0, limit / len(loader)) if limit is not None and len(loader) else 1.0)
            for loader, limit in zip(loaders, limits)
            if hasattr(loader, "dataset")
        ]
        self._decode_every[stage] = 1 if wanted is None or not seen else max(1, math.ceil(sum(seen) / wanted))
        self._samples[stage] = []

    def _eval_step(self, batch: dict, stage: str) -> None:
        metrics = self.eval_metrics[stage]
        loss, nll, count = self._losses(batch)
        if count:
            metrics["loss"].update(loss, weight=count)  # per-token means over the epoch
            metrics["nll"].update(nll, weight=count)
        chosen = (batch["index"] % self._decode_every[stage] == 0).nonzero().flatten().tolist()
        if not chosen or self.trainer.sanity_checking:
            return
        ids = self.translate(batch["src"][chosen], decoding=self.hparams[f"{stage}_decoding"])
        tokenizer = self._tokenizer()
        hypotheses = tokenizer.decode_batch(ids.tolist(), skip_special_tokens=True)
        references = [batch["tgt_text"][i] for i in chosen]
        metrics["bleu"].update(hypotheses, [[reference] for reference in references])
        for i, hypothesis in zip(chosen, hypotheses):
            self._samples[stage].append(
                (int(batch["index"][i]), batch["src_text"][i], batch["tgt_text"][i], hypothesis)
            )

    def _tokenizer(self):
        tokenizer = getattr(self.datamodule, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(
                "BLEU needs the datamodule's tokenizer to detokenise translations; use a translation datamodule"
            )
        return tokenizer

    def _end_eval(self, stage: str) -> None:
        metrics = self.eval_metrics[stage]
        if metrics["loss"].update_called:
            nll = metrics["nll"].compute()
            self.log(f"{stage}/loss", metrics["loss"].compute(), prog_bar=True)
            self.log(f"{stage}/nll", nll)
            self.log(f"{stage}/ppl", nll.exp())
        # Decide on the count of all processes: BLEU's compute() gathers from every one of them, so a
        # process that decoded nothing must still take part when another did (or DDP would hang).
        decoded = torch.tensor(float(len(self._samples[stage])), device=self.device)
        if self.trainer.strategy.reduce(decoded, reduce_op="sum") > 0:
            self.log(f"{stage}/bleu", metrics["bleu"].compute() * 100, prog_bar=True)
            self._log_samples(stage)
        elif metrics["loss"].update_called and not self.trainer.sanity_checking:
            # The limited batches held none of the chosen sentences: BLEU was not measured. NaN says so
            # (ModelCheckpoint never picks it as best) instead of a missing monitored metric.
            rank_zero_warn(f"no sentence was decoded in this {stage} epoch, so {stage}/bleu is NaN; "
                           f"raise limit_{stage}_batches or {stage}_bleu_samples")
            self.log(f"{stage}/bleu", torch.tensor(float("nan"), device=self.device))
        for metric in metrics.values():
            metric.reset()

    def _log_samples(self, stage: str) -> None:
        """A table of (source, reference, hypothesis) rows spread over the decoded sentences."""
        samples, k = sorted(self._samples[stage]), self.hparams.num_logged_samples
        if not k or not samples or not self.trainer.is_global_zero:
            return
        rows = [list(samples[i * len(samples) // k][1:]) for i in range(min(k, len(samples)))]
        columns = ["source", "reference", "hypothesis"]
        written = False
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key=f"{stage}/translations", columns=columns, data=rows, step=self.global_step)
                written = True
            elif isinstance(logger, CSVLogger):
                path = Path(logger.log_dir) / f"{stage}_translations_step{self.global_step}.csv"
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("w", newline="", encoding="utf-8") as f:
                    csv.writer(f).writerows([columns, *rows])
                written = True
        if not written:
            lines = [f"{stage} translations at step {self.global_step}:"]
            lines += [f"  src: {s}\n  ref: {r}\n  hyp: {h}" for s, r, h in rows]
            rank_zero_info("\n".join(lines))

    def on_validation_epoch_start(self) -> None:
        self._start_eval("val", self.trainer.val_dataloaders)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._end_eval("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval("test", self.trainer.test_dataloaders)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")

    def model_width(self) -> int | None:
        return self.hparams.model_dim or super().model_width()
