"""Table: the degradation problem, plain nets against ResNets at depth 20 and 56 (He et al. 2016, Fig. 6, Table 6).

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition" (CVPR 2016, arXiv:1512.03385), section 4.2:
on CIFAR-10, "the deeper plain nets have higher training error" (Fig. 6 left: plain-56 above plain-44, -32, -20
throughout training), a failure to optimise, not overfitting, while the ResNets of the same layers get better with
depth (Fig. 6 middle; Table 6 test error: ResNet-20 8.75%, -32 7.51%, -44 7.17%, -56 6.97%, -110 6.43%). Fig. 6
prints curves, not numbers, so the claims checked are its trends: the deeper plain net has the higher training
error, the deeper ResNet not; the shortcuts help more at depth 56 than at 20; and Table 6's ResNet-56 beats
ResNet-20 on test error.

Ours trains the four nets of configs/resnet/fashion_mnist_{plain,resnet}{20,56}.yaml (identical but for the
model's name) on Fashion-MNIST and records, after every epoch, the training error over that epoch's batches as the
net trained (:class:`TrainingErrorRecord`): Fig. 6's thin curves, drawn by :func:`training_curves`.
Fashion-MNIST is not shipped: set ``RESEARCH_DATA`` (see :func:`research.reproduce.runs.fashion_mnist_root`).
"""

from __future__ import annotations

import functools
from functools import partial
from typing import TYPE_CHECKING

import lightning as L

from research.reproduce.runs import EpochRecord, config_key, fashion_mnist_root, fit_run
from research.reproduce.table import Row, Table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from research.reproduce.table import Result

# net -> its config; the labels are the paper's names
CONFIGS = {
    "plain-20": "resnet/fashion_mnist_plain20.yaml",
    "plain-56": "resnet/fashion_mnist_plain56.yaml",
    "ResNet-20": "resnet/fashion_mnist_resnet20.yaml",
    "ResNet-56": "resnet/fashion_mnist_resnet56.yaml",
}
MODELS = {"plain-20": "plain20", "plain-56": "plain56", "ResNet-20": "resnet20", "ResNet-56": "resnet56"}
EPOCHS, BATCHES = 5, 150  # max_epochs and limit_train_batches of the configs: one curve point an epoch
# the runs' one addition to their configs: the recorder of each epoch's training error
RECORD = ("--trainer.callbacks+=research.reproduce.resnet_degradation.TrainingErrorRecord",)
# --quick: epochs of one batch, so the QUICK steps of runs.py (3) make three epochs and three points of each curve.
QUICK = ("--trainer.limit_train_batches", "1")
FIG6 = "He et al. 2016, Fig. 6 (trend; CIFAR-10)"
TABLE6 = "He et al. 2016, Table 6 (ResNet-56 6.97% vs ResNet-20 8.75%, CIFAR-10)"


class TrainingErrorRecord(EpochRecord):
    """Write the training error (%) of every epoch, over the batches it trained on, beside the run's checkpoints.

    Reads ``train/acc``, which :class:`research.tasks.ImageClassification` logs as the mean over the epoch's
    (augmented, train-mode) batches: the thin curves of He et al.'s Fig. 6. Written as JSON, a list of
    ``{"epoch", "train_error"}``, to :attr:`FILE` in the checkpoint folder after every epoch, so the table reads it
    from the run without a logger.
    """

    FILE = "train_error.json"

    def reading(self, trainer: L.Trainer) -> dict[str, float]:
        accuracy = trainer.callback_metrics.get("train/acc")
        if accuracy is None:
            raise KeyError("TrainingErrorRecord reads train/acc, which this task does not log: use it with "
                           "research.tasks.ImageClassification")
        return {"train_error": 100 * (1 - float(accuracy))}


def training_error_record(checkpoint: str) -> list[float]:
    """The training error (%) of each epoch, from the :class:`TrainingErrorRecord` beside ``checkpoint``.

    Raises:
        FileNotFoundError: the run had no TrainingErrorRecord callback.
    """
    return [epoch["train_error"] for epoch in TrainingErrorRecord.read(checkpoint, RECORD[0])]


@functools.cache
def errors(net: str, quick: bool) -> dict[str, float | list[float]]:
    """Train ``net`` (a key of :data:`CONFIGS`): ``curve``, its training error (%) per epoch, and ``test`` error (%).

    The test error is of the best checkpoint (validation accuracy), on the 10,000 test images.
    """
    data = ("--data.init_args.root", str(fashion_mnist_root(quick)))
    run = fit_run(CONFIGS[net], (*data, *RECORD, *(QUICK if quick else ())), quick=quick)
    return {"curve": training_error_record(run.last), "test": 100 * (1 - run.metrics["test/acc"])}


def final_training_error(net: str, quick: bool) -> float:
    """Training error (%) over the last epoch's batches."""
    return errors(net, quick)["curve"][-1]


def training_error_at(net: str, epoch: int, quick: bool) -> float:
    """Training error (%) over epoch ``epoch``'s batches (1-based); NaN for an epoch the run did not reach (--quick)."""
    curve = errors(net, quick)["curve"]
    return curve[epoch - 1] if epoch <= len(curve) else float("nan")


def error_on_test_set(net: str, quick: bool) -> float:
    """Test error (%) of the best checkpoint."""
    return errors(net, quick)["test"]


def deeper_is_worse(family: str, quick: bool) -> float:
    """1.0 if the 56-layer net of ``family`` ("plain" or "ResNet") ends with the higher training error, else 0.0."""
    return float(final_training_error(f"{family}-56", quick) > final_training_error(f"{family}-20", quick))


