"""The attacks of a robust-accuracy evaluation, by name.

One registry that the command line, the table, the picture and the progress display read. Each
entry maps ``(model, x, y, eps, norm, settings)`` to adversarial images; :func:`register_attack`
adds one, and an attack added so needs no other change. The entries: FGSM (Goodfellow et al.
2015), PGD (Madry et al. 2018, step 2.5 * eps / steps), and AutoAttack and its parts as AutoAttack
runs them (Croce and Hein 2020, arXiv:2003.01690: APGD-CE, APGD-T, FAB-T, Square, worst case per
example).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from research.attacks.apgd import apgd
from research.attacks.ensemble import autoattack, autoattack_ensemble
from research.attacks.fgsm import fgsm
from research.attacks.pgd import pgd
from research.attacks.square import square
from research.errors import UserError

NORM_NAMES = {"linf": "L-inf", "l2": "L2"}


@dataclass(frozen=True)
class AttackSettings:
    """What the command line sets for every attack; each entry reads what applies to it.

    Attributes:
        steps: iterations (PGD).
        step_size: PGD's step; None for Madry et al.'s 2.5 * eps / steps.
        restarts: random restarts; an example is robust only if no restart fools it.

    """

    steps: int = 40
    step_size: float | None = None
    restarts: int = 1


AttackFn = Callable[[nn.Module, Tensor, Tensor, float, str, AttackSettings], Tensor]


@dataclass(frozen=True)
class Attack:
    """An entry of :data:`ATTACKS`.

    Attributes:
        run: ``run(model, x, y, eps, norm, settings)`` -> (B, C, H, W) adversarial images in
            [0, 1] within ``eps`` of ``x`` in ``norm``.
        norms: the threat models it attacks in.
        describe: ``describe(eps, norm, settings)`` -> the table's ``steps``, ``step_size`` and
            ``restarts`` for this setting (None where one does not apply).
        cost: forward-backward passes per image under ``settings``, for the time left.
        uses_steps: whether ``settings.steps`` must be >= 1.

    """

    run: AttackFn
    norms: tuple[str, ...]
    describe: Callable[[float, str, AttackSettings], dict[str, Any]]
    cost: Callable[[AttackSettings], float]
    uses_steps: bool = False


#: Name -> entry. Read it through this module (``registry.ATTACKS``), so that a test may swap it.
ATTACKS: dict[str, Attack] = {}


def _iterations(eps: float, norm: str, settings: AttackSettings) -> dict[str, Any]:
    return {"steps": settings.steps, "step_size": None, "restarts": settings.restarts}


def register_attack(
    name: str,
    *,
    norms: tuple[str, ...] = ("linf", "l2"),
    describe: Callable[[float, str, AttackSettings], dict[str, Any]] = _iterations,
    cost: Callable[[AttackSettings], float] = lambda s: s.steps * s.restarts,
    uses_steps: bool = False,
) -> Callable[[AttackFn], AttackFn]:
    """Register ``run(model, x, y, eps, norm, settings) -> x_adv`` under ``name`` (a decorator).

    Raises:
        ValueError: ``name`` is already registered.

    """

    def add(run: AttackFn) -> AttackFn:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} registered twice ({run.__module__}.{run.__qualname__})")
        ATTACKS[name] = Attack(run=run, norms=norms, describe=describe, cost=cost, uses_steps=uses_steps)
        return run

    return add


def pgd_step_size(eps: float, settings: AttackSettings) -> float:
    """``settings.step_size``, or Madry et al.'s rule of thumb 2.5 * eps / steps."""
    if settings.step_size is not None:
        return settings.step_size
    # Any positive step does for eps = 0 or steps = 0 (pgd checks steps itself).
    return 2.5 * eps / settings.steps if eps > 0 and settings.steps > 0 else 1.0


@register_attack("fgsm", norms=("linf",), cost=lambda s: 1,
                 describe=lambda eps, norm, s: {"steps": 1, "step_size": eps, "restarts": 1})
def _fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, settings: AttackSettings) -> Tensor:
    return fgsm(model, x, y, eps=eps)


@register_attack("pgd", uses_steps=True,
                 describe=lambda eps, norm, s: {"steps": s.steps, "step_size": pgd_step_size(eps, s),
                                                "restarts": s.restarts})
def _pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, settings: AttackSettings) -> Tensor:
    # pgd keeps, per example, a restart that fools the model if any does: the worst case.
    return pgd(model, x, y, eps=eps, step_size=pgd_step_size(eps, settings), steps=settings.steps, norm=norm,
               restarts=settings.restarts)


