"""The token half of :class:`~research.callbacks.RobustEvaluation`: a text task's metric under an embedding-space PGD.

Issue 17, item 3. Token ids cannot move by a small amount, their embeddings can: the attack is
:func:`research.attacks.embedding_pgd` (Miyato, Dai & Goodfellow 2017, "Adversarial Training Methods
for Semi-Supervised Text Classification", arXiv:1605.07725, Sec. 3: an L2 perturbation of the word
embeddings, here per token and relative to each token's embedding norm, PGD-k in that ball),
maximising the task's ``adversarial_loss(batch)`` (its training loss) with the perturbation added
at the model's embedding point (``task.embedding_point``) and never on padding or special tokens
(``task.perturbable_tokens``). Then the task's metric is measured on the perturbed embeddings:

* :class:`~research.tasks.SequenceClassification`: accuracy, per sequence;
* :class:`~research.tasks.MaskedLanguageModelling`: masked-token accuracy, per selected token (the
  tokens the batch's labels select, as the task's ``acc``);
* :class:`~research.tasks.Translation`: BLEU of greedy translations with the encoder's input
  embeddings perturbed (the perturbation found on the teacher-forced, label-smoothed loss), with
  the task's own metric (a copy of its ``SacreBLEUScore``) and scale (0-100), on the tokenizer's
  detokenised text against the raw references, as the task's ``bleu``.

As for images, an element (sequence or masked token) counts as robust only if it is correct clean
and under the attack (the clean embeddings lie in every ball), and with ``restarts`` > 1 only if
no restart fools it: the worst case per element. BLEU is a corpus figure with no per-sentence
"correct": it is reported under the attack as it stands.

The subset is a :class:`TokenSubset`: the examples of a seeded random sample of the first
evaluation epoch (as :class:`~research.callbacks._batch.FixedSubset` keeps images), regrouped by
the batch they came from, so no batch needs padding again.
"""

from __future__ import annotations

import copy
from itertools import groupby
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from research.attacks import embedding_perturbation, embedding_pgd
from research.callbacks._batch import FixedSubset, Stage
from research.data.mlm import IGNORE_INDEX
from research.tasks import MaskedLanguageModelling, SequenceClassification, Translation
from research.tasks.token_inputs import HOOKS, has_token_inputs

Embeddings = Literal["token", "token+position"]
#: the tasks whose metric this module measures (accuracy, masked-token accuracy, BLEU)
TASKS = (SequenceClassification, MaskedLanguageModelling, Translation)
INFERENCE_MODE_ADVICE = (
    "the model holds a tensor made inside torch.inference_mode (a cache built during evaluation, say), and "
    "attacks cannot differentiate through it. Set trainer.inference_mode: false in the config "
    "(Trainer(inference_mode=False)); validation then runs under no_grad."
)


class TokenSubset(FixedSubset):
    """A fixed random sample of the examples of the first pass over a loader of dict batches of token ids.

    The same reservoir sampling as :class:`~research.callbacks._batch.FixedSubset`; each kept
    example holds its row of every per-example entry of its batch (tensors whose first dimension
    is the batch, lists such as Translation's ``src_text``), and :meth:`batches` stacks the kept rows
    of each source batch back into a batch of the same keys and padding.
    """

    def check(self, batch: Any) -> None:
        if not isinstance(batch, dict) or not any(isinstance(v, Tensor) and v.ndim for v in batch.values()):
            raise ValueError(
                f"{self.owner} on token inputs expects dict batches of token-id tensors, as the text datamodules "
                f"yield them; got a batch of type {type(batch).__name__}"
            )

    def size(self, batch: dict) -> int:
        return len(next(v for v in batch.values() if isinstance(v, Tensor) and v.ndim))

    def example(self, batch: dict, i: int) -> tuple[int, dict, dict]:
        """(the batch's first position in the pass, which groups the rows of one batch; the row; the shared entries)."""
        size = self.size(batch)
        row, shared = {}, {}
        for key, value in batch.items():
            if isinstance(value, Tensor) and value.ndim and len(value) == size:
                row[key] = value[i].detach().clone()
            elif isinstance(value, list | tuple) and len(value) == size:
                row[key] = value[i]
            else:  # not per example: the same for the whole batch
                shared[key] = value
        return self._seen, row, shared

    def batches(self, batch_size: int) -> list[dict]:
        """The kept examples in loader order as dict batches of at most ``batch_size``, one source batch each.

        Tensors are normal tensors (stacked and cloned outside inference mode).
        """
        if not self._kept:
            raise ValueError(f"{self.owner}: the loader yielded no examples to attack")
        kept = sorted(self._kept, key=lambda item: item[0])
        out = []
        with torch.inference_mode(False):
            for _, group in groupby((example for _, example in kept), key=lambda example: example[0]):
                examples = list(group)
                for start in range(0, len(examples), batch_size):
                    rows = [row for _, row, _ in examples[start:start + batch_size]]
                    batch = {key: torch.stack([row[key] for row in rows]).clone() if isinstance(value, Tensor)
                             else [row[key] for row in rows] for key, value in rows[0].items()}
                    out.append(batch | examples[0][2])
        return out


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