def deeper_resnet_not_worse(quick: bool) -> float:
    """1.0 if ResNet-56 ends with a training error no higher than ResNet-20's, else 0.0."""
    return 1.0 - deeper_is_worse("ResNet", quick)


def shortcuts_help_more_when_deeper(quick: bool) -> float:
    """1.0 if plain minus ResNet final training error is larger at depth 56 than at 20, else 0.0."""
    gap = {depth: final_training_error(f"plain-{depth}", quick) - final_training_error(f"ResNet-{depth}", quick)
           for depth in (20, 56)}
    return float(gap[56] > gap[20])


def deeper_resnet_tests_better(quick: bool) -> float:
    """1.0 if ResNet-56's test error is below ResNet-20's (Table 6), else 0.0."""
    return float(error_on_test_set("ResNet-56", quick) < error_on_test_set("ResNet-20", quick))


def _curve_label(net: str, epoch: int) -> str:
    return f"{net} training error (%), epoch {epoch}"


def training_curves(table: Table, results: list[Result]) -> Figure:
    """Fig. 6 (left and middle) as ours: training error per epoch, plain nets dashed, ResNets solid, 56 bold."""
    import matplotlib.pyplot as plt

    by_label = {r.label: r.ours for r in results}
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    figure.suptitle(table.title, fontsize=9)
    for ax, family in zip(axes, ("plain", "ResNet")):
        for depth, color in ((20, "tab:orange"), (56, "tab:red")):
            net = f"{family}-{depth}"
            points = [(epoch, by_label.get(_curve_label(net, epoch))) for epoch in range(1, EPOCHS + 1)]
            points = [(e, v) for e, v in points if v is not None]
            if points:
                ax.plot(*zip(*points), marker="o", color=color, linewidth=2.5 if depth == 56 else 1.2,
                        linestyle="--" if family == "plain" else "-", label=net)
        ax.set_title(f"{family} nets", fontsize=9)
        ax.set_xticks(range(1, EPOCHS + 1))
        ax.set_xlabel(f"epoch ({BATCHES} batches of 128)")
        ax.grid(alpha=0.3)
        if ax.lines:  # a report before any run has nothing to label
            ax.legend(fontsize=8)
    axes[0].set_ylabel("training error (%)")
    figure.tight_layout()
    return figure


_KEY = f"{' '.join(config_key(config) for config in CONFIGS.values())} {RECORD} {QUICK}"


def _row(label: str, paper: float | None, tolerance: float, source: str, measure, model: str | None = None) -> Row:
    return Row(label, paper, tolerance, source, measure, key=_KEY, model=model)


TABLE = Table(
    name="resnet_degradation",
    title="The degradation problem: plain nets vs ResNets at depth 20 and 56 on Fashion-MNIST (1 = yes)",
    unit="1 = yes, or %",
    rows=[
        _row("deeper plain net has the higher training error: plain-56 above plain-20 (1 = yes)", 1.0, 0.5, FIG6,
             partial(deeper_is_worse, "plain"), model="plain56"),
        _row("deeper ResNet's training error not higher: ResNet-56 at or below ResNet-20 (1 = yes)", 1.0, 0.5, FIG6,
             deeper_resnet_not_worse, model="resnet56"),
        _row("shortcuts lower training error more at depth 56 than at 20 (1 = yes)", 1.0, 0.5, FIG6,
             shortcuts_help_more_when_deeper, model="resnet56"),
        _row("deeper ResNet has the lower test error: ResNet-56 below ResNet-20 (1 = yes)", 1.0, 0.5, TABLE6,
             deeper_resnet_tests_better, model="resnet56"),
        *(_row(f"{net} final training error (%)", None, 0.0, "ours", partial(final_training_error, net),
               model=MODELS[net]) for net in CONFIGS),
        *(_row(f"{net} test error (%)", None, 0.0, "ours", partial(error_on_test_set, net), model=MODELS[net])
          for net in CONFIGS),
        *(_row(_curve_label(net, epoch), None, 0.0, "ours", partial(training_error_at, net, epoch),
               model=MODELS[net]) for net in CONFIGS for epoch in range(1, EPOCHS + 1)),
    ],
    notes=f"Ours: the CIFAR nets of the paper (3x3 stem, three stages, option A shortcuts; plain: none) at half "
    f"width (8/16/32 channels) on 28x28 Fashion-MNIST, with the paper's recipe (SGD 0.1, momentum 0.9, weight decay "
    f"1e-4, batch 128, pad-and-crop and flips) for {EPOCHS} epochs of {BATCHES} batches (96,000 images, 1.75 passes "
    "over the 55,000 training images; the paper: 64k iterations, 164 epochs) with a cosine decay. Training error is "
    "over each epoch's batches as the net trained (Fig. 6's thin curves); test error is of the best checkpoint by "
    "validation accuracy, on the 10,000 test images. Table 6's CIFAR-10 test errors (ResNet-20 8.75%, -32 7.51%, "
    "-44 7.17%, -56 6.97%, -110 6.43%) are not comparable to Fashion-MNIST's; the paper gives the plain nets' only "
    "as curves. At this budget the plain nets degrade as in Fig. 6 (plain-56's training error far above plain-20's "
    "from the first epoch on) and the shortcuts close most of that gap, but ResNet-56 has not yet caught up with "
    "ResNet-20, which the paper's nets do over 164 epochs. One seed per net. Fashion-MNIST comes from $RESEARCH_DATA "
    "(a failed row says so when it is missing).",
    plot=training_curves,
    digits=2,
    minutes=9,  # CPU minutes of one thread (49 min wall on the shared 2-core machine)
)