_FIXED = {"step_size": None, "restarts": 1}


@register_attack("apgd", cost=lambda s: 100 * s.restarts,
                 describe=lambda eps, norm, s: {"steps": 100, "step_size": None, "restarts": s.restarts})
def _apgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, settings: AttackSettings) -> Tensor:
    # APGD-CE as AutoAttack runs it: 100 steps, no step size to choose (Croce and Hein 2020, section 3).
    return apgd(model, x, y, eps=eps, norm=norm, steps=100, loss="ce", restarts=settings.restarts)


def _ensemble_part(name: str, model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str) -> Tensor:
    """One AutoAttack component alone, as the ensemble runs it (on the clean-correct examples)."""
    result = autoattack_ensemble(model, x, y, eps=eps, norm=norm, attacks=(name,))
    if name in result.skipped:
        raise UserError(f"--attack {name} {result.skipped[name]}; attack this model with apgd or autoattack")
    return result.x_adv


@register_attack("apgd-t", cost=lambda s: 900, describe=lambda eps, norm, s: {"steps": 100, **_FIXED})
def _apgd_t(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, settings: AttackSettings) -> Tensor:
    return _ensemble_part("apgd-t", model, x, y, eps, norm)


@register_attack("fab-t", cost=lambda s: 1800, describe=lambda eps, norm, s: {"steps": 100, **_FIXED})
def _fab_t(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, settings: AttackSettings) -> Tensor:
    return _ensemble_part("fab-t", model, x, y, eps, norm)


@register_attack("square", cost=lambda s: 1700, describe=lambda eps, norm, s: {"steps": 5000, **_FIXED})
def _square(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, settings: AttackSettings) -> Tensor:
    # 5,000 queries (forward passes only; "steps" in the table), p_init 0.8: AutoAttack's standard Square.
    return square(model, x, y, eps=eps, norm=norm, queries=5000, p_init=0.8)


@register_attack("autoattack", cost=lambda s: 2500, describe=lambda eps, norm, s: {"steps": None, **_FIXED})
def _autoattack(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, settings: AttackSettings) -> Tensor:
    # The standard ensemble (APGD-CE, APGD-T, FAB-T, Square), worst case per example: the headline figure.
    return autoattack(model, x, y, eps=eps, norm=norm)


#: What an evaluation runs when no attack is named.
DEFAULT_ATTACKS = ("fgsm", "pgd")


def check_settings(attacks: Sequence[str], eps: Sequence[float], norm: str, settings: AttackSettings) -> None:
    """Stop before any work, with what was wrong and what to pass instead.

    Raises:
        ValueError: an unknown attack, one that does not attack in ``norm``, a negative or infinite eps.
        UserError: an L-inf eps above 1, or ``steps`` < 1 for an iterative attack.

    """
    for name in attacks:
        if name not in ATTACKS:
            close = difflib.get_close_matches(name, ATTACKS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown attack {name!r}; {hint}known: {', '.join(sorted(ATTACKS))}")
        if norm not in ATTACKS[name].norms:
            kinds = " or ".join(NORM_NAMES.get(n, n) for n in ATTACKS[name].norms)
            others = [other for other, entry in ATTACKS.items() if norm in entry.norms]
            raise ValueError(f"{name} is an {kinds} attack; with norm={norm!r} attack with {', '.join(others)} only")
    for e in eps:
        if not (isinstance(e, int | float) and math.isfinite(e) and e >= 0):
            raise ValueError(f"eps must be a finite number >= 0 (in pixel units of [0, 1] images), got {e!r}")
    if norm == "linf" and any(e > 1 for e in eps):
        raise UserError(
            f"--eps {max(eps):g} is above 1: images are in [0, 1], so an L-inf radius of 1 already reaches every "
            "image and accuracy is 0 by construction; give eps in pixel units (e.g. 0.3 on MNIST, 8/255 = 0.031 on "
            "CIFAR-10)"
        )
    iterative = [name.upper() for name in attacks if ATTACKS[name].uses_steps]
    if iterative and settings.steps < 1:
        given = f" with --step_size {settings.step_size:g}" if settings.step_size is not None else ""
        raise UserError(
            f"--steps {settings.steps}{given}: {' and '.join(iterative)} needs steps >= 1 (0 steps would be its "
            "random start only); use --steps 40 (Madry et al.), or --attack fgsm for a one-step attack"
        )
