"""Optimizers and learning-rate schedules shared by every task, and the settings group that selects them.

A task's optimizer and schedule are one typed group, :class:`OptimizerSettings`, that a config sets
in one place (``model.init_args.optim: {lr: 0.1, schedule: cosine}``; on the command line
``--model.init_args.optim.lr 0.1``); :func:`configure_optimization` turns it into what Lightning's
``configure_optimizers`` returns.
"""

from __future__ import annotations

import fnmatch
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Literal

import torch
from timm.optim import param_groups_layer_decay
from torch import nn

if TYPE_CHECKING:
    from lightning import Trainer

OptimizerName = Literal["adamw", "sgd"]
Schedule = Literal["constant", "cosine", "linear", "cyclic", "inverse_sqrt"]


@dataclass(frozen=True)
class OptimizerSettings:
    """How a task optimises: the optimizer, its learning rate and the schedule, as one group.

    Each task has its own defaults (its paper's recipe, e.g. ``MAEPretraining.default_optim``); a
    config or a mapping sets only the fields it changes. Values are checked once, here.

    Attributes:
        name: "adamw" (decoupled weight decay, Loshchilov & Hutter 2019; with ``weight_decay`` 0 it
            is Adam) or "sgd". Biases, norm weights and position embeddings/tokens get no decay.
        lr: peak learning rate. With ``reference_batch`` it is the rate for that many images per
            step; with the "inverse_sqrt" schedule it is the paper's scale (1 in Vaswani et al.).
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        betas: AdamW's betas.
        eps: AdamW's epsilon.
        momentum: SGD's momentum.
        nesterov: SGD's Nesterov momentum.
        layer_decay: layer-wise lr decay for fine-tuning a ViT or Swin (:func:`layer_decay_groups`;
            MAE: 0.65-0.75); None trains every layer at ``lr``.
        reference_batch: the batch ``lr`` is given for: the lr in use is ``lr x effective batch /
            reference_batch``, effective batch = batch x devices x gradient accumulation (the
            linear scaling rule, Goyal et al. 2017; MAE App. A.1: 256). None uses ``lr`` as it is.
        schedule: per optimizer step, "constant"; "cosine" (linear warm-up, then cosine decay to
            ``lr * min_lr_ratio``, :func:`warmup_cosine`); "linear" (warm-up, then linear decay,
            BERT's, :func:`warmup_linear`); "cyclic" (a linear rise to ``lr`` at ``cycle_peak`` of
            the run and a linear fall, Wong et al. 2020, :func:`one_cycle_linear`); "inverse_sqrt"
            (the Transformer's, :func:`inverse_sqrt`).
        warmup_epochs: warm-up length in (fractional) epochs.
        warmup_steps: warm-up length in optimizer steps (give this or ``warmup_epochs``).
        min_lr_ratio: where the cosine, linear and cyclic schedules end, as a fraction of ``lr``.
        cycle_peak: where the cyclic schedule peaks, as a fraction of the run (Wong et al.: 0.4).

    Raises:
        ValueError: a value outside its range or choices, or warm-up given twice or to the cyclic schedule.
    """

    name: OptimizerName = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = False
    layer_decay: float | None = None
    reference_batch: int | None = None
    schedule: Schedule = "constant"
    warmup_epochs: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    cycle_peak: float = 0.4

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(OptimizerSettings)
        for field in fields(self):  # the command line's types check these too; Python callers meet them here
            choices = typing.get_args(hints[field.name]) if typing.get_origin(hints[field.name]) is Literal else ()
            if choices and getattr(self, field.name) not in choices:
                raise ValueError(f"unknown {field.name} {getattr(self, field.name)!r}; choose one of {choices}")
        if min(self.lr, self.weight_decay, self.warmup_epochs, self.warmup_steps) < 0:
            raise ValueError(f"need lr, weight_decay, warmup_epochs and warmup_steps >= 0, got {self}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.schedule == "cyclic" and (self.warmup_epochs or self.warmup_steps):
            raise ValueError("schedule 'cyclic' rises until cycle_peak (a fraction of the run); warmup_epochs and "
                             "warmup_steps are the other schedules': remove them")
        if self.warmup_epochs and self.warmup_steps:
            raise ValueError("give the warm-up in warmup_epochs or in warmup_steps, not both")

    def updated(self, changes: OptimizerSettings | Mapping[str, Any]) -> OptimizerSettings:
        """These settings with ``changes`` applied: settings replace them whole, a mapping changes its fields."""
        if isinstance(changes, OptimizerSettings):
            return changes
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            names = [f.name for f in fields(self)]
            raise ValueError(f"unknown optimizer settings {sorted(unknown)}; the group has {names}")
        return replace(self, **{k: tuple(v) if k == "betas" else v for k, v in changes.items()})


# Parameters that are positions or tokens: no weight decay, whatever their shape. Swin's relative
# position bias tables are position embeddings too (not decayed in the official recipe).
NO_DECAY = ("*pos_embed", "*cls_token", "*mask_token", "*relative_position_bias_table")


def _no_decay(name: str, p: nn.Parameter) -> bool:
    return p.ndim <= 1 or any(fnmatch.fnmatch(name, pattern) for pattern in NO_DECAY)


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters so that biases, norm weights and embeddings/tokens (1-D or flagged) get no decay.

    Decaying a LayerNorm/BatchNorm gain or a bias only shrinks it towards zero without regularising
    the function (Goyal et al. 2017; timm's ``param_groups_weight_decay`` does the same).
    """
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if _no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def layer_decay_groups(module: nn.Module, weight_decay: float, *, lr: float, layer_decay: float) -> list[dict]:
    """Parameter groups with layer-wise learning-rate decay (Clark et al. 2020; BEiT; MAE App. A.3).

    Layer ``i`` of ``L`` (the embeddings are layer 0, the head layer ``L + 1``) learns at
    ``lr * layer_decay ** (L + 1 - i)``, so layers near the input, which pre-training made most
    general, move least. The layers come from the model's ``group_matcher`` (timm's convention, which
    our ViT and Swin follow) and the grouping is timm's ``param_groups_layer_decay``; weight decay
    skips the same parameters as :func:`param_groups`.
    """
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1] (MAE fine-tuning: 0.65-0.75), got {layer_decay}")
    if not hasattr(module, "group_matcher"):
        raise ValueError(
            f"layer_decay needs a model that names its layers through group_matcher() (ViT, Swin); "
            f"{type(module).__name__} has none: leave layer_decay unset"
        )
    groups = param_groups_layer_decay(
        module, weight_decay=weight_decay, no_weight_decay_list=NO_DECAY, layer_decay=layer_decay
    )
    for group in groups:  # torch's schedulers scale each group's own lr; timm's read lr_scale instead
        group["lr"] = lr * group.pop("lr_scale")
    return groups


def build_optimizer(
    module: nn.Module,
    name: OptimizerName,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    nesterov: bool = False,
    layer_decay: float | None = None,
) -> torch.optim.Optimizer:
    """AdamW or SGD over ``module``'s trainable parameters, without weight decay on biases and norms.

    With ``layer_decay``, each layer's learning rate is scaled as in :func:`layer_decay_groups`.
    """
    if layer_decay is None:
        groups = param_groups(module, weight_decay)
    else:
        groups = layer_decay_groups(module, weight_decay, lr=lr, layer_decay=layer_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adamw' or 'sgd'")


def warmup_cosine(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the base LR over ``warmup_steps``, then cosine decay to ``min_lr_ratio``.

    The schedule is stepped once per optimizer step (Goyal et al. 2017 warm-up; Loshchilov & Hutter
    2017 cosine without restarts).
    """
    def cosine(progress: float) -> float:
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return _warmup_then(optimizer, cosine, warmup_steps=warmup_steps, total_steps=total_steps)


def _warmup_then(
    optimizer: torch.optim.Optimizer, decay: Callable[[float], float], *, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, then the factor ``decay(progress)``, progress from 0 to 1 at the end."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = min(warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return decay(min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def run_length(trainer: Trainer, schedule: str) -> int:
    """Optimizer steps in the trainer's whole run, which a ``schedule`` over the run needs to exist."""
    total = trainer.estimated_stepping_batches  # also sets num_training_batches
    if total == float("inf"):
        raise ValueError(f"the {schedule} schedule needs a run length: set trainer.max_epochs or trainer.max_steps")
    return int(total)


def _steps_per_epoch(trainer: Trainer) -> int:
    if trainer.train_dataloader is None:  # estimated_stepping_batches skips loading it when max_epochs=-1
        trainer.fit_loop.setup_data()
    return max(1, trainer.num_training_batches // trainer.accumulate_grad_batches)


def one_cycle_linear(
    optimizer: torch.optim.Optimizer, *, warmup_steps: float, total_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.OneCycleLR:
    """One triangular cycle per run: linear rise from 0 to each group's lr, linear fall to ``lr * min_lr_ratio``.

    The cyclic learning rate of Wong, Rice & Kolter 2020, "Fast is better than free" (arXiv:2001.03994;
    one of the DAWNBench speed-ups they adopt, Smith & Topin 2018's one cycle), as their MNIST code sets it
    (github.com/locuslab/fast_adversarial, ``MNIST/train_mnist.py``, ``--lr-type cyclic``):
    ``np.interp(t, [0, peak, end], [0, lr_max, 0])`` with ``t = epoch + (i + 1) / len(loader)``
    for the i-th batch. In optimizer steps ``s`` (counted from 0) the lr of step ``s`` is
    ``lr * np.interp(s + 1, [0, warmup_steps, total_steps], [0, 1, min_lr_ratio])``, so the
    first step already moves and the last one has ``lr * min_lr_ratio`` (0 in the paper). It is
    torch's ``OneCycleLR`` (linear annealing, two phases, no momentum cycling), which gives
    exactly these values: its rise runs from ``lr / div_factor`` at step 0 to ``lr`` at step
    ``warmup_steps - 1``, so ``div_factor = warmup_steps`` puts the line through 0 at step -1, and
    its fall ends at step ``total_steps - 1`` (tests/tasks/test_optim.py pins the match at every
    step). A peak before the first step (``warmup_steps < 1``, a run of a few steps) leaves only the
    fall, still on the same line. The scheduler's own step after the run's last optimizer step
    leaves the lr one step further down the line, a value no optimizer step uses.

    Args:
        optimizer: its groups' ``lr`` are the peaks (layer-wise lr decay keeps its ratios).
        warmup_steps: optimizer steps up to the peak, in (0, total_steps); need not be whole
            (Wong et al.: 2/5 of the run).
        total_steps: optimizer steps in the run.
        min_lr_ratio: the lr of the last step, as a fraction of the peak.

    Raises:
        ValueError: ``warmup_steps`` not in (0, total_steps), or ``min_lr_ratio`` not in [0, 1].
    """
    if not 0 < warmup_steps < total_steps:
        raise ValueError(
            f"the cyclic schedule needs its peak inside the run: 0 < warmup steps < {total_steps} (the run's "
            f"steps), got {warmup_steps:g}; cycle_peak is a fraction of the run in (0, 1), Wong et al. use 0.4"
        )
    if not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"min_lr_ratio must lie in [0, 1], got {min_lr_ratio}")
    if warmup_steps == 1:  # OneCycleLR's rise would last 0 steps (0 / 0): put the peak a hair later
        warmup_steps = 1 + 1e-9  # the lr moves by < 1e-9 of the peak
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=total_steps,
        pct_start=float(warmup_steps / total_steps),
        anneal_strategy="linear",
        cycle_momentum=False,  # Adam's betas (SGD's momentum) stay as configured, as in Wong et al.'s code
        div_factor=float(warmup_steps),
        # OneCycleLR's last lr is lr / div_factor / final_div_factor: infinity gives exactly 0.
        final_div_factor=math.inf if min_lr_ratio == 0 else 1 / (min_lr_ratio * warmup_steps),
        three_phase=False,
    )


def one_cycle_over_run(
    trainer: Trainer, optimizer: torch.optim.Optimizer, *, peak: float, min_lr_ratio: float
) -> torch.optim.lr_scheduler.OneCycleLR:
    """:func:`one_cycle_linear` over the trainer's whole run, peaking after the fraction ``peak`` of its steps.

    A fraction, not epochs, as in Wong et al.'s code (the peak at ``epochs * 2 // 5``): a run
    shortened from the command line keeps the shape of its cycle.
    """
    if not 0 < peak < 1:
        raise ValueError(f"cycle_peak is where the lr peaks as a fraction of the run, in (0, 1) (Wong et al.: 0.4), "
                         f"got {peak}")
    total = run_length(trainer, "cyclic")
    return one_cycle_linear(optimizer, warmup_steps=peak * total, total_steps=total, min_lr_ratio=min_lr_ratio)


def warmup_linear(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the base LR over ``warmup_steps``, then linear decay to ``min_lr_ratio``.

    BERT's schedule (Devlin et al. 2019, App. A.2: "learning rate warmup over the first 10,000
    steps, and linear decay of the learning rate"), stepped once per optimizer step; the LR reaches
    ``lr * min_lr_ratio`` at ``total_steps`` and stays there.
    """
    def linear(progress: float) -> float:
        return 1.0 - (1.0 - min_lr_ratio) * progress

    return _warmup_then(optimizer, linear, warmup_steps=warmup_steps, total_steps=total_steps)


def inverse_sqrt(
    optimizer: torch.optim.Optimizer, *, d_model: int, warmup_steps: int, scale: float = 1.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """The Transformer's schedule: lr = scale * d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5).

    Vaswani et al. 2017, Sec. 5.3, Eq. 3: linear warm-up over ``warmup_steps`` (4,000 in the paper),
    then decay with the inverse square root of the step; the peak, at ``step = warmup_steps``, is
    ``scale * (d_model * warmup_steps)^-0.5``. ``step`` counts optimizer steps from 1. The factor is
    the learning rate itself, so give the optimizer ``lr=1.0`` (any other base LR multiplies it).
    """
    if d_model < 1 or warmup_steps < 1 or scale <= 0:
        raise ValueError(
            f"need d_model >= 1, warmup_steps >= 1 and scale > 0, got {d_model}, {warmup_steps}, {scale}; "
            "the paper uses warmup_steps=4000, scale=1"
        )

    def factor(step: int) -> float:
        step += 1  # LambdaLR counts from 0; Eq. 3 from 1 (step^-0.5 is infinite at 0)
        return scale * d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def effective_batch_size(trainer: Trainer) -> int:
    """Examples per optimizer step: batch x devices x gradient accumulation (MAE App. A.1's "batch size")."""
    if trainer.train_dataloader is None:  # configure_optimizers runs before the loop loads it
        trainer.fit_loop.setup_data()
    loader = trainer.train_dataloader
    # a loader built on a batch sampler (research.data.loaders: seeded batches) has batch_size None
    batch_size = getattr(loader, "batch_size", None) or getattr(getattr(loader, "batch_sampler", None),
                                                                 "batch_size", None)
    if batch_size is None:
        raise ValueError("cannot tell the training batch size (the train loader has no batch_size); "
                         "set optim.reference_batch: null and give the learning rate itself in optim.lr")
    return batch_size * trainer.world_size * trainer.accumulate_grad_batches


def learning_rate(settings: OptimizerSettings, trainer: Trainer | None) -> float:
    """The peak learning rate in use: ``settings.lr``, scaled to the effective batch when ``reference_batch`` is set."""
    if settings.reference_batch is None:
        return settings.lr
    return settings.lr * effective_batch_size(_needs(trainer, "reference_batch")) / settings.reference_batch


def configure_optimization(
    module: nn.Module,
    settings: OptimizerSettings,
    trainer: Trainer | None,
    *,
    lr: float,
    d_model: int | None = None,
) -> torch.optim.Optimizer | dict:
    """The optimizer over ``module`` and its per-step schedule, as Lightning's ``configure_optimizers`` returns them.

    Args:
        module: whose trainable parameters are optimised.
        settings: the optimizer and schedule.
        trainer: the run; the schedules over the run ("cosine", "linear", "cyclic") and a warm-up
            in epochs read its length from it.
        lr: the peak learning rate in use (:func:`learning_rate`).
        d_model: the model width of the "inverse_sqrt" schedule.

    Returns:
        The optimizer alone for the "constant" schedule, else ``{"optimizer", "lr_scheduler"}``
        with the scheduler stepped every optimizer step.
    """
    s = settings
    optimizer = build_optimizer(module, s.name, lr=lr, weight_decay=s.weight_decay, momentum=s.momentum,
                                betas=tuple(s.betas), eps=s.eps, nesterov=s.nesterov, layer_decay=s.layer_decay)
    if s.schedule == "constant":
        return optimizer
    if s.schedule == "inverse_sqrt":
        if d_model is None:
            raise ValueError("the inverse_sqrt schedule needs the model's width d_model; the model has no 'dim' "
                             "attribute: set model_dim in the task's config")
        scheduler = inverse_sqrt(optimizer, d_model=d_model, warmup_steps=s.warmup_steps)
    elif s.schedule == "cyclic":
        scheduler = one_cycle_over_run(_needs(trainer, "cyclic"), optimizer, peak=s.cycle_peak,
                                       min_lr_ratio=s.min_lr_ratio)
    else:
        trainer = _needs(trainer, s.schedule)
        total = run_length(trainer, s.schedule)
        warmup = round(s.warmup_epochs * _steps_per_epoch(trainer)) if s.warmup_epochs else s.warmup_steps
        decay = warmup_cosine if s.schedule == "cosine" else warmup_linear
        scheduler = decay(optimizer, warmup_steps=warmup, total_steps=total, min_lr_ratio=s.min_lr_ratio)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _needs(trainer: Trainer | None, what: str) -> Trainer:
    if trainer is None:
        raise ValueError(f"the {what} setting needs the run's length: fit the task with a Trainer")
    return trainer
