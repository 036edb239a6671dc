"""Table: Madry et al. 2018, PGD adversarial training on MNIST, robust accuracy under AutoAttack.

Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks" (ICLR 2018, arXiv:1706.06083). Their CNN is trained naturally and with PGD (L-inf eps 0.3,
40 steps of 0.01 from a random start), then attacked at eps 0.3.

The robust figure is AutoAttack's. Croce & Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks" (ICML 2020, arXiv:2003.01690) attacked Madry et al.'s
released MNIST network (the MNIST challenge's model, 98.53% clean) at eps 0.3 with the standard ensemble
(APGD-CE, APGD-T, FAB-T, Square with 5,000 queries; :func:`research.attacks.autoattack`): 88.50%
robust, against the 89.62% reported for it (100-step PGD on the cross-entropy with 50 random restarts,
MadryLab/mnist_challenge, white-box leaderboard). Source: the authors' leaderboard, table "MNIST - Linf",
row 7 of the README of github.com/fra31/auto-attack (commit a392200, 2023); 88.50 is the standard
version that :func:`research.attacks.autoattack` implements (August 2020 on). The paper's own table
of L-inf defenses ran the original version (untargeted APGD-DLR and FAB, 5 restarts each) and gave
88.43, as the same README listed until July 2020 (commit 6d16679). That network is not Table 1's
"A" below, but it is trained with the same recipe, and their PGD figures agree (89.62 with 50
restarts on it; 89.3 with 20 restarts on A).

The other figures of the adversarially trained network are from the paper's Table 1 (MNIST, white-box
attacks at eps 0.3 on the model the paper trains, "A" in its source column): 98.8% clean, 95.6% FGSM,
93.2% PGD-40, 91.8% PGD-100, 89.3% PGD-100 with 20 restarts. The naturally trained network's 99.2%
clean and 6.4% under FGSM are from section 4 (the paper's baseline for the same architecture).

Every FGSM and PGD row is an upper bound on robust accuracy, so labelled: a stronger attack can only
lower it (with an earlier, shorter recipe of this config, PGD-40 overstated AutoAttack's figure by 24 points).
"""

from __future__ import annotations

import functools
from functools import partial

from research.reproduce.plots import paper_vs_ours
from research.reproduce.runs import attack_checkpoint, config_key, fit_run
from research.reproduce.table import Row, Table

NATURAL = "reproduce/mnist_madry_natural.yaml"
ROBUST = "reproduce/mnist_madry_pgd.yaml"
EPS, STEP = 0.3, 0.01
# Test digits attacked and restarts of the strongest attack: a CPU budget (Madry et al.:
# all 10,000 test digits, 20 or 50 restarts; Croce & Hein: all 10,000).
SAMPLES, RESTARTS = 200, 2
PAPER = "Madry et al. 2018, Table 1 (MNIST, source A, eps 0.3)"
NATURAL_PAPER = "Madry et al. 2018, section 4 (naturally trained network)"
AUTOATTACK_PAPER = ("Croce & Hein 2020, github.com/fra31/auto-attack leaderboard, MNIST - Linf (Madry et al.'s "
                    "released network: 89.62 reported, 88.50 AutoAttack)")
UPPER = "(upper bound)"


@functools.cache
def evaluate(config: str, quick: bool) -> dict[str, float]:
    """Train ``config`` and attack its final checkpoint at eps 0.3, every attack on the same test digits.

    Returns:
        Accuracy (%): ``clean``, ``autoattack``, ``fgsm``, and for the PGD-trained ``ROBUST`` also
        ``pgd40``, ``pgd100``, ``pgd100_restarts``. ``quick``: 20 digits, PGD with 2-3 steps,
        AutoAttack as in a full run (on a model of 3 training steps it fools every digit within
        APGD-CE, about a second).
    """
    run = fit_run(config, quick=quick)
    samples, restarts = (20, 2) if quick else (SAMPLES, RESTARTS)
    attack = partial(attack_checkpoint, config, run.last, eps=EPS, step_size=STEP, num_samples=samples)
    scores = attack(attacks=["fgsm", "autoattack"])
    if config == NATURAL:  # the paper's claim about the natural model is about FGSM alone
        return scores
    scores["pgd40"] = attack(attacks=["pgd"], steps=2 if quick else 40)["pgd"]
    scores["pgd100"] = attack(attacks=["pgd"], steps=3 if quick else 100)["pgd"]
    scores["pgd100_restarts"] = attack(attacks=["pgd"], steps=3 if quick else 100, restarts=restarts)["pgd"]
    return scores


