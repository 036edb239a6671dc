"""Table: Swin's shifted windows and position embeddings (Liu et al. 2021, Table 4).

Liu, Lin, Cao, Hu, Wei, Zhang, Lin & Guo, "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows" (ICCV 2021, arXiv:2103.14030), Table 4: Swin-T on ImageNet-1K, top-1 accuracy: without shifting
80.2, with shifted windows 81.3; with shifted windows, no position encoding 80.1, absolute position
embedding 80.5, absolute + relative 81.3, relative position bias (the paper's model) 81.3. (The row "rel.
pos. w/o app.", 79.3, needs a bias on the first-scale attention only and is left out.)

Ours trains the small Swin of configs/swin/fashion_mnist_swin_ablation.yaml on full Fashion-MNIST once per
variant and seed, through the model's options ``shift_windows``, ``ape`` and ``use_rel_pos_bias``
(research/models/swin.py). The paper's gaps are about one point on ImageNet; the claims checked are their
signs, and a row counts how many of our gaps are larger than the noise between seeds.
Fashion-MNIST is not shipped: set ``RESEARCH_DATA`` (see :func:`research.reproduce.runs.fashion_mnist_root`).
"""

from __future__ import annotations

import functools
from functools import partial

from research.reproduce.plots import two_panels
from research.reproduce.runs import config_key, fashion_mnist_root, model_override, over_seeds, quick_data
from research.reproduce.table import Measured, Row, Table

CONFIG = "swin/fashion_mnist_swin_ablation.yaml"
SEEDS = 2
PAPER = "Liu et al. 2021, Table 4 (Swin-T, ImageNet-1K top-1)"
TREND = "Liu et al. 2021, Table 4 (sign of the gap)"

SHIFTED, UNSHIFTED = "shifted, rel. pos.", "w/o shifting"
NO_POS, ABS, ABS_REL = "no pos.", "abs. pos.", "abs.+rel. pos."
# Each variant's model options (the rest is the config's) and the paper's ImageNet top-1 (%).
VARIANTS: dict[str, tuple[dict[str, bool], float]] = {
    SHIFTED: ({}, 81.3),
    UNSHIFTED: ({"shift_windows": False}, 80.2),
    NO_POS: ({"use_rel_pos_bias": False}, 80.1),
    ABS: ({"ape": True, "use_rel_pos_bias": False}, 80.5),
    ABS_REL: ({"ape": True}, 81.3),
}
# (better, worse): the gaps whose sign the paper shows (rel. and abs.+rel. tie at 81.3: no claim between them).
CLAIMS = ((SHIFTED, UNSHIFTED), (SHIFTED, NO_POS), (SHIFTED, ABS), (ABS, NO_POS))


@functools.cache
def accuracy(variant: str, quick: bool) -> Measured:
    """Test accuracy (%) of ``variant``, mean and standard deviation over :data:`SEEDS` seeds (quick: one)."""
    model = model_override(CONFIG, **VARIANTS[variant][0])
    overrides = ("--data.init_args.root", str(fashion_mnist_root(quick)), *model)
    overrides += quick_data(quick, batch_size=32)  # quick: steps of 32 images, not 128
    return over_seeds(CONFIG, overrides, "test/acc", SEEDS, quick=quick)


def beats(better: str, worse: str, quick: bool) -> float:
    """1.0 if ``better``'s mean test accuracy is above ``worse``'s, else 0.0."""
    return float(accuracy(better, quick).value > accuracy(worse, quick).value)


def gaps_beyond_noise(quick: bool) -> float:
    """How many of the :data:`CLAIMS` gaps exceed twice the larger seed standard deviation of their two variants.

    A gap inside that band could be seed noise; quick runs have one seed and no spread, so there any gap counts.
    """
    count = 0
    for better, worse in CLAIMS:
        a, b = accuracy(better, quick), accuracy(worse, quick)
        noise = 2 * max(a.spread or 0.0, b.spread or 0.0)
        count += abs(a.value - b.value) > noise
    return float(count)


_KEY = f"{config_key(CONFIG)} {SEEDS} seeds {sorted((k, sorted(v[0].items())) for k, v in VARIANTS.items())}"


def _label(variant: str) -> str:
    return f"{variant}: test accuracy (%)"


def _variant_row(variant: str) -> Row:
    return Row(_label(variant), None, 0.0, f"ours (the paper: {VARIANTS[variant][1]:g} on ImageNet)",
               partial(accuracy, variant), key=_KEY)


TABLE = Table(
    name="swin_ablation",
    title="Swin: shifted windows and position embeddings (Table 4), a small Swin on Fashion-MNIST",
    unit="%, or 1 = yes",
    # each variant's row before the claims on it, the one no claim needs last: a row is cached as soon as it is
    # measured, so a run cut short keeps what it did
    rows=[
        *(_variant_row(variant) for variant in (SHIFTED, UNSHIFTED, NO_POS, ABS)),
        Row("shifted windows beat w/o shifting (1 = yes)", 1.0, 0.5, TREND, partial(beats, SHIFTED, UNSHIFTED),
            key=_KEY),
        Row("rel. pos. beats no pos. (1 = yes)", 1.0, 0.5, TREND, partial(beats, SHIFTED, NO_POS), key=_KEY),
        Row("rel. pos. beats abs. pos. (1 = yes)", 1.0, 0.5, TREND, partial(beats, SHIFTED, ABS), key=_KEY),
        Row("abs. pos. beats no pos. (1 = yes)", 1.0, 0.5, TREND, partial(beats, ABS, NO_POS), key=_KEY),
        Row(f"of these {len(CLAIMS)} gaps, those beyond 2 std over seeds", None, 0.0, "ours", gaps_beyond_noise,
            key=_KEY),
        _variant_row(ABS_REL),
    ],
    notes="Ours: a Swin of width 32 with three stages of 2 blocks (0.57M parameters; the paper's Swin-T: 28M, "
    "four stages), 2x2 patches and 4x4 windows on the 28x28 images, so the stages have 16, 4 and 1 windows (the "
    "paper: 64, 16, 4, 1): shifting only matters in the first two. Each variant trains 2 epochs of 150 batches of "
    "128 (0.64 of a pass over the 60,000 training images; the paper: 300 ImageNet epochs) with "
    f"{SEEDS} seeds, and is tested on the 10,000 test images: mean ± standard deviation over the seeds. So short a "
    "schedule leaves the models far from converged (about 67% test accuracy after 0.64 of a pass): the gaps compare "
    "early learning. The paper's gaps are about one point; at this size and schedule ours may be within the "
    "seed noise, which the row counting the gaps beyond 2 std says. Fashion-MNIST comes from $RESEARCH_DATA (a "
    "failed row says so when it is missing).",
    digits=2,
    minutes=16,  # CPU minutes of the process (the wall time on a shared 2-core machine was about 4x)
    plot=partial(two_panels, rows={_label(v): (v, paper) for v, (_, paper) in VARIANTS.items()},
                 paper_label="the paper: Swin-T, ImageNet-1K top-1 (%)",
                 ours_label="ours: Fashion-MNIST test accuracy (%), ± std over seeds"),
)
