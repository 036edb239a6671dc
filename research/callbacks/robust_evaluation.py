"""Accuracy under FGSM, PGD-k and (optionally) APGD or AutoAttack on a fixed subset, every validation and test epoch.

Text tasks (token ids) get the embedding-space counterpart (issue 17, item 3): their metric under a PGD
of the input embeddings, :mod:`research.callbacks.embedding_evaluation`.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from torch import Tensor

from research.attacks import apgd, autoattack, fgsm, pgd
from research.callbacks._batch import EvaluationSubsetCallback, Stage, check_at_least_one
from research.callbacks.embedding_evaluation import INFERENCE_MODE_ADVICE, EmbeddingRobustness, Embeddings, TokenSubset
from research.callbacks.embedding_training import check_token_norm
from research.tasks.token_inputs import HOOKS, has_token_inputs

OWNER = "RobustEvaluation"
AttackName = Literal["pgd", "apgd", "autoattack"]
Inputs = Literal["auto", "images", "tokens"]


class RobustEvaluation(EvaluationSubsetCallback):
    """Log ``{val,test}/robust_acc`` and its parts on a fixed subset, at the end of validation and test epochs.

    Logged, as fractions of the subset:

    * ``subset_clean_acc``: clean accuracy on the subset's very images;
    * ``robust_acc_fgsm`` (L-inf only), ``robust_acc_pgd``: under FGSM and PGD-k;
    * ``robust_acc_apgd`` or ``robust_acc_autoattack`` with ``attack="apgd"`` (APGD-CE, Croce and
      Hein 2020) or ``attack="autoattack"`` (the standard ensemble, :func:`research.attacks.autoattack`);
    * ``robust_acc``: the worst case per example over every attack run, the figure to report and to
      select checkpoints on (``--monitor val/robust_acc``, Rice et al. 2020). Each single-attack
      figure is an upper bound on it.

    An example counts as robust only if it is correct clean and under the attack (an attacker may
    always submit the clean image, which lies in every ball), as AutoAttack and ``python -m research attack``
    count; so no robust accuracy exceeds ``subset_clean_acc``.

    The subset: ``num_samples`` examples drawn at random (seeded,
    :class:`~research.callbacks._batch.FixedSubset`) from the first validation (test) epoch,
    the sanity check not counted, then kept, so every epoch attacks the same images.
    Under DDP each rank draws ``ceil(num_samples / world_size)`` examples of its own shard and
    the counts are summed over ranks before logging.

    The attacks run on the LightningModule in eval mode (running statistics untouched) under the
    precision plugin's validation (test) autocast. Lightning runs evaluation under
    ``torch.inference_mode`` by default; the attacks leave it (the kept images are cloned outside
    it and the attacks switch inference mode off and gradients on), so the default
    ``Trainer(inference_mode=True)`` works. A model that made a tensor inside inference mode (a
    cache filled by its first forward in ``trainer.validate``, say) cannot be differentiated
    through: the run then stops with a message asking for ``trainer.inference_mode: false``.

    Token inputs (``inputs="tokens"``, or ``"auto"`` on a task with the embedding hooks:
    :class:`~research.tasks.SequenceClassification`, :class:`~research.tasks.MaskedLanguageModelling`,
    :class:`~research.tasks.Translation`): the attack is PGD in embedding space
    (:func:`research.attacks.embedding_pgd`, per-token L2 balls of radius ``eps`` times each token's
    embedding norm, padding and special tokens untouched) on the task's training loss, and the figures are
    ``subset_clean_acc``, ``robust_acc_pgd`` and ``robust_acc`` (accuracy per sequence, or masked-token
    accuracy per selected token), or ``subset_clean_bleu`` and ``robust_bleu`` (Translation: greedy
    translations with the encoder's input embeddings perturbed, BLEU 0-100):
    :mod:`research.callbacks.embedding_evaluation`. The threat model is per-token L2 (``norm="linf"`` is refused),
    FGSM is not run, and ``attack`` must be "pgd".

    Args:
        eps: radius of the threat model: pixel units for images; for token inputs relative to each
            token's embedding norm (0.1: a token may move by a tenth of its embedding's length).
        num_samples: size of the fixed subset.
        attack: the strongest attack to run besides FGSM and PGD: ``"pgd"`` (none), ``"apgd"``
            (APGD-CE, ``apgd_steps`` iterations) or ``"autoattack"`` (the standard ensemble:
            about 400 APGD/FAB steps and 5,000 queries per still-robust example, so use a small
            ``num_samples`` or ``every_n_epochs`` > 1 during training).
        pgd_steps: PGD iterations.
        pgd_step_size: PGD step; default 2.5 * eps / pgd_steps (the robustness library's rule of thumb).
        apgd_steps: APGD iterations (100 in AutoAttack).
        norm: threat model, "linf" (the default for images) or "l2". FGSM is L-inf by definition
            and is only run (and logged) with "linf". Token inputs are always per-token L2: "linf"
            there is refused.
        restarts: random restarts of PGD; an example is robust only if no restart fools it.
        batch_size: examples per attack batch.
        every_n_epochs: attack at the end of every n-th validation epoch (tests always).
        inputs: "images", "tokens", or "auto": tokens when the task has the embedding hooks
            (``embedding_point``, ``perturbable_tokens``, ``adversarial_loss``), images otherwise.
        embeddings: token inputs: perturb the "token" embeddings or the "token+position" sums.

    Raises:
        ValueError: an option out of range; during the run, a task whose batches are not
            (images in [0, 1], integer labels) (images), a task without the embedding hooks or a model
            without the embedding interface (tokens), or a model that needs ``inference_mode: false``.
    """

    owner = OWNER

    def __init__(
        self,
        *,
        eps: float,
        num_samples: int = 1000,
        attack: AttackName = "pgd",
        pgd_steps: int = 10,
        pgd_step_size: float | None = None,
        apgd_steps: int = 100,
        norm: Literal["linf", "l2"] | None = None,
        restarts: int = 1,
        batch_size: int = 256,
        every_n_epochs: int = 1,
        inputs: Inputs = "auto",
        embeddings: Embeddings = "token",
    ) -> None:
        if not eps > 0:
            raise ValueError(f"{OWNER}: eps must be > 0 (pixel units, images in [0, 1]; for token inputs relative "
                             f"to each token's embedding norm), got {eps}")
        if inputs not in ("auto", "images", "tokens"):
            raise ValueError(f"{OWNER}: unknown inputs {inputs!r}; choose 'auto', 'images' or 'tokens'")
        if norm not in (None, "linf", "l2"):
            raise ValueError(f"{OWNER}: unknown norm {norm!r}; choose 'linf' or 'l2'")
        if inputs == "tokens":
            check_token_norm(OWNER, norm)
        if attack not in ("pgd", "apgd", "autoattack"):
            raise ValueError(f"{OWNER}: unknown attack {attack!r}; choose 'pgd', 'apgd' or 'autoattack'")
        check_at_least_one(OWNER, num_samples=num_samples, pgd_steps=pgd_steps, apgd_steps=apgd_steps,
                           restarts=restarts, batch_size=batch_size, every_n_epochs=every_n_epochs)
        if pgd_step_size is not None and not pgd_step_size > 0:
            raise ValueError(f"{OWNER}: pgd_step_size must be > 0, got {pgd_step_size}")
        super().__init__(every_n_epochs=every_n_epochs, rank_zero_only=False)
        self.eps, self.norm, self.restarts, self.attack = eps, norm or "linf", restarts, attack
        self._norm_given = norm
        self.num_samples, self.batch_size = num_samples, batch_size
        self.pgd_steps, self.apgd_steps = pgd_steps, apgd_steps
        self.pgd_step_size = 2.5 * eps / pgd_steps if pgd_step_size is None else pgd_step_size
        self.inputs = inputs
        self.embedding = EmbeddingRobustness(radius=eps, steps=pgd_steps, step_size=pgd_step_size, restarts=restarts,
                                             embeddings=embeddings, batch_size=batch_size, owner=OWNER)
        self._tokens = inputs == "tokens"  # settled in setup for "auto"

    @property
    def names(self) -> list[str]:
        """The attacks run, in order: each is logged as ``robust_acc_<name>``."""
        if self._tokens:
            return ["pgd"]
        return (["fgsm"] if self.norm == "linf" else []) + ["pgd"] + ([self.attack] if self.attack != "pgd" else [])

    def subset_size(self, trainer: L.Trainer) -> int:
        return -(-self.num_samples // trainer.world_size)  # per rank: ceil(num_samples / world_size)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Settle the input kind (tokens: the task has the embedding hooks) and keep subsets of that kind."""
        if self.inputs == "auto":
            self._tokens = has_token_inputs(pl_module)
        if self._tokens:
            check_token_norm(OWNER, self._norm_given)
            if self.attack != "pgd":
                raise ValueError(f"{OWNER}: on token inputs only attack='pgd' (embedding-space PGD) runs, "
                                 f"got attack={self.attack!r}")
            if not has_token_inputs(pl_module):
                raise ValueError(f"{OWNER}: inputs='tokens' needs a text task with the hooks {', '.join(HOOKS)} "
                                 f"(SequenceClassification, MaskedLanguageModelling, Translation); "
                                 f"{type(pl_module).__name__} has none")
            for name in ("val", "test"):
                if not isinstance(self._subsets.get(name), TokenSubset):
                    self._subsets[name] = TokenSubset(count=self.subset_size(trainer), owner=OWNER)
        super().setup(trainer, pl_module, stage)

    def _check_model(self, pl_module: L.LightningModule) -> None:
        if self._tokens:  # before the first epoch: a model without the embedding interface stops here
            self.embedding.check_task(pl_module)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_model(pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_model(pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_model(pl_module)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: Stage) -> None:
        """Attack the kept examples in batches and log the accuracies, counts summed over ranks."""
        if self._tokens:
            self.embedding.evaluate(trainer, pl_module, stage, self._subsets[stage])
            return
        images, labels = self._subsets[stage].tensors()
        images, labels = images.to(pl_module.device), labels.to(pl_module.device)
        plugin = trainer.precision_plugin
        # examples, correct clean, robust to each attack, robust to all of them
        counts = torch.zeros(3 + len(self.names), device=pl_module.device)
        for x, y in zip(images.split(self.batch_size), labels.split(self.batch_size)):
            with plugin.val_step_context() if stage == "val" else plugin.test_step_context():
                clean, robust = self._robust(pl_module, x, y)
            worst = clean & torch.stack(robust).all(0)
            counts += torch.stack([counts.new_tensor(float(len(y))), *(hits.sum().float()
                                                                       for hits in (clean, *robust, worst))])
        counts = trainer.strategy.reduce(counts, reduce_op="sum")  # every rank logs the same numbers
        names = ["subset_clean_acc", *(f"robust_acc_{name}" for name in self.names), "robust_acc"]
        for name, correct in zip(names, counts[1:]):
            pl_module.log(f"{stage}/{name}", correct / counts[0], sync_dist=True)

    def _robust(self, pl_module: L.LightningModule, x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(B,) correct clean, and per attack of :attr:`names` (B,) robust: correct clean and attacked.

        Robust means correct both clean and under the attack (an attacker may always submit the
        clean image, which lies in every ball), as AutoAttack and ``python -m research attack`` count.
        """
        try:
            with torch.no_grad():
                clean = pl_module(x).argmax(-1) == y
            robust = [clean & self._survives(pl_module, name, x, y) for name in self.names]
        except RuntimeError as err:
            if "Inference tensors" not in str(err):
                raise
            raise ValueError(f"{OWNER}: {INFERENCE_MODE_ADVICE}") from err
        return clean, robust

    def _survives(self, pl_module: L.LightningModule, name: str, x: Tensor, y: Tensor) -> Tensor:
        """(B,) whether the prediction on ``name``'s adversarial image is still ``y``."""
        if name == "fgsm":
            x_adv = fgsm(pl_module, x, y, eps=self.eps)
        elif name == "pgd":
            x_adv = pgd(pl_module, x, y, eps=self.eps, step_size=self.pgd_step_size, steps=self.pgd_steps,
                        norm=self.norm, restarts=self.restarts)
        elif name == "apgd":
            x_adv = apgd(pl_module, x, y, eps=self.eps, norm=self.norm, steps=self.apgd_steps)
        else:
            x_adv = autoattack(pl_module, x, y, eps=self.eps, norm=self.norm)
        with torch.no_grad():
            return pl_module(x_adv).argmax(-1) == y