def _score(config: str, key: str, quick: bool) -> float:
    return evaluate(config, quick)[key]


def _overstated(config: str, key: str, quick: bool) -> float:
    """How many points the ``key`` figure lies above AutoAttack's on the same digits."""
    scores = evaluate(config, quick)
    return scores[key] - scores["autoattack"]


def _row(label: str, paper: float | None, tolerance: float, source: str, config: str, key: str,
         measure=_score) -> Row:
    return Row(label, paper, tolerance, source, partial(measure, config, key),
               key=f"{config_key(config)} {key} samples={SAMPLES} restarts={RESTARTS}", model="madry_mnist_cnn")


TABLE = Table(
    name="madry",
    title="Madry et al. 2018: MNIST CNN accuracy (%) at L-inf eps 0.3, natural vs PGD-40 training; robust "
    "accuracy = AutoAttack, FGSM/PGD rows are upper bounds",
    unit="%",
    rows=[
        _row("natural training, clean", 99.2, 1.0, NATURAL_PAPER, NATURAL, "clean"),
        _row("natural training, AutoAttack", None, 0.0,
             "ours (neither paper has an AutoAttack figure for a natural network)", NATURAL, "autoattack"),
        _row(f"natural training, FGSM {UPPER}", 6.4, 3.0, NATURAL_PAPER, NATURAL, "fgsm"),
        _row("PGD training, clean", 98.8, 1.5, PAPER, ROBUST, "clean"),
        _row("PGD training, AutoAttack (robust accuracy)", 88.5, 3.0, AUTOATTACK_PAPER, ROBUST, "autoattack"),
        _row(f"PGD training, FGSM {UPPER}", 95.6, 3.0, PAPER, ROBUST, "fgsm"),
        _row(f"PGD training, PGD-40 {UPPER}", 93.2, 3.0, PAPER, ROBUST, "pgd40"),
        _row(f"PGD training, PGD-100 {UPPER}", 91.8, 3.0, PAPER, ROBUST, "pgd100"),
        _row(f"PGD training, PGD-100 with {RESTARTS} restarts (upper bound; paper: 20 restarts)", 89.3, 3.0, PAPER,
             ROBUST, "pgd100_restarts"),
        _row("PGD training, PGD-40 minus AutoAttack (points the PGD-40 bound overstates)", None, 0.0,
             "ours (Croce & Hein 2020: 89.62 - 88.50 = 1.12 points with PGD-100 x 50 restarts, released network)",
             ROBUST, "pgd40", measure=_overstated),
    ],
    notes="Robust accuracy is AutoAttack's (Croce & Hein 2020, the standard ensemble: APGD-CE, APGD-T, FAB-T, "
    "Square with 5,000 queries). Counting, as python -m research attack counts: every row attacks the same "
    f"{SAMPLES} digits, and a digit counts as robust only if it is classified correctly clean and under the "
    "attack, worst case per digit: under each of AutoAttack's four attacks, and under every restart of a PGD row. "
    "An FGSM or PGD figure is an upper bound on robust accuracy (a stronger attack can only lower it), which is "
    "why the AutoAttack row is the headline; the last row says by how much PGD-40 overstates it here. "
    "Our data differs: the 8,000 embedded MNIST training digits (not 60,000); the natural model trains 3 epochs, "
    "the PGD model 7 epochs in batches of 100 (Adam with Wong et al.'s cyclic learning rate, peak 5e-3 at 2/5 of "
    "the run, full eps from the first step; the paper: 100k steps of 50 at 1e-4); and "
    f"{SAMPLES} of the 1,000 embedded test digits attacked (the paper and Croce & Hein: all 10,000). PGD steps are "
    "0.01 from a random start. AutoAttack's 88.50 is of Madry et al.'s released network, trained as Table 1's. "
    "Expect our robust accuracies below the paper's: our PGD training sees 56,000 images, theirs 5 million.",
    plot=paper_vs_ours,
    minutes=36,  # measured: 2,023 s of CPU for the PGD rows (python -m research reproduce madry), ~2 min natural
)
