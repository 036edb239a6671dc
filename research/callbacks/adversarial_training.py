"""Adversarial training for any image task, from the YAML alone (``trainer.callbacks``).

Three recipes; ``pgd`` and ``fgsm_rs`` call :func:`research.attacks.pgd`, ``free`` needs no attack pass:

- ``pgd``: Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks"
  (arXiv:1706.06083): train on PGD-k examples from a random start in the eps ball.
- ``fgsm_rs``: Wong, Rice & Kolter 2020, "Fast is better than free: Revisiting adversarial
  training" (arXiv:2001.03994): one signed-gradient step of alpha = 1.25 eps from a uniform
  random start in the eps ball, with the early stop against catastrophic overfitting of their
  section 5.1 and code (see ``guard_drop``).
- ``free``: Shafahi et al. 2019, "Adversarial Training for Free!" (arXiv:1904.12843): each
  minibatch is trained on ``replays`` times in a row, and the one backward pass of every step
  gives both the weight gradient and the gradient that moves a perturbation carried from step
  to step (their Algorithm 1).

The task's ``training_step`` is not touched. Lightning hands the same batch object to
``on_train_batch_start`` and then to ``training_step`` (``loops/training_epoch_loop.py``), so
the callback overwrites the first ``round(fraction * B)`` images of the batch in place.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from research.attacks import attack_mode, pgd
from research.callbacks._batch import image_batch

log = logging.getLogger(__name__)

AttackName = Literal["pgd", "fgsm_rs", "free"]
OWNER = "AdversarialTraining"


class AdversarialTraining(Callback):
    """Replace (part of) every training batch with adversarial examples of the current model.

    The attack is on the LightningModule itself (its ``forward`` maps images in [0, 1] to
    logits, normalisation included), with the cross-entropy loss, so ``eps`` is in pixel units.
    Under DDP each rank attacks its own shard through the unwrapped module, and gradients are
    taken with respect to the input only (``torch.autograd.grad``), so DDP's gradient reducer
    never sees the attack.

    Mixed precision: the hook runs outside the autocast that the strategy opens around
    ``training_step``, so the attack is wrapped in ``trainer.precision_plugin.train_step_context()``
    and runs under the same autocast as the training step.

    Eval mode (default ``attack_in_eval_mode=True``, as in Madry et al.'s code): the attack's
    forward passes use BatchNorm's running statistics, with dropout off; the training step that
    follows runs in train mode as usual. With ``False`` the attack sees the model as the training
    step does (batch statistics, dropout on), as in Wong et al.'s code. Either way the attack
    never moves BatchNorm's running statistics (:func:`research.attacks.pgd` restores them).
    ``free`` has no separate attack pass (its gradient comes from the training step's own
    backward), so this flag does not apply to it.

    Catastrophic-overfitting guard (``guard_drop``, Wong et al. 2020 section 5.1 and their
    ``--early-stop``): after the last batch of every epoch, PGD-5 (step eps/4, full eps, as in
    their code; in eval mode, our choice, so the check moves no statistics) attacks the epoch's
    first training batch. If that robust accuracy falls by more than
    ``guard_drop`` from the previous check, the weights of the previous check are restored,
    the drop is logged and training stops. The check runs before the epoch's validation, so
    validation and checkpoints see the restored weights. Under DDP the accuracy is summed over
    ranks, so every rank takes the same decision. It is logged as ``train/guard_pgd_acc``.

    Logged every step: ``train/attack_eps``, the eps in force (see ``warmup_epochs``).

    Args:
        attack: "pgd", "fgsm_rs" or "free".
        eps: radius of the threat model in pixel units (e.g. 0.3 for MNIST, 8/255 for CIFAR-10).
        step_size: attack step; default 2.5 * eps / steps for pgd (the rule of thumb of Madry's
            lab, robustness library, Engstrom et al. 2019), 1.25 * eps for fgsm_rs (Wong et al.
            FGSM with random initialisation), eps for free (Shafahi et al. Algorithm 1).
        steps: PGD iterations; required for pgd, not accepted by the others (fgsm_rs takes one
            step; free takes one step per replay).
        norm: "linf" or "l2" for pgd and fgsm_rs; free is defined for "linf" only.
        fraction: share of each batch replaced, in (0, 1]: the first ``round(fraction * B)``
            images (the loader shuffles, so these are a random subset); the rest stay clean.
        warmup_epochs: eps (and the step with it) rises linearly from 0 to ``eps`` over this
            many epochs, updated every step; 0 attacks at full eps from the start.
        attack_in_eval_mode: run the attack in eval mode (see above).
        replays: free only, required there: how many steps each minibatch is trained on
            (Shafahi et al.'s m).
        guard_drop: fgsm_rs only (pgd and free do not overfit this way, so they ignore it): the
            drop in PGD accuracy, in [0, 1], that stops training (Wong et al. use 0.2); None
            switches the guard off. A resumed run starts its comparisons afresh.

    Raises:
        ValueError: an option out of range or one that the chosen attack does not take; at the
            first batch, a task whose batches are not (images in [0, 1], integer labels).
    """

    def __init__(
        self,
        *,
        attack: AttackName = "pgd",
        eps: float,
        step_size: float | None = None,
        steps: int | None = None,
        norm: Literal["linf", "l2"] = "linf",
        fraction: float = 1.0,
        warmup_epochs: float = 0.0,
        attack_in_eval_mode: bool = True,
        replays: int | None = None,
        guard_drop: float | None = 0.2,
    ) -> None:
        if attack not in ("pgd", "fgsm_rs", "free"):
            raise ValueError(f"{OWNER}: unknown attack {attack!r}; choose 'pgd', 'fgsm_rs' or 'free'")
        if not eps > 0:
            raise ValueError(f"{OWNER}: eps must be > 0 (pixel units, images in [0, 1]), got {eps}")
        if norm not in ("linf", "l2"):
            raise ValueError(f"{OWNER}: unknown norm {norm!r}; choose 'linf' or 'l2'")
        if attack == "pgd" and (steps is None or steps < 1):
            raise ValueError(f"{OWNER}: attack='pgd' needs steps >= 1 (Madry et al.: 7 on CIFAR-10), got {steps}")
        if attack != "pgd" and steps is not None:
            raise ValueError(
                f"{OWNER}: attack={attack!r} takes no steps (fgsm_rs takes one; free one per replay); remove steps"
            )
        if attack == "free" and (replays is None or replays < 1):
            raise ValueError(f"{OWNER}: attack='free' needs replays >= 1 (Shafahi et al. use 8 on CIFAR-10)")
        if attack != "free" and replays is not None:
            raise ValueError(f"{OWNER}: replays is an option of attack='free' only; remove it for {attack!r}")
        if attack == "free" and norm != "linf":
            raise ValueError(f"{OWNER}: attack='free' is defined for norm='linf' only (Shafahi et al.)")
        if step_size is not None and not step_size > 0:
            raise ValueError(f"{OWNER}: step_size must be > 0, got {step_size}")
        if not 0 < fraction <= 1:
            raise ValueError(f"{OWNER}: fraction must lie in (0, 1], got {fraction}")
        if warmup_epochs < 0:
            raise ValueError(f"{OWNER}: warmup_epochs must be >= 0, got {warmup_epochs}")
        if guard_drop is not None and not 0 <= guard_drop <= 1:
            raise ValueError(f"{OWNER}: guard_drop must lie in [0, 1] (or be None), got {guard_drop}")
        if step_size is None:
            step_size = {"pgd": 2.5 * eps / (steps or 1), "fgsm_rs": 1.25 * eps, "free": eps}[attack]
        self.attack, self.eps, self.step_size, self.steps, self.norm = attack, eps, step_size, steps, norm
        self.fraction, self.warmup_epochs, self.attack_in_eval_mode = fraction, warmup_epochs, attack_in_eval_mode
        self.replays = replays
        self.guard_drop = guard_drop if attack == "fgsm_rs" else None

        self._checked_range = False
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
        x, y = image_batch(batch, owner=OWNER, check_range=not self._checked_range)
        self._checked_range = True
        if self.guard_drop is not None and batch_idx == 0:
            self._guard_batch = (x.detach().clone(), y.detach().clone())
        eps = self.eps_at(self._progress(trainer, batch_idx))
        self._step_eps = eps
        pl_module.log("train/attack_eps", eps, on_step=True, on_epoch=False, batch_size=len(y))
        if self.attack == "free":
            self._free_replace(x, y, eps)
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

    # -- catastrophic-overfitting guard (Wong et al. 2020, section 5.1) ----------------------

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx + 1 == trainer.num_training_batches:
            self._guard_check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._guard_check(trainer, pl_module)  # loaders without a length; a no-op if it ran already

    def _guard_check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.guard_drop is None or self._guard_batch is None or self._guard_epoch == trainer.current_epoch:
            return
        self._guard_epoch = trainer.current_epoch
        x, y = self._guard_batch
        with trainer.precision_plugin.train_step_context():
            x_adv = pgd(pl_module, x, y, eps=self.eps, step_size=self.eps / 4, steps=5, norm=self.norm)
            with torch.no_grad(), attack_mode(pl_module):
                correct = (pl_module(x_adv).argmax(-1) == y).sum().float()
        counts = torch.stack([correct, correct.new_tensor(float(len(y)))])
        counts = trainer.strategy.reduce(counts, reduce_op="sum")  # every rank sees the same accuracy
        acc = (counts[0] / counts[1]).item()
        pl_module.log("train/guard_pgd_acc", acc, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
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
        self._guard_prev_acc = acc
        self._guard_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
