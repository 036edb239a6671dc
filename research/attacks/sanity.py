"""The sanity panel: the signs of gradient masking that a reviewer checks before trusting a robust accuracy.

A robust accuracy is only as good as the attack: a model whose gradients are masked (zero, noisy or
shattered: quantised inputs, thresholds, stochastic layers) defeats PGD without being robust.
Athalye, Carlini and Wagner 2018, "Obfuscated Gradients Give a False Sense of Security"
(arXiv:1802.00420, section 3.1) and Carlini et al. 2019, "On Evaluating Adversarial Robustness"
(arXiv:1902.06705, section 5, basic sanity tests) list its signs; :func:`sanity_panel` checks four.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from research.attacks import registry
from research.attacks.evaluation import Setting, evaluate_settings
from research.attacks.progress import percent
from research.attacks.registry import AttackSettings

SANITY_STEPS = (10, 40, 100)  # the ladder of PGD iterations (Carlini et al. 2019, section 5)
SANITY_RESTARTS = 5  # against 1, on the shortest PGD of the ladder
SANITY_LARGE_EPS = 0.5  # L-inf: the ball of every [0, 1] image holds the all-0.5 image
SANITY_P = 0.05  # a rise in accuracy is a warning when a one-sided sign test finds it at this level

_TRY = ("try more restarts (--restarts 10), a stronger attack (APGD or AutoAttack, which adapt their step size) "
        "and a gradient-free one such as Square; if those find far lower accuracy, report theirs")


def rise_p_value(weaker: Tensor, stronger: Tensor) -> float:
    """How likely chance alone makes ``stronger`` count as many more examples robust as it does.

    The exact one-sided sign test on the discordant examples (McNemar's test, exact form): an
    attack that is in truth at least as strong leaves an example correct that the other fooled
    (``gained``) no more often than the other way round (``lost``); the p-value is
    ``P(X >= gained)`` for ``X ~ Binomial(gained + lost, 1/2)``.

    Args:
        weaker: (N,) bool, examples counted robust under the attack expected to be weaker.
        stronger: (N,) bool, the same examples under the attack expected to be stronger.

    Returns:
        The p-value in (0, 1]; 1 when no example is gained.

    """
    gained, lost = int((stronger & ~weaker).sum()), int((weaker & ~stronger).sum())
    n = gained + lost
    return sum(math.comb(n, k) for k in range(gained, n + 1)) / 2**n


def sanity_panel(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    eps: float,
    norm: str = "linf",
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[dict]:
    """The gradient-masking checks a reviewer runs, at ``eps`` in ``norm`` (the headline setting).

    Athalye, Carlini and Wagner 2018 (arXiv:1802.00420, section 3.1: one-step attacks beating
    iterative ones, unbounded attacks not reaching 100% success) and Carlini et al. 2019
    (arXiv:1902.06705, section 5: more iterations and restarts must not lower attack success; a
    large enough budget must reach it). The checks, on the same examples, PGD with Madry's step
    size 2.5 * eps / steps:

    * ``steps``: PGD-10, -40, -100 in ``norm``: accuracy must not rise with the steps;
    * ``restarts``: PGD-10 with 1 and with 5 restarts: must not rise either;
    * ``large eps``: PGD-40 at L-inf eps 0.5 must reach 0% (always L-inf: that radius reaches
      the grey image from any [0, 1] image);
    * ``one step``: FGSM (L-inf; one L2 step of ``eps`` from a random start for L2) must not
      leave less accuracy than PGD-40.

    A rise fails its check only if it is beyond the noise of the random starts: a one-sided sign
    test on the examples one setting fools and the other does not (:func:`rise_p_value`,
    p < 0.05). The large-eps check asks for exactly 0%.

    Args:
        model: maps (B, C, H, W) images in [0, 1] to logits, in eval mode.
        batches: (images, labels) batches, given the same each time they are read.
        eps: the radius of the checks in ``norm``, pixel units.
        norm: the threat model.
        device: where the batches go.
        progress: as :func:`research.attacks.evaluation.robust_accuracy`'s.

    Returns:
        One dict per check: ``check``, ``setting`` (in words), ``compared`` (the settings'
        labels), ``accuracies``, ``correct``, ``total``, ``p_value`` (of the rise; None for the
        large-eps check), ``passed`` and ``warning`` (None when passed).

    Raises:
        ValueError, UserError: as :func:`research.attacks.evaluation.robust_accuracy` for ``eps`` and ``norm``.

    """
    registry.check_settings(["pgd"], [eps], norm, AttackSettings())
    ladder = [Setting("pgd", norm, eps, AttackSettings(steps=s)) for s in SANITY_STEPS]
    restarted = Setting("pgd", norm, eps, AttackSettings(steps=SANITY_STEPS[0], restarts=SANITY_RESTARTS))
    large = Setting("pgd", "linf", max(SANITY_LARGE_EPS, eps if norm == "linf" else 0), AttackSettings(steps=40))
    if norm == "linf":
        one_step, one_name = Setting("fgsm", "linf", eps), "FGSM"
    else:  # one L2 step of length eps, the L2 counterpart of FGSM (from a random start: pgd's)
        one_step, one_name = Setting("pgd", norm, eps, AttackSettings(steps=1, step_size=eps or 1.0)), "one L2 step"
    forty = ladder[SANITY_STEPS.index(40)]
    chosen = list(dict.fromkeys([*ladder, restarted, large, one_step]))  # eps >= 0.5: large is PGD-40 itself
    rows, hits = evaluate_settings(model, batches, chosen, device=device, progress=progress, title="sanity panel")
    row, hit = dict(zip(chosen, rows[1:])), dict(zip(chosen, hits[1:]))
    total = rows[0]["total"]
    where = f"{norm} eps {eps:g}"

    def check(name: str, setting: str, compared: Sequence[Setting], p: float | None, passed: bool,
              warning: str) -> dict:
        return {"check": name, "setting": setting, "compared": [s.label for s in compared],
                "accuracies": [row[s]["accuracy"] for s in compared], "correct": [row[s]["correct"] for s in compared],
                "total": total, "p_value": p, "passed": passed, "warning": None if passed else warning}

    def rise(weaker: Setting, stronger: Setting, name_weaker: str, name_stronger: str) -> str:
        gained = int((hit[stronger] & ~hit[weaker]).sum())
        lost = int((hit[weaker] & ~hit[stronger]).sum())
        p = rise_p_value(hit[weaker], hit[stronger])
        return (f"{name_stronger} leaves {100 * row[stronger]['accuracy']:.1f}% against "
                f"{100 * row[weaker]['accuracy']:.1f}% for {name_weaker} ({gained} examples {name_weaker} fooled are "
                f"correct under {name_stronger}, {lost} the other way; sign test p = {p:.2g})")

    checks = []
    pairs = [(a, b) for i, a in enumerate(ladder) for b in ladder[i + 1:]]
    p_steps = {pair: rise_p_value(hit[pair[0]], hit[pair[1]]) for pair in pairs}
    fewer, more = min(p_steps, key=p_steps.get)
    checks.append(check(
        "more steps do not raise accuracy", f"PGD-{' / '.join(map(str, SANITY_STEPS))} at {where}", ladder,
        p_steps[fewer, more], p_steps[fewer, more] >= SANITY_P,
        f"{rise(fewer, more, f'PGD-{fewer.settings.steps}', f'PGD-{more.settings.steps}')}. An attack that gets "
        "worse with more iterations is not converging; the likely cause is gradient masking (noisy or shattered "
        f"gradients, Athalye et al. 2018) or a step size too large; {_TRY}"))
    p_restarts = rise_p_value(hit[ladder[0]], hit[restarted])
    checks.append(check(
        "more restarts do not raise accuracy", f"PGD-{SANITY_STEPS[0]} x 1 / {SANITY_RESTARTS} restarts at {where}",
        [ladder[0], restarted], p_restarts, p_restarts >= SANITY_P,
        f"{rise(ladder[0], restarted, '1 restart', f'{SANITY_RESTARTS} restarts')}. Restarts keep the worst case per "
        f"example, so this points at randomness in the model's outputs or gradients (gradient masking); {_TRY}"))
    compared = [forty, large] if norm == "linf" and large != forty else [large]
    checks.append(check(
        f"accuracy reaches 0% at L-inf eps {large.eps:g}",
        f"PGD-40 at linf eps {' / '.join(f'{s.eps:g}' for s in compared)}", compared, None, row[large]["correct"] == 0,
        f"PGD-40 at L-inf eps {large.eps:g} leaves {percent(row[large]['correct'], total)}, not 0%: at that radius "
        "any [0, 1] image can be turned into another class, so the attack cannot follow the gradient; the likely "
        "cause is gradient masking (zero or vanishing gradients: quantised or thresholded inputs, saturated outputs, "
        f"a non-differentiable layer); {_TRY}"))
    p_one = rise_p_value(hit[one_step], hit[forty])
    checks.append(check(
        "iterative at least as strong as one step", f"{one_name} / PGD-40 at {where}", [one_step, forty], p_one,
        p_one >= SANITY_P,
        f"{rise(one_step, forty, one_name, 'PGD-40')}. An iterative attack only loses to a single step when the "
        f"gradient misleads it near the input, a sign of gradient masking; {_TRY}"))
    return checks


def sanity_markdown(checks: Sequence[dict]) -> str:
    """The panel as a markdown table (accuracies in percent), then one warning line per failed check."""
    lines = ["| check | setting | accuracy (%) | result |", "|---|---|---|---|"]
    for c in checks:
        accuracies = " / ".join(f"{100 * a:.1f}" for a in c["accuracies"])
        lines.append(f"| {c['check']} | {c['setting']} | {accuracies} | "
                     f"{'PASS' if c['passed'] else 'WARN'} |")
    warnings = [f"WARNING ({c['check']}): {c['warning']}" for c in checks if not c["passed"]]
    return "\n".join(lines + ([""] + warnings if warnings else []))