class EmbeddingRobustness:
    """Measure a text task's metric clean and under embedding-space PGD on a :class:`TokenSubset`, counts over ranks.

    Args:
        radius: the ball's radius relative to each token's embedding norm (``embedding_pgd``'s), > 0.
        steps: PGD steps.
        step_size: PGD step relative to the embedding norm; None: ``embedding_pgd``'s default
            (2.5 * radius / steps).
        restarts: attacks from random starts; an element is robust only if none fools it (1: one
            attack from zero). Translation takes 1 only (BLEU has no per-sentence worst case).
        embeddings: "token" (the token embeddings) or "token+position" (with the position embeddings).
        batch_size: examples per attack batch (at most; a batch never mixes two loader batches).
        owner: the callback's name, for messages.
    """

    def __init__(self, *, radius: float, steps: int, step_size: float | None, restarts: int,
                 embeddings: Embeddings, batch_size: int, owner: str) -> None:
        if embeddings not in ("token", "token+position"):
            raise ValueError(f"{owner}: unknown embeddings {embeddings!r}; choose 'token' or 'token+position'")
        self.radius, self.steps, self.step_size, self.restarts = radius, steps, step_size, restarts
        self.embeddings, self.batch_size, self.owner = embeddings, batch_size, owner

    def check_task(self, task: L.LightningModule) -> None:
        """Stop with one line unless ``task`` is a text task with the hooks and a model with the embedding interface.

        Raises:
            ValueError: a task without :data:`HOOKS` or of a kind whose metric is unknown here; a
                model without the embedding interface (the task's own message); restarts > 1 on Translation.
        """
        if not has_token_inputs(task) or not isinstance(task, TASKS):
            raise ValueError(
                f"{self.owner}: embedding-space evaluation needs a text task with the hooks {', '.join(HOOKS)} "
                f"(SequenceClassification, MaskedLanguageModelling or Translation); {type(task).__name__} is not one. "
                "Set inputs: images for an image task"
            )
        if isinstance(task, Translation) and self.restarts > 1:
            raise ValueError(f"{self.owner}: Translation's BLEU has no per-sentence worst case over restarts; "
                             f"set restarts: 1 (got {self.restarts})")
        if getattr(task, "model", None) is not None:
            try:
                task.embedding_point(include_position=self.embeddings == "token+position")
            except ValueError as error:
                raise ValueError(f"{self.owner}: {error}") from None

    def names(self, task: L.LightningModule) -> list[str]:
        """The figures logged under ``<stage>/``, in order."""
        if isinstance(task, Translation):
            return ["subset_clean_bleu", "robust_bleu"]
        return ["subset_clean_acc", "robust_acc_pgd", "robust_acc"]

    def evaluate(self, trainer: L.Trainer, task: L.LightningModule, stage: Stage, subset: TokenSubset) -> None:
        """Attack the kept examples and log :meth:`names` under ``<stage>/``, every rank the same numbers."""
        self.check_task(task)
        point = task.embedding_point(include_position=self.embeddings == "token+position")
        plugin = trainer.precision_plugin
        context = plugin.val_step_context if stage == "val" else plugin.test_step_context
        if isinstance(task, Translation):
            values = self._bleu(trainer, task, stage, subset, point, context)
        else:
            counts = torch.zeros(3, device=task.device)  # elements, correct clean, robust
            for batch in subset.batches(self.batch_size):
                batch = _to(batch, task.device)
                with context():
                    clean, robust = self._robust(task, batch, point)
                counts += torch.stack([counts.new_tensor(float(len(clean))), clean.sum().float(), robust.sum().float()])
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
            values = [counts[1] / counts[0], counts[2] / counts[0], counts[2] / counts[0]]
        for name, value in zip(self.names(task), values):
            task.log(f"{stage}/{name}", value, sync_dist=True)

    def attack(self, task: L.LightningModule, batch: dict, point: nn.Module, *, random_start: bool) -> Tensor:
        """The (B, T, D) perturbation of the batch's embeddings that PGD finds on the task's ``adversarial_loss``."""
        mask = task.perturbable_tokens(batch)
        with torch.inference_mode(False), torch.enable_grad():
            return embedding_pgd(lambda: task.adversarial_loss(batch), point, mask, radius=self.radius,
                                 steps=self.steps, step_size=self.step_size, random_start=random_start)

    def _robust(self, task: L.LightningModule, batch: dict, point: nn.Module) -> tuple[Tensor, Tensor]:
        """(N,) correct clean and robust (correct clean and under every restart) per element of the batch."""
        try:
            with torch.no_grad():
                clean = correct(task, batch)
            robust = clean.clone()
            for _ in range(self.restarts):
                delta = self.attack(task, batch, point, random_start=self.restarts > 1)
                with torch.no_grad(), embedding_perturbation(point, delta):
                    robust &= correct(task, batch)
        except RuntimeError as err:
            if "Inference tensors" not in str(err):
                raise
            raise ValueError(f"{self.owner}: {INFERENCE_MODE_ADVICE}") from err
        return clean, robust

    def _bleu(self, trainer: L.Trainer, task: Translation, stage: Stage, subset: TokenSubset, point: nn.Module,
              context) -> list[Tensor]:
        """Corpus BLEU (0-100) of the greedy translations of the subset, clean and with the encoder's input attacked."""
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(f"{self.owner}: BLEU needs the datamodule's tokenizer to detokenise translations; "
                             "use a translation datamodule")
        # the task's own metric (SacreBLEU, 13a), fresh copies; their compute() gathers every rank's counts
        metrics = [copy.deepcopy(task.eval_metrics[stage]["bleu"]) for _ in range(2)]
        for metric in metrics:
            metric.reset()
        for batch in subset.batches(self.batch_size):
            batch = _to(batch, task.device)
            references = [[reference] for reference in batch["tgt_text"]]
            try:
                with context():
                    clean = task.translate(batch["src"], decoding="greedy")
                    delta = self.attack(task, batch, point, random_start=False)
                    with embedding_perturbation(point, delta):
                        attacked = task.translate(batch["src"], decoding="greedy")
            except RuntimeError as err:
                if "Inference tensors" not in str(err):
                    raise
                raise ValueError(f"{self.owner}: {INFERENCE_MODE_ADVICE}") from err
            for metric, ids in zip(metrics, (clean, attacked)):
                metric.update(tokenizer.decode_batch(ids.tolist(), skip_special_tokens=True), references)
        return [metric.compute() * 100 for metric in metrics]


def correct(task: L.LightningModule, batch: dict) -> Tensor:
    """Bool (N,): per sequence (SequenceClassification) or per selected token (MaskedLanguageModelling), right or not.

    Runs the model's forward once (so a perturbation hook at its embedding point applies once).
    """
    if isinstance(task, SequenceClassification):
        return task(batch["tokens"], batch.get("lengths")).argmax(-1) == batch["labels"]
    selected = batch["labels"] != IGNORE_INDEX
    hidden = task.model.forward_features(batch["input_ids"], batch.get("token_type_ids"), batch.get("padding_mask"))
    # only the selected positions go through the (H x V) decoder, as the task's loss does
    return task.model.mlm_logits(hidden[selected]).argmax(-1) == batch["labels"][selected]
