"""Table: MAE's mask ratio against linear-probe and fine-tuning accuracy (He et al. 2022, Figure 5).

He, Chen, Xie, Li, Dollar & Girshick, "Masked Autoencoders Are Scalable Vision Learners" (CVPR 2022,
arXiv:2111.06377), Figure 5: ViT-L pre-trained on ImageNet at mask ratios 10%-90%; linear probing
"increases steadily with the masking ratio until the sweet point" of 75% (73.5%, also their Table 1's
default), while fine-tuning is flat from 40% to 80% (about a point over the whole range, against some 20
for the probe). We do not trust ourselves to read the other points off the plot, so the claims checked
are trends: of the ratios {0.25, 0.5, 0.75, 0.9}, the probe is best at a high ratio and improves from
0.25 to 0.75, and fine-tuning varies less over the ratios than the probe does.

Ours pre-trains the small MAE of configs/mae/fashion_mnist_pretrain.yaml on Fashion-MNIST at each ratio,
probes its frozen encoder with configs/mae/fashion_mnist_linprobe.yaml and fine-tunes it with
configs/mae/fashion_mnist_finetune.yaml, all with a CPU budget. Fashion-MNIST is not shipped: set
``RESEARCH_DATA`` (see :func:`research.reproduce.runs.fashion_mnist_root`).
"""

from __future__ import annotations

import functools
from functools import partial

from research.reproduce.mae_design import budget, fashion_data
from research.reproduce.plots import curve
from research.reproduce.runs import config_key, fit_run
from research.reproduce.table import Row, Table

PRETRAIN = "mae/fashion_mnist_pretrain.yaml"
PROBE = "mae/fashion_mnist_linprobe.yaml"
FINETUNE = "mae/fashion_mnist_finetune.yaml"
RATIOS = (0.25, 0.5, 0.75, 0.9)
# A CPU budget: 50 batches of 256 (12,800 images) an epoch, 6 epochs of pre-training and 3 of probing; fine-tuning
# 2 epochs of 75 batches of 128 (19,200 images).
BATCHES, PRETRAIN_EPOCHS, PROBE_EPOCHS = 50, 6, 3
FINETUNE_EPOCHS, FINETUNE_BATCHES = 2, 75
# The fine-tuning recipe of the config (the paper's, its Table 9) for 150 steps: the warm-up cut from 5 epochs to
# half of one, and without mixup and cutmix, regularisers of a 100-epoch schedule under which 150 steps end below
# the linear probe (the mae_design table's fine-tuning rows, with them: 48-52% against probes of 70-71%).
FINETUNE_RECIPE = ("--model.init_args.optim.warmup_epochs", "0.5", "--model.init_args.mixup_alpha", "0.0",
                   "--model.init_args.cutmix_alpha", "0.0")
PAPER = "He et al. 2022, Figure 5 (trend; ViT-L, ImageNet)"


@functools.cache
def pretrained(ratio: float, quick: bool) -> str:
    """Pre-train at mask ``ratio``; the path of the last checkpoint."""
    run = fit_run(PRETRAIN, (*fashion_data(quick), *budget(PRETRAIN_EPOCHS), "--model.init_args.mask_ratio", str(ratio),
                             "--trainer.callbacks", "[]"), quick=quick)
    if not run.last:
        raise FileNotFoundError(f"pre-training at mask ratio {ratio} wrote no checkpoint")
    return run.last


@functools.cache
def probe_accuracy(ratio: float, quick: bool) -> float:
    """Pre-train at mask ``ratio``, then linear-probe the encoder: test accuracy (%)."""
    probe = fit_run(PROBE, (*fashion_data(quick), *budget(PROBE_EPOCHS), "--model.init_args.pretrained",
                            pretrained(ratio, quick)), quick=quick)
    return 100 * probe.metrics["test/acc"]


@functools.cache
def finetune_accuracy(ratio: float, quick: bool) -> float:
    """Pre-train at mask ``ratio``, then fine-tune the whole encoder (:data:`FINETUNE_RECIPE`): test accuracy (%)."""
    run = fit_run(FINETUNE, (*fashion_data(quick), *budget(FINETUNE_EPOCHS, FINETUNE_BATCHES), *FINETUNE_RECIPE,
                             "--model.init_args.pretrained", pretrained(ratio, quick)), quick=quick)
    return 100 * run.metrics["test/acc"]


def _label(ratio: float) -> str:
    return f"linear-probe test accuracy (%) at mask {ratio}"


def _finetune_label(ratio: float) -> str:
    return f"fine-tuned test accuracy (%) at mask {ratio}"


