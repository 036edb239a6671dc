"""Table: the BatchNorm ablation of our course notes (Ioffe & Szegedy 2015, on a five-layer CNN).

The notes train the five-layer CNN on the full MNIST (60,000 digits) and report 98.84% test accuracy
with BatchNorm and 97.77% without. Ours trains the same network on the 8,000 training digits shipped
with the package (EmbeddedMNISTDataModule) and tests on its 1,000 held-out digits, over several seeds.
"""

from __future__ import annotations

import math
from functools import partial

from research.reproduce.plots import paper_vs_ours
from research.reproduce.runs import over_seeds
from research.reproduce.table import Measured, Row, Table

CONFIG = "cnn/mnist_five_layer_cnn.yaml"
SEEDS = 3
NOTES = "course notes, five-layer CNN on MNIST"


def _model(batch_norm: bool) -> tuple[str, ...]:
    spec = f"{{name: five_layer_cnn, num_classes: 10, in_chans: 1, batch_norm: {str(batch_norm).lower()}}}"
    return ("--model.init_args.model", spec)


def accuracy(batch_norm: bool, quick: bool) -> Measured:
    return over_seeds(CONFIG, _model(batch_norm), "test/acc", SEEDS, quick=quick)


def gain(quick: bool) -> Measured:
    with_bn, without = accuracy(True, quick), accuracy(False, quick)
    spread = None if with_bn.spread is None else math.hypot(with_bn.spread, without.spread)
    return Measured(with_bn.value - without.value, spread)


TABLE = Table(
    name="batchnorm",
    title=f"BatchNorm ablation: five-layer CNN, test accuracy (%), mean ± std over {SEEDS} seeds",
    unit="%",
    rows=[
        Row("with BatchNorm", 98.84, 0.5, NOTES, partial(accuracy, True), key=CONFIG, model="five_layer_cnn"),
        Row("without BatchNorm", 97.77, 0.5, NOTES, partial(accuracy, False), key=CONFIG, model="five_layer_cnn"),
        Row("gain from BatchNorm (points)", 1.07, 0.5, NOTES, gain, key=CONFIG, model="five_layer_cnn"),
    ],
    notes="Data differs from the notes: 8,000 embedded training digits instead of 60,000, so both accuracies "
    "are expected lower; the gain is the comparable figure.",
    plot=partial(paper_vs_ours, labels=("with BatchNorm", "without BatchNorm")),
    minutes=3.5,
)
