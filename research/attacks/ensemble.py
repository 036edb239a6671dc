"""AutoAttack: the standard ensemble of Croce and Hein 2020, worst case per example.

Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, https://arxiv.org/abs/2003.01690, section 5: APGD-CE, APGD-T,
FAB-T and Square, run in this order, each only on the examples that are still robust (correctly
classified clean and not fooled by any attack before it). The ensemble's robust accuracy is the
share of examples that no attack fools, the figure RobustBench reports.

The standard version follows the official code (fra31/auto-attack, ``autoattack/autoattack.py``,
``version='standard'``): APGD-CE with 100 steps and 1 restart; APGD-T with 100 steps, 1 restart
and 9 target classes; FAB-T with 100 steps, 1 restart and 9 target classes; Square with 5,000
queries and ``p_init = 0.8``. The same attacks serve L-inf and L2.

A model with fewer than 10 classes gets ``num_classes - 1`` target classes (all of them); APGD-T's
targeted DLR loss needs 4 classes, so it is skipped, and said so, for 2 or 3 classes (the official
code would fail there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from research.attacks.apgd import apgd, apgd_targeted
from research.attacks.fab import fab_targeted
from research.attacks.mode import attack_mode
from research.attacks.square import square

#: The standard ensemble, in the order the official code runs it.
STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
#: The most target classes a targeted attack tries (the official ``n_target_classes``).
TARGET_CLASSES = 9

_Component = Callable[..., Tensor]


def _apgd_ce(model, x, y, *, eps, norm, num_classes, eval_mode):
    return apgd(model, x, y, eps=eps, norm=norm, steps=100, loss="ce", restarts=1, eval_mode=eval_mode)


def _apgd_t(model, x, y, *, eps, norm, num_classes, eval_mode):
    return apgd_targeted(model, x, y, eps=eps, norm=norm, steps=100, target_classes=min(TARGET_CLASSES,
                         num_classes - 1), restarts=1, eval_mode=eval_mode)


def _fab_t(model, x, y, *, eps, norm, num_classes, eval_mode):
    return fab_targeted(model, x, y, eps=eps, norm=norm, steps=100, target_classes=min(TARGET_CLASSES,
                        num_classes - 1), restarts=1, eval_mode=eval_mode)


def _square(model, x, y, *, eps, norm, num_classes, eval_mode):
    return square(model, x, y, eps=eps, norm=norm, queries=5000, p_init=0.8, restarts=1, eval_mode=eval_mode)


#: Name -> (attack, the fewest classes it works with).
COMPONENTS: dict[str, tuple[_Component, int]] = {
    "apgd-ce": (_apgd_ce, 2),
    "apgd-t": (_apgd_t, 4),
    "fab-t": (_fab_t, 2),
    "square": (_square, 2),
}


@dataclass
class EnsembleResult:
    """What :func:`autoattack_ensemble` found.

    Attributes:
        x_adv: (B, C, H, W) per example the point that fooled the model (the first attack's that
            did), or the last attack's point for an example none fooled; within ``eps``, in [0, 1].
        clean: (B,) bool, correct on the clean image.
        robust: (B,) bool, correct clean and under every attack.
        robust_after: attack name -> (B,) bool, robust after that attack and all before it (the
            official code's running robust accuracy), in the order run.
        skipped: attack name -> why it did not run.
    """

    x_adv: Tensor
    clean: Tensor
    robust: Tensor
    robust_after: dict[str, Tensor] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def autoattack_ensemble(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    attacks: Sequence[str] = STANDARD,
    eval_mode: bool = True,
    on_attack: Callable[[str, int], None] | None = None,
) -> EnsembleResult:
    """Run ``attacks`` in order, each on the examples still robust; the worst case per example.

    Args:
        model: maps (B, C, H, W) images in [0, 1] to (B, num_classes) logits.
        x: (B, C, H, W) images in [0, 1].
        y: (B,) true class labels.
        eps: radius in ``norm``, pixel units (0.3 L-inf on MNIST, 8/255 on CIFAR-10, 0.5 L2 on CIFAR-10).
        norm: ``"linf"`` or ``"l2"``.
        attacks: names in :data:`COMPONENTS`, run in the order given (default: the standard ensemble).
        eval_mode: attack in eval mode (default), or each module in its current mode.
        on_attack: called as ``on_attack(name, still_robust)`` before each attack (for progress).

    Returns:
        An :class:`EnsembleResult`.

    Raises:
        ValueError: an unknown attack name, no attack given, or what the attacks raise (eps out
            of range, images outside [0, 1], labels that do not fit the logits).

    """
    unknown = [name for name in attacks if name not in COMPONENTS]
    if unknown or not attacks:
        raise ValueError(f"unknown AutoAttack component(s) {unknown or attacks}; choose from {list(COMPONENTS)}")
    # The clean forward and the checks see the model as the attacks do (attack_mode restores it).
    with attack_mode(model, eval_mode=eval_mode):
        with torch.no_grad():
            logits = model(x)
        num_classes = logits.shape[-1]
        clean = logits.argmax(-1) == y
        robust, x_adv = clean.clone(), x.detach().clone()
        result = EnsembleResult(x_adv=x_adv, clean=clean, robust=robust)
        for name in attacks:
            attack, fewest = COMPONENTS[name]
            if num_classes < fewest:
                result.skipped[name] = f"needs at least {fewest} classes, the model has {num_classes}"
                continue
            idx = robust.nonzero().squeeze(1)
            if on_attack is not None:
                on_attack(name, len(idx))
            if len(idx) > 0:
                found = attack(model, x[idx], y[idx], eps=eps, norm=norm, num_classes=num_classes,
                               eval_mode=eval_mode)
                with torch.no_grad():
                    fooled = model(found).argmax(-1) != y[idx]
                x_adv[idx] = found  # a fooling point, or the attack's best try for the others
                robust[idx[fooled]] = False
            result.robust_after[name] = robust.clone()
    return result


def autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    attacks: Sequence[str] = STANDARD,
    eval_mode: bool = True,
) -> Tensor:
    """The adversarial images of :func:`autoattack_ensemble` (same arguments), shape and dtype of ``x``."""
    return autoattack_ensemble(model, x, y, eps=eps, norm=norm, attacks=attacks, eval_mode=eval_mode).x_adv