def best_ratio(quick: bool) -> float:
    """The mask ratio whose encoder probes best."""
    return max(RATIOS, key=lambda ratio: probe_accuracy(ratio, quick))


def improves(quick: bool) -> float:
    """1.0 if the probe is better after pre-training at 0.75 than at 0.25, else 0.0."""
    return float(probe_accuracy(0.75, quick) > probe_accuracy(0.25, quick))


def _spread(accuracy, quick: bool) -> float:
    values = [accuracy(ratio, quick) for ratio in RATIOS]
    return max(values) - min(values)


def finetuning_flatter(quick: bool) -> float:
    """1.0 if fine-tuned accuracy varies less over :data:`RATIOS` (max - min) than the probe's, else 0.0."""
    return float(_spread(finetune_accuracy, quick) < _spread(probe_accuracy, quick))


_KEY = f"{config_key(PRETRAIN)} {config_key(PROBE)} {RATIOS} {BATCHES}x{PRETRAIN_EPOCHS}+{PROBE_EPOCHS}"
_FINETUNE_KEY = f"{_KEY} {config_key(FINETUNE)} {FINETUNE_EPOCHS}x{FINETUNE_BATCHES} {FINETUNE_RECIPE}"

TABLE = Table(
    name="mae_mask_ratio",
    title="MAE mask ratio vs linear probing and fine-tuning, small MAE on Fashion-MNIST",
    unit="ratio, or 1 = yes",
    rows=[
        Row("mask ratio with the best linear probe, of 0.25/0.5/0.75/0.9", 0.75, 0.0, PAPER, best_ratio, key=_KEY,
            model="mae_vit_tiny_patch4_28"),
        Row("probe better at mask 0.75 than at 0.25 (1 = yes)", 1.0, 0.5, PAPER, improves, key=_KEY,
            model="mae_vit_tiny_patch4_28"),
        Row("fine-tuning varies less over the four ratios than the probe, max - min (1 = yes)", 1.0, 0.5, PAPER,
            finetuning_flatter, key=_FINETUNE_KEY, model="mae_vit_tiny_patch4_28"),
        *(
            Row(_label(ratio), None, 0.0, "ours", partial(probe_accuracy, ratio),
                key=_KEY, model="mae_vit_tiny_patch4_28")
            for ratio in RATIOS
        ),
        *(
            Row(_finetune_label(ratio), None, 0.0, "ours", partial(finetune_accuracy, ratio),
                key=_FINETUNE_KEY, model="mae_vit_tiny_patch4_28")
            for ratio in RATIOS
        ),
    ],
    notes=f"Ours: the 4x4-patch MAE (width 128, 4 blocks) of configs/mae/fashion_mnist_pretrain.yaml, "
    f"{PRETRAIN_EPOCHS} epochs of {BATCHES} batches of 256 Fashion-MNIST images at each ratio (the paper: 800-1600 "
    f"ImageNet epochs), then a linear probe of its frozen encoder for {PROBE_EPOCHS} such epochs, and, from the same "
    f"checkpoint, end-to-end fine-tuning with configs/mae/fashion_mnist_finetune.yaml (the paper's recipe, layer-wise "
    f"lr decay 0.75) for {FINETUNE_EPOCHS} epochs of {FINETUNE_BATCHES} batches of 128, its warm-up cut to half an "
    "epoch and without mixup and cutmix (regularisers of a 100-epoch schedule: with them, 150 steps ended below the "
    "linear probe in the mae_design table). Accuracy on the 10,000 test images, one seed a ratio. Measured "
    "(2026-11-30): even so, 150 steps leave every fine-tuned encoder below its linear probe (56-58% against 71-73%; "
    "the fine-tuned model holds the pre-trained encoder's weights, tensor for tensor, checked), so the fine-tuning "
    "rows compare early learning, where accuracy still rises with the mask ratio (by 2.1 points from 0.25 to 0.9, "
    "the probe by 1.9): the trend row reads 0, and a longer fine-tuning is what Figure 5's flat curve needs. "
    "Fashion-MNIST comes from $RESEARCH_DATA (a failed row says so when it is missing).",
    plot=partial(curve, x={**{_label(ratio): ("linear probe", ratio) for ratio in RATIOS},
                           **{_finetune_label(ratio): ("fine-tuned", ratio) for ratio in RATIOS}},
                 xlabel="mask ratio", ylabel="test accuracy (%)", paper_x=0.75),
    minutes=21,  # CPU minutes of one thread: 4 pre-trainings, probes and fine-tunings
)
