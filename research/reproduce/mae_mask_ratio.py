"""Table: MAE's mask ratio against linear-probe accuracy (He et al. 2022, Figure 5).

He, Chen, Xie, Li, Dollar & Girshick, "Masked Autoencoders Are Scalable Vision Learners" (CVPR 2022,
arXiv:2111.06377), Figure 5: ViT-L pre-trained on ImageNet at mask ratios 10%-90%; linear probing
"increases steadily with the masking ratio until the sweet point" of 75% (73.5%, also their Table 1's
default), while fine-tuning is flat from 40% to 80%. We do not trust ourselves to read the other points
off the plot, so the claim checked is the trend: of the ratios {0.25, 0.5, 0.75, 0.9}, the probe is
best at a high ratio and improves from 0.25 to 0.75.

Ours pre-trains the small MAE of configs/mae/fashion_mnist_pretrain.yaml on Fashion-MNIST at each ratio
and probes its frozen encoder with configs/mae/fashion_mnist_linprobe.yaml, both with a CPU budget.
Fashion-MNIST is not shipped: set ``RESEARCH_DATA`` (see :func:`research.reproduce.runs.fashion_mnist_root`).
"""

from __future__ import annotations

import functools
from functools import partial

from research.reproduce.plots import curve
from research.reproduce.runs import config_key, fashion_mnist_root, fit_run, quick_data
from research.reproduce.table import Row, Table

PRETRAIN = "mae/fashion_mnist_pretrain.yaml"
PROBE = "mae/fashion_mnist_linprobe.yaml"
RATIOS = (0.25, 0.5, 0.75, 0.9)
# A CPU budget: 50 batches of 256 (12,800 images) an epoch, 6 epochs of pre-training and 3 of probing.
BATCHES, PRETRAIN_EPOCHS, PROBE_EPOCHS = 50, 6, 3
PAPER = "He et al. 2022, Figure 5 (trend; ViT-L, ImageNet)"


def _budget(epochs: int) -> tuple[str, ...]:
    return ("--trainer.max_epochs", str(epochs), "--trainer.limit_train_batches", str(BATCHES),
            "--trainer.limit_val_batches", "10")


@functools.cache
def probe_accuracy(ratio: float, quick: bool) -> float:
    """Pre-train at mask ``ratio``, then linear-probe the encoder: test accuracy (%)."""
    data = ("--data.init_args.root", str(fashion_mnist_root(quick)))
    data += quick_data(quick, batch_size=32)  # quick: steps of 32 images, not 256
    pretrain = fit_run(PRETRAIN, (*data, *_budget(PRETRAIN_EPOCHS), "--model.init_args.mask_ratio", str(ratio),
                                  "--trainer.callbacks", "[]"), quick=quick)
    if not pretrain.last:
        raise FileNotFoundError(f"pre-training at mask ratio {ratio} wrote no checkpoint")
    probe = fit_run(PROBE, (*data, *_budget(PROBE_EPOCHS), "--model.init_args.pretrained", pretrain.last),
                    quick=quick)
    return 100 * probe.metrics["test/acc"]


def _accuracy(ratio: float, quick: bool) -> float:
    return probe_accuracy(ratio, quick)


def _label(ratio: float) -> str:
    return f"linear-probe test accuracy (%) at mask {ratio}"


def best_ratio(quick: bool) -> float:
    """The mask ratio whose encoder probes best."""
    return max(RATIOS, key=lambda ratio: probe_accuracy(ratio, quick))


def improves(quick: bool) -> float:
    """1.0 if the probe is better after pre-training at 0.75 than at 0.25, else 0.0."""
    return float(probe_accuracy(0.75, quick) > probe_accuracy(0.25, quick))


_KEY = f"{config_key(PRETRAIN)} {config_key(PROBE)} {RATIOS} {BATCHES}x{PRETRAIN_EPOCHS}+{PROBE_EPOCHS}"

TABLE = Table(
    name="mae_mask_ratio",
    title="MAE mask ratio vs linear probing, small MAE on Fashion-MNIST",
    unit="ratio, or 1 = yes",
    rows=[
        Row("mask ratio with the best linear probe, of 0.25/0.5/0.75/0.9", 0.75, 0.0, PAPER, best_ratio, key=_KEY,
            model="mae_vit_tiny_patch4_28"),
        Row("probe better at mask 0.75 than at 0.25 (1 = yes)", 1.0, 0.5, PAPER, improves, key=_KEY,
            model="mae_vit_tiny_patch4_28"),
        *(
            Row(_label(ratio), None, 0.0, "ours", partial(_accuracy, ratio),
                key=_KEY, model="mae_vit_tiny_patch4_28")
            for ratio in RATIOS
        ),
    ],
    notes=f"Ours: the 4x4-patch MAE (width 128, 4 blocks) of configs/mae/fashion_mnist_pretrain.yaml, "
    f"{PRETRAIN_EPOCHS} epochs of {BATCHES} batches of 256 Fashion-MNIST images at each ratio (the paper: 800-1600 "
    f"ImageNet epochs), then a linear probe of its frozen encoder for {PROBE_EPOCHS} such epochs; accuracy on the "
    "10,000 test images. Fashion-MNIST comes from $RESEARCH_DATA (a failed row says so when it is missing).",
    plot=partial(curve, x={_label(ratio): ratio for ratio in RATIOS}, xlabel="mask ratio",
                 ylabel="linear-probe test accuracy (%)", paper_x=0.75),
    minutes=17,
)
