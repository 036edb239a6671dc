"""Adversarial training for any image or text task, from the YAML alone (``trainer.callbacks``).

Token inputs (``inputs="tokens"``, or ``"auto"`` on a task with token hooks: MaskedLanguageModelling,
SequenceClassification, Translation): ``pgd`` in embedding space and ``freelb`` perturb the input
embeddings instead of the pixels; they live in :mod:`research.callbacks.embedding_training`. The
rest of this docstring is about images.

Five image recipes; ``pgd`` and ``fgsm_rs`` call :func:`research.attacks.pgd`, ``free`` needs no attack
pass, ``trades`` and ``mart`` change the loss as well as the input (their attacks are
:mod:`research.attacks.trades`):

- ``pgd``: Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks"
  (arXiv:1706.06083): train on PGD-k examples from a random start in the eps ball.
- ``fgsm_rs``: Wong, Rice & Kolter 2020, "Fast is better than free: Revisiting adversarial
  training" (arXiv:2001.03994): one signed-gradient step of alpha = 1.25 eps from a uniform
  random start in the eps ball, with the guards against catastrophic overfitting of their
  section 5 (see ``guard_drop`` and ``guard_gap``).
- ``free``: Shafahi et al. 2019, "Adversarial Training for Free!" (arXiv:1904.12843): each
  minibatch is trained on ``replays`` times in a row, and the one backward pass of every step
  gives both the weight gradient and the gradient that moves a perturbation carried from step
  to step (their Algorithm 1).
- ``trades``: Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan 2019, "Theoretically Principled
  Trade-off between Robustness and Accuracy" (ICML 2019, arXiv:1901.08573), eq. 5 and
  Algorithm 1; reference code github.com/yaodongyu/TRADES, ``trades.py``. The task trains on the
  clean batch and the callback adds ``beta * KL(f(x) || f(x_adv))``, x_adv maximising that KL
  (:func:`research.attacks.trades_attack`).
- ``mart``: Wang, Zou, Yi, Bailey, Ma & Gu 2020, "Improving Adversarial Robustness Requires
  Revisiting Misclassified Examples" (ICLR 2020), eq. 7; reference code github.com/YisenWang/MART,
  ``mart.py``. The task trains on x_adv (its cross-entropy is the first term of the boosted
  cross-entropy) and the callback adds the boost ``-log(1 - max_{k != y} p_k(x_adv))`` and
  ``beta * KL(f(x) || f(x_adv)) * (1 - p_y(x))`` (:func:`research.attacks.mart_attack`, :func:`mart_regularizer`).

How the batch reaches the task. Lightning hands the same batch object to
``on_train_batch_start`` and then to ``training_step`` (``loops/training_epoch_loop.py``), so
``pgd``, ``fgsm_rs``, ``free`` and ``mart`` overwrite images of the batch in place and leave the
task's ``training_step`` alone.

How the loss reaches the task (``trades``, ``mart``). A callback cannot change the loss that a
task returns, so for these two recipes the callback wraps the task's ``training_step`` for the
length of the fit: the wrapper is set on the LightningModule instance in ``setup("fit")`` and
removed in ``teardown`` (and on an exception). It calls the task's own ``training_step`` on the
batch, then adds the recipe's term to the loss it returns (a tensor, or a dict's ``"loss"``), in
the same call: the extra forward pass and the task's loss are one graph, so DDP's reducer sees
one forward and one backward per step, as with any task. Any image task whose ``training_step``
returns its loss works, with its own loss (label smoothing and all). The task's logits of the
batch are reused when its ``training_step`` calls its own ``forward`` on the batch's images (as
:class:`~research.tasks.ImageClassification` does, seen through a forward hook); otherwise the
wrapper runs that forward itself. ARCHITECTURE.md asks for a loss hook in the task; this wrapper
is that hook without editing every task.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from research.attacks import attack_mode, mart_attack, pgd, trades_attack
from research.callbacks._batch import check_image_batch
from research.callbacks.embedding_training import (
    EmbeddingTraining,
    Objective,
    check_token_options,
    check_token_task,
    token_training,
)

log = logging.getLogger(__name__)

AttackName = Literal["pgd", "fgsm_rs", "free", "trades", "mart", "freelb"]
InputKind = Literal["auto", "images", "tokens"]
OWNER = "AdversarialTraining"
_LOSS_RECIPES = ("trades", "mart")  # the recipes that wrap the task's training_step


# -- the outer losses ------------------------------------------------------------------------


def trades_kl(clean_logits: Tensor, adv_logits: Tensor) -> Tensor:
    """TRADES' robust term: ``sum_i KL(f(x_i) || f(x'_i)) / B`` (their ``(1.0 / batch_size) * criterion_kl(...)``).

    The gradient flows through both logits, as in the reference (its KL target is not detached).

    Args:
        clean_logits: (B, num_classes) logits of the clean images.
        adv_logits: (B, num_classes) logits of the adversarial images.

    Returns:
        A float32 scalar.
    """
    log_p_clean = F.log_softmax(clean_logits.float(), dim=-1)
    log_p_adv = F.log_softmax(adv_logits.float(), dim=-1)
    return F.kl_div(log_p_adv, log_p_clean, log_target=True, reduction="sum") / len(clean_logits)


def mart_regularizer(clean_logits: Tensor, adv_logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """MART's terms beyond the cross-entropy at x_adv (Wang et al. eq. 7 and ``mart.py``).

    - boost: ``mean_i -log(1.0001 - max_{k != y_i} p_k(x'_i))``, the second half of their
      boosted cross-entropy (BCE), which pushes down the most likely wrong class;
    - weighted KL: ``sum_i KL(f(x_i) || f(x'_i)) * (1.0000001 - p_{y_i}(x_i)) / B``, the KL of
      TRADES weighted towards misclassified examples.

    The constants 1.0001, 1e-12 and 1.0000001 are the reference's (they keep the logs finite);
    the weight ``1 - p_y(x)`` is not detached, as in the reference.

    Args:
        clean_logits: (B, num_classes) logits of the clean images.
        adv_logits: (B, num_classes) logits of the adversarial images.
        y: (B,) labels.

    Returns:
        (boost, weighted KL), float32 scalars.
    """
    adv_probs = F.softmax(adv_logits.float(), dim=-1)
    top2 = adv_probs.topk(2, dim=-1).indices  # the reference's argsort(...)[:, -2:]
    wrong = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])  # the most likely class other than y
    boost = F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), wrong)
    clean_probs = F.softmax(clean_logits.float(), dim=-1)
    true_probs = clean_probs.gather(-1, y[:, None]).squeeze(-1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), clean_probs, reduction="none").sum(-1)
    return boost, (kl * (1.0000001 - true_probs)).sum() / len(y)


# -- the training_step wrapper ---------------------------------------------------------------


@dataclass
class _Views:
    """What ``on_train_batch_start`` prepared for the wrapped ``training_step`` of this batch.

    ``images`` is the batch's own image tensor (what the task trains on); ``other`` is the view
    the recipe adds (TRADES: x_adv, the task trains on the clean batch; MART: the clean images,
    the task trains on x_adv), or None when eps is 0 (warm-up) and there is no other view.
    """

    images: Tensor
    labels: Tensor
    other: Tensor | None


class _BatchLogits:
    """The logits of the task's own forward on the batch's images, seen by a forward hook during its step.

    Only a differentiable output of a forward whose input is the very image tensor of the batch,
    unmodified since, is taken: a task that mixes, crops or re-normalises its input first gets
    its logits computed by the wrapper instead.
    """

    def __init__(self, module: nn.Module, images: Tensor):
        self.images, self.version, self.logits = images, images._version, None
        self._handle = module.register_forward_hook(self._record)

    def _record(self, module: nn.Module, args: tuple, output: Any) -> None:
        if (
            self.logits is None
            and args
            and args[0] is self.images
            and self.images._version == self.version
            and isinstance(output, Tensor)
            and output.requires_grad
            and output.shape[:1] == self.images.shape[:1]
        ):
            self.logits = output

    def close(self) -> None:
        self._handle.remove()


class AdversarialTraining(Callback):
    """Train on adversarial examples of the current model: (part of) every batch replaced, or a loss term added.

    The attack is on the LightningModule itself (its ``forward`` maps images in [0, 1] to
    logits, normalisation included), so ``eps`` is in pixel units. ``pgd``, ``fgsm_rs`` and
    ``free`` maximise the cross-entropy, ``mart`` too, ``trades`` the KL divergence from the clean
    prediction. Under DDP each rank attacks its own shard through the unwrapped module, and
    gradients are taken with respect to the input only (``torch.autograd.grad``), so DDP's
    gradient reducer never sees the attack.

    Mixed precision: the hook runs outside the autocast that the strategy opens around
    ``training_step``, so the attack is wrapped in ``trainer.precision_plugin.train_step_context()``
    and runs under the same autocast as the training step.

    Eval mode (default ``attack_in_eval_mode=True``, as in Madry et al.'s, Zhang et al.'s and
    Wang et al.'s code): the attack's forward passes use BatchNorm's running statistics, with
    dropout off; the training step that follows runs in train mode as usual. With ``False`` the
    attack sees the model as the training step does (batch statistics, dropout on), as in Wong et
    al.'s code. Either way the attack never moves BatchNorm's running statistics. ``free`` has no
    separate attack pass (its gradient comes from the training step's own backward), so this
    flag does not apply to it.

    TRADES and MART (``attack="trades"`` / ``"mart"``): the loss that is minimised is

    - trades: ``task_loss(x) + beta * KL(f(x) || f(x_adv))``, the KL summed and divided by the batch
      size (:func:`trades_kl`), x_adv from :func:`trades_attack`. For a cross-entropy task this is
      Zhang et al.'s ``CE(f(x), y) + beta * KL``. The task's step sees the clean batch.
    - mart: ``task_loss(x_adv) + boost + beta * weighted KL`` (:func:`mart_regularizer`), x_adv
      from :func:`mart_attack`. For a cross-entropy task ``task_loss(x_adv) + boost`` is Wang et
      al.'s BCE. The task's step sees x_adv, written into the batch in place.

    Both forward the other view (x_adv, or the clean images) in train mode inside the task's
    step, as the references do, so BatchNorm's running statistics see both clean and adversarial
    batches (beta = 0 therefore gives the parameters of clean training, not its running
    statistics). Logged every step: ``train/trades_kl`` and ``train/trades_loss`` (the total),
    or ``train/mart_boost``, ``train/mart_kl`` (weighted) and ``train/mart_loss``. A task that
    changes the batch's images in place (mixup, cutmix) stops with an error: its images would no
    longer match their adversarial views.

    Catastrophic-overfitting guards (``fgsm_rs`` only; Wong et al. 2020 section 5). After the
    last batch of every epoch the epoch's first training batch (a copy taken before its step) is
    attacked at full eps by PGD-5 (step eps/4 from a random start, as in their ``--early-stop``
    code) and by FGSM (one step of eps from x), in eval mode (our choice, so the check moves no
    statistics). An example counts as robust when its clean and its attacked prediction are both
    right. Logged as ``train/guard_pgd_acc`` and ``train/guard_fgsm_acc``; under DDP the counts
    are summed over ranks, so every rank takes the same decision. Two rules:

    - drop (``guard_drop``, Wong et al.'s rule): if the PGD accuracy falls by more than
      ``guard_drop`` from the previous check, the weights of the previous check are restored and
      training stops. The check runs before the epoch's validation, so validation and
      checkpoints see the restored weights.
    - gap (``guard_gap``): if FGSM accuracy exceeds PGD accuracy by more than ``guard_gap``, the
      model resists the single step it trains on but not an iterated attack: it has not become
      robust, only hard to attack by one step, and it usually stays so (the failure of Wong et
      al.'s Figure 2 and of our first MNIST FGSM-RS recipe: PGD readings 0.34, 0.48, 0.46, 0.42 never
      dropped). Training stops with a warning that says what to change; no weights are restored
      (there is no robust state to go back to). The rule waits until ``warmup_epochs`` are over:
      before that the model has not been trained at the eps it is checked at.

    Why the epoch's first training batch and not a validation batch: it needs no validation
    loader (``limit_val_batches: 0`` runs have none, and ordered splits such as the embedded
    digits give a one-class first batch), its examples were last stepped on a whole epoch of
    updates ago, and the gap it reads is the validation gap. Measured on the Wong et al. recipes
    of configs/reproduce (10 epochs, cyclic learning rate, as of this change), FGSM minus PGD-5
    accuracy after each epoch on 500 validation digits: PGD-7 training 0.06, 0.09, 0.08, 0.04,
    0.02, 0.02, 0.01, 0.01, 0.01, 0.01 (PGD-20 accuracy 0.90 at the end); FGSM-RS 0.22, 0.46,
    0.49, 0.38, 0.39, 0.42, 0.70, 0.73, 0.80, 0.80 (its PGD-20 accuracy never passed 0.23 and
    ended at 0.03), and on the guard's training batch of 100 within 0.11 of that from epoch 1 on.
    The drop rule would never have fired on that run (its PGD-5 readings from epoch 4: 0.45,
    0.38, 0.21, 0.17, 0.13, 0.09, a slide, never a fall of 0.2); the gap rule stops it after
    epoch 1 (FGSM 0.76, PGD 0.28). Hence ``guard_gap=0.3``.

    Logged every step: ``train/attack_eps``, the eps in force (see ``warmup_epochs``).

    Token inputs (see :mod:`research.callbacks.embedding_training`): ``attack="pgd"`` is PGD in
    embedding space, ``eps`` the radius relative to each token's embedding norm; ``attack="freelb"``
    is FreeLB, ``eps`` the Frobenius radius of each sequence's perturbation. ``norm``, ``fraction``,
    ``replays``, ``beta`` and the guards are image options. Logged every step on tokens:
    ``train/perturbed_tokens``, the share of token positions that may move (not padding, not a
    special token), and ``train/delta_norm``, the mean L2 norm of a perturbable token's
    perturbation in embedding units (not relative: pgd bounds it per token by ``eps`` times that
    token's embedding norm, freelb bounds each sequence's Frobenius norm by ``eps``; FreeLB's random
    start is of magnitude ``init_eps`` and, as in the reference, not projected, so with ``steps=1``
    it is what trains).

    Args:
        attack: "pgd", "fgsm_rs", "free", "trades" or "mart" on images; "pgd" or "freelb" on tokens.
        eps: radius of the threat model: in pixel units for images (e.g. 0.3 for MNIST, 8/255 for
            CIFAR-10); for tokens, relative to each token's embedding norm (pgd, e.g. 0.1) or the
            Frobenius norm of a sequence's perturbation (freelb, the reference's ``adv_max_norm``).
        step_size: attack step; default 2.5 * eps / steps for pgd, trades and mart (the rule of
            thumb of Madry's lab, robustness library, Engstrom et al. 2019; Zhang et al. use 0.007
            at eps 0.031, 10 steps, on CIFAR-10), 1.25 * eps for fgsm_rs (Wong et al. FGSM with
            random initialisation), eps for free (Shafahi et al. Algorithm 1); for tokens, in eps's
            units: 2.5 * eps / steps for pgd and freelb (FreeLB's ``adv_lr`` has no default; its
            scripts set it per task).
        steps: attack iterations; required for pgd, trades, mart and freelb (K, its ascent passes),
            not accepted by the others (fgsm_rs takes one step; free takes one step per replay).
        norm: images: "linf" (the default) or "l2"; free is defined for "linf" only. Token attacks
            are L2 (per token for pgd, per sequence for freelb): "linf" there is refused.
        fraction: share of each batch replaced, in (0, 1]: the first ``round(fraction * B)``
            images (the loader shuffles, so these are a random subset); the rest stay clean.
            trades and mart attack the whole batch (their losses are defined so).
        warmup_epochs: eps (and the step with it) rises linearly from 0 to ``eps`` over this
            many epochs, updated every step; 0 attacks at full eps from the start.
        attack_in_eval_mode: run the attack in eval mode (see above).
        replays: free only, required there: how many steps each minibatch is trained on
            (Shafahi et al.'s m).
        beta: trades and mart only: weight of the KL term (default 6.0: Zhang et al.'s 1/lambda
            on CIFAR-10 and the default of Wang et al.'s ``mart_loss``; their train_trades_mnist.py
            uses 1.0, MART's train_resnet.py 5.0). 0 trains on the task's own loss alone (trades:
            clean training, bit for bit).
        guard_drop: fgsm_rs only (the other recipes ignore it): the drop in PGD accuracy, in [0, 1],
            that stops training (Wong et al. use 0.2); None switches the rule off. A resumed run
            starts its comparisons afresh.
        guard_gap: fgsm_rs only (the other recipes ignore it): the FGSM-minus-PGD accuracy, in
            [0, 1], above which training stops (0.3: the gaps measured above are at most 0.09 for
            PGD-7 training and at least 0.38 for the failing FGSM-RS run after its first epoch);
            None switches the rule off.
        inputs: "images", "tokens", or "auto": tokens when the task has the token hooks
            (``embedding_point``, ``perturbable_tokens``, ``adversarial_loss``), images otherwise.
        embeddings: tokens only: perturb the "token" embeddings (after any scaling) or the
            "token+position" sums before LayerNorm/dropout (models with positions only).
        init_eps: freelb only: magnitude of the random start at full eps (the reference's
            ``adv_init_mag``; default eps; 0 starts from zero).
        objective: tokens, pgd only: "adversarial" (Madry et al.: train on the perturbed batch,
            the default) or "clean+adversarial" (Miyato et al.: clean loss + adversarial loss).

    Raises:
        ValueError: an option out of range or one that the chosen attack does not take; at the
            first batch, a task whose batches are not (images in [0, 1], integer labels); for
            trades and mart, a task with manual optimisation (at setup), or one whose
            training_step returns no loss or changes the batch's images in place; for tokens (at
            setup or fit start) a task without token inputs, a model without the EmbeddingInputs
            interface, "token+position" on a model without positions, an image-only recipe.
    """

    def __init__(
        self,
        *,
        attack: AttackName = "pgd",
        eps: float,
        step_size: float | None = None,
        steps: int | None = None,
        norm: Literal["linf", "l2"] | None = None,
        fraction: float = 1.0,
        warmup_epochs: float = 0.0,
        attack_in_eval_mode: bool = True,
        replays: int | None = None,
        beta: float | None = None,
        guard_drop: float | None = 0.2,
        guard_gap: float | None = 0.3,
        inputs: InputKind = "auto",
        embeddings: Literal["token", "token+position"] = "token",
        init_eps: float | None = None,
        objective: Objective | None = None,
    ) -> None:
        if attack not in ("pgd", "fgsm_rs", "free", "trades", "mart", "freelb"):
            raise ValueError(
                f"{OWNER}: unknown attack {attack!r}; choose 'pgd', 'fgsm_rs', 'free', 'trades' or 'mart' (images), "
                "'pgd' or 'freelb' (tokens)"
            )
        if not eps > 0:
            raise ValueError(f"{OWNER}: eps must be > 0 (pixel units for images; for tokens a radius relative to the "
                             f"embedding norm (pgd) or a Frobenius norm (freelb)), got {eps}")
        check_token_options(OWNER, attack, inputs, embeddings, init_eps, objective, fraction, norm)
        if norm not in (None, "linf", "l2"):
            raise ValueError(f"{OWNER}: unknown norm {norm!r}; choose 'linf' or 'l2'")
        iterative = attack in ("pgd", "freelb", *_LOSS_RECIPES)
        if iterative and (steps is None or steps < 1):
            example = {"pgd": "Madry et al.: 7 on CIFAR-10", "trades": "Zhang et al.: 10 on CIFAR-10, 40 on MNIST",
                       "mart": "Wang et al.: 10 on CIFAR-10", "freelb": "Zhu et al.: K = 2 or 3 on GLUE"}[attack]
            raise ValueError(f"{OWNER}: attack={attack!r} needs steps >= 1 ({example}), got {steps}")
        if not iterative and steps is not None:
            raise ValueError(
                f"{OWNER}: attack={attack!r} takes no steps (fgsm_rs takes one; free one per replay); remove steps"
            )
        if attack == "free" and (replays is None or replays < 1):
            raise ValueError(f"{OWNER}: attack='free' needs replays >= 1 (Shafahi et al. use 8 on CIFAR-10)")
        if attack != "free" and replays is not None:
            raise ValueError(f"{OWNER}: replays is an option of attack='free' only; remove it for {attack!r}")
        if attack == "free" and norm == "l2":
            raise ValueError(f"{OWNER}: attack='free' is defined for norm='linf' only (Shafahi et al.)")
        if attack not in _LOSS_RECIPES and beta is not None:
            raise ValueError(f"{OWNER}: beta is an option of attack='trades' or 'mart' only; remove it for {attack!r}")
        if beta is not None and not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"{OWNER}: beta must be a finite number >= 0 (Zhang et al.: 1 to 6), got {beta}")
        if step_size is not None and not step_size > 0:
            raise ValueError(f"{OWNER}: step_size must be > 0, got {step_size}")
        if not 0 < fraction <= 1:
            raise ValueError(f"{OWNER}: fraction must lie in (0, 1], got {fraction}")
        if attack in _LOSS_RECIPES and fraction != 1:
            raise ValueError(f"{OWNER}: attack={attack!r} attacks the whole batch (its loss is defined so); "
                             "remove fraction")
        if warmup_epochs < 0:
            raise ValueError(f"{OWNER}: warmup_epochs must be >= 0, got {warmup_epochs}")
        if guard_drop is not None and not 0 <= guard_drop <= 1:
            raise ValueError(f"{OWNER}: guard_drop must lie in [0, 1] (or be None), got {guard_drop}")
        if guard_gap is not None and not 0 <= guard_gap <= 1:
            raise ValueError(f"{OWNER}: guard_gap must lie in [0, 1] (or be None), got {guard_gap}")
        if step_size is None:
            step_size = 1.25 * eps if attack == "fgsm_rs" else eps if attack == "free" else 2.5 * eps / steps
        self.attack, self.eps, self.step_size, self.steps = attack, eps, step_size, steps
        self.norm, self.norm_given = norm or "linf", norm  # tokens refuse an explicit "linf"
        self.fraction, self.warmup_epochs, self.attack_in_eval_mode = fraction, warmup_epochs, attack_in_eval_mode
        self.replays = replays
        self.beta = (6.0 if beta is None else float(beta)) if attack in _LOSS_RECIPES else None
        self.guard_drop = guard_drop if attack == "fgsm_rs" else None
        self.guard_gap = guard_gap if attack == "fgsm_rs" else None
        self.inputs, self.embeddings, self.objective = inputs, embeddings, objective
        self.init_eps = (eps if init_eps is None else init_eps) if attack == "freelb" else None
        self.tokens: EmbeddingTraining | None = None  # the token side, once setup has decided the input kind

        self._checked_batches = False  # the first batch is checked, the others have its form
        self._guard_batch: tuple[Tensor, Tensor] | None = None
        self._guard_prev_acc: float | None = None
        self._guard_state: dict[str, Tensor] | None = None
        self._guard_epoch = -1  # the last epoch whose check has run
        # free: the minibatch being replayed, how often it has been, and the carried perturbation
        self._held: tuple[Tensor, Tensor] | None = None
        self._replayed = 0
        self._delta: Tensor | None = None
        self._delta_leaf: Tensor | None = None
        self._step_eps = eps
        # trades and mart: the views prepared for the wrapped training_step, and the module wrapped
        self._views: _Views | None = None
        self._wrapped: L.LightningModule | None = None

    # -- token inputs (research/callbacks/embedding_training.py) -----------------------------

    def _decide_inputs(self, pl_module: L.LightningModule) -> None:
        """Choose images or tokens for this task (``inputs``), and stop on a recipe that does not fit it."""
        self.tokens = token_training(OWNER, self, pl_module)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.tokens is not None:  # the model exists now (configure_model): check its interface before step 1
            check_token_task(OWNER, pl_module, self.attack, include_position=self.tokens.include_position)

    # -- schedule ---------------------------------------------------------------------------

    def eps_at(self, epochs: float) -> float:
        """The eps in force after ``epochs`` (fractional) epochs of training: the linear warm-up."""
        if self.warmup_epochs == 0:
            return self.eps
        return self.eps * min(1.0, epochs / self.warmup_epochs)

    def _progress(self, trainer: L.Trainer, batch_idx: int) -> float:
        batches = trainer.num_training_batches
        within = batch_idx / batches if math.isfinite(batches) and batches > 0 else 0.0
        return trainer.current_epoch + within

    def _split(self, x: Tensor) -> int:
        return round(self.fraction * len(x))

    # -- the attack --------------------------------------------------------------------------

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.tokens is not None:  # the attack runs in the wrapped training_step
            eps = self.eps_at(self._progress(trainer, batch_idx))
            self._step_eps = eps
            size = len(pl_module.perturbable_tokens(batch))
            pl_module.log("train/attack_eps", eps, on_step=True, on_epoch=False, batch_size=size)
            return
        if not self._checked_batches:
            check_image_batch(batch, owner=OWNER)
            self._checked_batches = True
        x, y = batch[0], batch[1]
        if self.guard_drop is not None or self.guard_gap is not None:
            if batch_idx == 0:
                self._guard_batch = (x.detach().clone(), y.detach().clone())
        eps = self.eps_at(self._progress(trainer, batch_idx))
        self._step_eps = eps
        pl_module.log("train/attack_eps", eps, on_step=True, on_epoch=False, batch_size=len(y))
        if self.attack == "free":
            self._free_replace(x, y, eps)
            return
        if self.attack in _LOSS_RECIPES:
            self._prepare_views(trainer, pl_module, x, y, eps)
            return
        k = self._split(x)
        if eps == 0 or k == 0:
            return
        step_size = self.step_size * eps / self.eps
        steps = self.steps if self.attack == "pgd" else 1
        # Outside the precision context of training_step (strategies/strategy.py): open the same one.
        with trainer.precision_plugin.train_step_context():
            x_adv = pgd(
                pl_module,
                x[:k],
                y[:k],
                eps=eps,
                step_size=step_size,
                steps=steps,
                norm=self.norm,
                random_start=True,
                eval_mode=self.attack_in_eval_mode,
            )
        with torch.no_grad():
            x[:k].copy_(x_adv)

    # -- free adversarial training (Shafahi et al. 2019, Algorithm 1) ------------------------

    def _free_replace(self, x: Tensor, y: Tensor, eps: float) -> None:
        """Replay the held minibatch; put x + delta into the batch, delta a leaf that the step's backward reaches.

        The replay lives in the callback, not in the loader: a new minibatch is taken from the
        loader every ``replays`` steps, and the loader's batches in between are overwritten in
        place by the held one. An epoch therefore costs as many steps as a clean epoch and
        trains on a random 1/replays of the data, each minibatch ``replays`` times: Shafahi et
        al.'s budget of "epochs / m" passes, each replayed m times, spread over the epochs.
        """
        if self._held is None or self._replayed == self.replays or self._held[0].shape != x.shape:
            self._held = (x.detach().clone(), y.detach().clone())
            self._replayed = 0
        else:
            with torch.no_grad():
                x.copy_(self._held[0])
                y.copy_(self._held[1])
        self._replayed += 1
        k = self._split(x)
        if eps == 0 or k == 0:
            self._delta_leaf = None
            return
        clean = self._held[0][:k]
        if self._delta is None or self._delta.shape != clean.shape:
            self._delta = torch.zeros_like(clean, dtype=torch.float32)  # Algorithm 1 starts from delta = 0
        self._delta_leaf = self._delta.clamp(-eps, eps).requires_grad_(True)
        with torch.enable_grad():
            # An in-place copy into the batch records the graph, so the training step's backward fills
            # the leaf's .grad; the task still receives the very tensor the loader made.
            x[:k].copy_((clean + self._delta_leaf).clamp(0, 1))

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        leaf, self._delta_leaf = self._delta_leaf, None
        if leaf is None or leaf.grad is None:
            return
        eps = self._step_eps
        step = self.step_size * eps / self.eps
        # sign() ignores the loss scale of fp16 training, so no unscaling is needed; a step the
        # scaler skips for inf/NaN gradients leaves delta where it was instead of poisoning it.
        direction = leaf.grad.sign().nan_to_num_(0.0)
        self._delta = (leaf.detach() + step * direction).clamp(-eps, eps)

    # -- TRADES and MART: the attack here, the loss in the wrapped training_step -------------

    def _prepare_views(self, trainer: L.Trainer, pl_module: L.LightningModule, x: Tensor, y: Tensor,
                       eps: float) -> None:
        if eps == 0:  # warm-up: no perturbation, no second view
            self._views = _Views(images=x, labels=y, other=None)
            return
        kwargs = dict(eps=eps, step_size=self.step_size * eps / self.eps, steps=self.steps, norm=self.norm,
                      eval_mode=self.attack_in_eval_mode)
        with trainer.precision_plugin.train_step_context():  # as for pgd: the step's autocast
            if self.attack == "trades":
                x_adv = trades_attack(pl_module, x, **kwargs)
            else:
                x_adv = mart_attack(pl_module, x, y, **kwargs)
        if self.attack == "trades":
            self._views = _Views(images=x, labels=y, other=x_adv)
        else:
            clean = x.detach().clone()
            with torch.no_grad():
                x.copy_(x_adv)  # MART's task loss is its cross-entropy at x_adv
            self._views = _Views(images=x, labels=y, other=clean)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._decide_inputs(pl_module)
        if self.attack not in _LOSS_RECIPES and self.tokens is None:
            return
        if not pl_module.automatic_optimization:
            raise ValueError(
                f"{OWNER}: attack={self.attack!r} adds a term to the loss that training_step returns, but "
                f"{type(pl_module).__name__} optimises manually (automatic_optimization = False); use attack='pgd'"
                if self.tokens is None else
                f"{OWNER}: attack={self.attack!r} on tokens runs inside training_step, but {type(pl_module).__name__} "
                "optimises manually (automatic_optimization = False); token recipes need automatic optimisation"
            )
        if "training_step" in vars(pl_module):
            raise ValueError(
                f"{OWNER}: {type(pl_module).__name__}.training_step is already replaced on the instance (another "
                f"AdversarialTraining with a loss or token recipe?); use one such AdversarialTraining callback per run"
            )
        step = pl_module.training_step  # the task's own, bound

        @functools.wraps(step)  # __wrapped__: Lightning still sees the task's training_step as overridden
        def training_step(batch: Any, *args: Any, **kwargs: Any) -> Any:
            return self._training_step(step, pl_module, batch, *args, **kwargs)

        pl_module.training_step = training_step
        self._wrapped = pl_module

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._unwrap()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._unwrap()  # Lightning calls no teardown after an exception

    def _unwrap(self) -> None:
        module, self._wrapped, self._views = self._wrapped, None, None
        if module is not None and "training_step" in vars(module):
            del module.training_step

    def _training_step(self, step: Callable, pl_module: L.LightningModule, batch: Any, *args: Any,
                       **kwargs: Any) -> Any:
        """The task's training_step on the batch, plus the recipe's term, in one call (one graph for DDP)."""
        if self.tokens is not None:
            return self.tokens.training_step(step, pl_module, batch, self._step_eps, *args, **kwargs)
        views, self._views = self._views, None
        x = batch[0] if isinstance(batch, list | tuple) and batch else None
        if views is None or views.images is not x:
            raise RuntimeError(
                f"{OWNER}: training_step was called on a batch that on_train_batch_start did not prepare; "
                f"attack={self.attack!r} works only in Trainer.fit's training loop"
            )
        seen = _BatchLogits(pl_module, x)
        try:
            out = step(batch, *args, **kwargs)
        finally:
            seen.close()
        if x._version != seen.version:
            # e.g. mixup/cutmix in place: the adversarial view no longer belongs to the images trained on
            raise ValueError(
                f"{OWNER}: attack={self.attack!r} pairs each image with its adversarial view, but "
                f"{type(pl_module).__name__}.training_step changes the batch's images in place (mixup or cutmix?); "
                "switch that off, or use attack='pgd'"
            )
        if out is None:  # the task skipped this batch
            return out
        loss = out.get("loss") if isinstance(out, dict) else out
        if not isinstance(loss, Tensor):
            raise ValueError(
                f"{OWNER}: attack={self.attack!r} needs a training_step that returns its loss (a tensor, or a dict "
                f"with 'loss'); {type(pl_module).__name__}.training_step returned {type(out).__name__}"
            )
        extra = self._recipe_loss(pl_module, views, seen.logits)
        total = loss + extra.to(loss.dtype)
        pl_module.log(f"train/{self.attack}_loss", total.detach(), batch_size=len(views.labels))
        return {**out, "loss": total} if isinstance(out, dict) else total

    def _recipe_loss(self, pl_module: L.LightningModule, views: _Views, batch_logits: Tensor | None) -> Tensor:
        if batch_logits is None:
            batch_logits = pl_module(views.images)  # the task did not forward the batch's images itself
        other_logits = batch_logits if views.other is None else pl_module(views.other)
        b = len(views.labels)
        if self.attack == "trades":  # the batch is clean, the other view adversarial
            kl = trades_kl(batch_logits, other_logits)
            pl_module.log("train/trades_kl", kl.detach(), batch_size=b)
            return self.beta * kl
        boost, kl = mart_regularizer(other_logits, batch_logits, views.labels)  # the batch is x_adv
        pl_module.log("train/mart_boost", boost.detach(), batch_size=b)
        pl_module.log("train/mart_kl", kl.detach(), batch_size=b)
        return boost + self.beta * kl

    # -- catastrophic-overfitting guards (Wong et al. 2020, section 5) -----------------------

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx + 1 == trainer.num_training_batches:
            self._guard_check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._guard_check(trainer, pl_module)  # loaders without a length; a no-op if it ran already

    def _guard_readings(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[float, float]:
        """(PGD-5 accuracy, FGSM accuracy) on the guard batch at full eps, counts summed over ranks."""
        x, y = self._guard_batch
        with trainer.precision_plugin.train_step_context():
            x_pgd = pgd(pl_module, x, y, eps=self.eps, step_size=self.eps / 4, steps=5, norm=self.norm)
            # FGSM: one step of eps from x itself (Goodfellow et al.; for L2 along the normalised gradient)
            x_fgsm = pgd(pl_module, x, y, eps=self.eps, step_size=self.eps, steps=1, norm=self.norm,
                         random_start=False)
            with torch.no_grad(), attack_mode(pl_module):
                clean_ok = pl_module(x).argmax(-1) == y
                pgd_ok = (pl_module(x_pgd).argmax(-1) == y) & clean_ok
                fgsm_ok = (pl_module(x_fgsm).argmax(-1) == y) & clean_ok
        counts = torch.stack([pgd_ok.sum(), fgsm_ok.sum(), pgd_ok.new_tensor(len(y), dtype=torch.long)]).float()
        counts = trainer.strategy.reduce(counts, reduce_op="sum")  # every rank sees the same accuracies
        return (counts[0] / counts[2]).item(), (counts[1] / counts[2]).item()

    def _guard_check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._guard_batch is None or self._guard_epoch == trainer.current_epoch:
            return
        self._guard_epoch = trainer.current_epoch
        acc, fgsm_acc = self._guard_readings(trainer, pl_module)
        b = len(self._guard_batch[1])
        pl_module.log("train/guard_pgd_acc", acc, on_step=False, on_epoch=True, batch_size=b, sync_dist=True)
        pl_module.log("train/guard_fgsm_acc", fgsm_acc, on_step=False, on_epoch=True, batch_size=b, sync_dist=True)
        # _guard_prev_acc is kept only when guard_drop is set
        if self._guard_prev_acc is not None and self._guard_prev_acc - acc > self.guard_drop:
            log.warning(
                "%s: PGD accuracy on a training batch fell from %.3f to %.3f (more than guard_drop=%.2f): "
                "catastrophic overfitting (Wong et al. 2020). Restored the weights of the previous epoch "
                "and stopped training.",
                OWNER,
                self._guard_prev_acc,
                acc,
                self.guard_drop,
            )
            pl_module.load_state_dict(self._guard_state)
            trainer.should_stop = True
            return
        warmed_up = trainer.current_epoch + 1 >= self.warmup_epochs
        if self.guard_gap is not None and warmed_up and fgsm_acc - acc > self.guard_gap:
            log.warning(
                "%s: at epoch %d, FGSM accuracy %.3f but PGD accuracy %.3f on a training batch (gap %.3f, more "
                "than guard_gap=%.2f): the model resists the single step it trains on but not an iterated attack, "
                "so it is not robust (Wong et al. 2020, section 5). Stopped training; the weights are those of "
                "this epoch. To fix: a cyclic learning rate (Wong et al.), a smaller step_size (they use 1.25 eps; "
                "larger overfits), keep the random start (a zero start is worse), or train with attack='pgd'.",
                OWNER,
                trainer.current_epoch,
                fgsm_acc,
                acc,
                fgsm_acc - acc,
                self.guard_gap,
            )
            trainer.should_stop = True
            return
        if self.guard_drop is not None:
            self._guard_prev_acc = acc
            self._guard_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
