"""What every task shares: optimizer settings, fitting the model to its data, checkpoint checks, image normalisation.

A task subclasses :class:`Task` and says only what is new: its loss, metrics and steps, its
default :class:`~research.tasks.optim.OptimizerSettings` (``default_optim``) and, when the model
must match the data, :meth:`Task.fit_to_data` (with ``sizes_from_data``/``data_sizes`` when the
model's sizes come from the data, such as a tokenizer's vocabulary). Image tasks subclass
:class:`ImageTask`, which keeps the per-channel mean/std that turns [0, 1] images into model input
(ARCHITECTURE.md: the task normalises, so an attack's epsilon is in pixel units).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor, nn

from research.models import build_model
from research.models.protocols import require
from research.tasks.checks import check_checkpoint
from research.tasks.optim import OptimizerSettings, configure_optimization, learning_rate
from research.tasks.sharding import shard_task

log = logging.getLogger(__name__)


def clear_weight_sources(task: type, arguments: Any) -> dict[str, str]:
    """Set to None, in a task's arguments, the files its weights would start from; return what they named.

    Those are ``task.weight_sources`` (named as they are) and a model spec's ``pretrained`` (named
    ``model_pretrained``). ``arguments``: the task's constructor arguments as a mutable mapping (a
    checkpoint's hyperparameters, a config's ``init_args``). A changed spec is a new dict: a
    checkpoint's hyperparameters are a shallow copy of the live ones.
    """
    cleared = {}
    for name in getattr(task, "weight_sources", ()):
        if arguments.get(name) is not None:
            cleared[name], arguments[name] = arguments[name], None
    spec = arguments.get("model")
    if isinstance(spec, Mapping) and spec.get("pretrained") is not None:
        cleared["model_pretrained"], arguments["model"] = spec["pretrained"], {**spec, "pretrained": None}
    return cleared


class Task(L.LightningModule):
    """A LightningModule with one optimizer group, one hook that fits the model to the data, and checkpoint checks.

    Args:
        optim: the optimizer and schedule: :class:`OptimizerSettings`, or a mapping of the fields
            that differ from the task's ``default_optim`` (as a config gives them, or a
            checkpoint's hyperparameters).
        compile: compile the model's forward with ``torch.compile`` when the Trainer starts: True
            with torch's defaults, or a mapping of ``torch.compile`` arguments (``{"mode":
            "max-autotune-no-cudagraphs"}``). The model is compiled in place (``nn.Module.compile``),
            so its parameter names and checkpoints are those of the eager model, and everything
            that calls it (the task's steps, the attack callbacks' forward and backward) runs the
            compiled code; its other methods (``forward_features``, decoding) stay eager.

    Raises:
        ValueError: ``compile`` is neither a bool nor a mapping of ``torch.compile`` arguments.
    """

    #: the task's recipe; a config's ``optim`` changes single fields of it.
    default_optim: ClassVar[OptimizerSettings] = OptimizerSettings()
    #: metric and mode that ModelCheckpoint uses to keep the best checkpoint.
    checkpoint_monitor: ClassVar[tuple[str | None, str]] = ("val/loss", "min")
    #: model-spec keys that the data knows (a tokenizer's vocab_size, ...): a spec without them is
    #: built when the Trainer starts (:meth:`build_sized`), and checkpoints record the values.
    sizes_from_data: ClassVar[tuple[str, ...]] = ()
    #: the protocol of research.models.protocols that the model implements, and how a message names
    #: such a model; None takes any module.
    model_contract: ClassVar[tuple[type, str] | None] = None
    #: hyperparameters naming a checkpoint file that only initialises weights (``pretrained``, a
    #: distillation teacher), as does a model spec's own ``pretrained``: see :meth:`on_save_checkpoint`.
    weight_sources: ClassVar[tuple[str, ...]] = ()

    def __init__(self, optim: OptimizerSettings | Mapping[str, Any], *,
                 compile: bool | Mapping[str, Any] = False) -> None:
        super().__init__()
        self.optim = self.default_optim.updated(optim)
        self.compile_kwargs = compile_arguments(compile)
        self.lr: float | None = None  # the peak learning rate in use, set by configure_optimizers
        # The arguments of every constructor up to here are the hyperparameters, but for modules given
        # as such (their weights are in the checkpoint) and with optim whole, as a plain dict (so a
        # checkpoint loads with weights_only).
        caller, frames = inspect.currentframe().f_back, []
        while caller is not None and caller.f_locals.get("self") is self:
            frames.append(caller)
            caller = caller.f_back
        modules = {name for f in frames for name, value in f.f_locals.items()
                   if isinstance(value, nn.Module) and value is not self}
        self.save_hyperparameters(ignore=sorted(modules), frame=frames[0])
        self.hparams["optim"] = self._hparams_initial["optim"] = asdict(self.optim)

    @property
    def datamodule(self) -> L.LightningDataModule | None:
        """The datamodule of the trainer running this task, if any."""
        return getattr(self._trainer, "datamodule", None)

    def configure_model(self) -> None:
        """Fit the model to the data (:meth:`fit_to_data`) when the Trainer starts.

        Lightning calls this hook after the datamodule's ``setup`` (so its sizes and statistics are
        known) and before a checkpoint's weights are restored (so a model built here from the
        data's sizes receives them), at every ``fit``/``validate``/``test``; it is also where
        sharded training wraps the model. ``setup`` would come at the same point but is not
        where sharding happens, so one hook serves both. The Trainer calls it with the accelerator as
        the default device; :meth:`fit_to_data` runs with the task's own device instead (where its
        weights are until the strategy moves them), as in ``setup``: a datamodule that computes its
        statistics on first use, and the dry forward of an image task, stay beside their tensors.
        """
        with torch.device(self.device):
            self.fit_to_data(self.datamodule)
        if self.device_mesh is not None:  # ModelParallelStrategy: shard the model built above (FSDP2)
            shard_task(self)
        self.prepare_execution()

    def prepare_execution(self) -> None:
        """Put the model in the form it runs in, last in :meth:`configure_model`: compiled when ``compile`` asks.

        Compiling comes after anything that wraps the model's modules (sharding), as Lightning's
        guide to compiling under ``ModelParallelStrategy`` says. Idempotent: a later
        ``fit``/``validate``/``test`` keeps the compiled model (and its cache).
        """
        # nn.Module.compile sets _compiled_call_impl; compiling twice would throw the compiled code away
        model = getattr(self, "model", None)  # a GAN has two networks and no model
        if self.compile_kwargs is not None and model is not None and model._compiled_call_impl is None:
            model.compile(**self.compile_kwargs)

    def fit_to_data(self, datamodule: L.LightningDataModule | None) -> None:
        """Build what depends on the data and check that the model fits it; a mismatch stops here with what to change.

        Called once per run (and again by each later ``fit``/``validate``/``test``: idempotent).
        ``datamodule`` is None when the task runs on bare dataloaders. Builds a model that waits for
        sizes from the data (:meth:`build_sized`), then runs :meth:`check_data`.
        """
        if self.sizes_from_data:
            self.build_sized(datamodule)
        if datamodule is not None:
            self.check_data(datamodule)

    def check_data(self, datamodule: L.LightningDataModule) -> None:
        """Stop, saying what to change, when the model does not fit ``datamodule``; by default nothing is checked."""

    def init_model(self, model: nn.Module | dict | str) -> None:
        """Build the model now, or leave it to :meth:`build_sized` when its spec lacks one of ``sizes_from_data``."""
        self.model: nn.Module | None = None
        if isinstance(model, nn.Module) or (isinstance(model, dict) and set(self.sizes_from_data) <= set(model)):
            self.build(model)

    def build(self, spec: nn.Module | dict | str) -> None:
        """Build the model from ``spec``, check it against ``model_contract``, then :meth:`build_metrics`.

        Raises:
            ValueError: an unknown model name, or a model that lacks a member of the contract.
        """
        model = build_model(spec)
        if self.model_contract is not None:
            protocol, kind = self.model_contract
            require(model, protocol, f"{type(self).__name__} needs {kind}")
        self.model = model
        self.build_metrics()

    def build_metrics(self) -> None:
        """Build what depends on the model's sizes (its metrics), once the model exists; by default nothing."""

    def build_sized(self, datamodule: L.LightningDataModule | None) -> None:
        """Build the model, unless built, from its spec completed with the sizes the data knows (:meth:`data_sizes`)."""
        if self.model is None:
            spec = self.hparams.model
            spec = {**self.data_sizes(datamodule), **({"name": spec} if isinstance(spec, str) else spec)}
            self.hparams["model"] = spec  # checkpoints record the sizes, so they load without the data
            self.build(spec)

    def data_sizes(self, datamodule: L.LightningDataModule | None) -> dict[str, Any]:
        """The model-spec values ``datamodule`` knows; raises, naming what to add to the spec, when it knows too few."""
        raise NotImplementedError(f"{type(self).__name__} takes no sizes from the data")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the files the weights started from as a record only: ``<name>_from``, the hyperparameter set to None.

        A checkpoint holds every weight, so rebuilding the task from it (``load_from_checkpoint``,
        ``--ckpt_path``) must not read the file a run started from, which may be gone or moved.
        Covers the task's :attr:`weight_sources` and the model spec's ``pretrained`` (recorded as
        ``model_pretrained_from``).
        """
        cleared = clear_weight_sources(type(self), checkpoint.get("hyper_parameters") or {})
        checkpoint.update({f"{name}_from": path for name, path in cleared.items()})

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint of another model stops here with a readable message, before torch's strict load."""
        check_checkpoint(self, checkpoint)

    def optimized_module(self) -> nn.Module:
        """The module whose trainable parameters the optimizer steps; the task's ``model`` by default."""
        return self.model

    def configure_optimizers(self):
        self.lr = learning_rate(self.optim, self._trainer)
        if self.optim.reference_batch is not None:
            log.info("learning rate %.3g = %.3g x effective batch / %d", self.lr, self.optim.lr,
                     self.optim.reference_batch)
        module = self.optimized_module()
        return configure_optimization(module, self.optim, self._trainer, lr=self.lr, d_model=self.model_width())

    def model_width(self) -> int | None:
        """d_model of the "inverse_sqrt" schedule: the model's ``dim`` when it has one."""
        return getattr(self.model, "dim", None)


def compile_arguments(compile: bool | Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``torch.compile`` keyword arguments that a task's ``compile`` option asks for; None for no compiling.

    Raises:
        ValueError: ``compile`` is neither a bool nor a mapping, or names an argument ``torch.compile`` lacks.
    """
    if isinstance(compile, bool):
        return {} if compile else None
    if not isinstance(compile, Mapping):
        raise ValueError(f"compile must be true/false or a mapping of torch.compile arguments, got {compile!r}")
    known = [name for name in inspect.signature(torch.compile).parameters if name != "model"]
    unknown = sorted(set(compile) - set(known))
    if unknown:
        raise ValueError(f"compile: torch.compile takes no argument {unknown[0]!r}; it takes {', '.join(known)}")
    return dict(compile)


_ADVICE = ("Build the model for these images (in_chans/img_size in its config) or convert the images "
           "(data in_chans/img_size).")


class ImageTask(Task):
    """A task on images in [0, 1] that normalises them itself, with the per-channel mean/std of its data.

    The statistics come from the task's arguments or, when those are None, from the datamodule
    when the Trainer starts; they are hyperparameters (a checkpoint rebuilds them), held as
    non-persistent buffers. A task of CNNs can run in ``channels_last`` memory format
    (:meth:`init_memory_format`).
    """

    mean: Tensor
    std: Tensor
    #: the memory format of the model's 4-D weights and of the normalised input batches.
    memory_format: torch.memory_format = torch.contiguous_format

    def init_memory_format(self, channels_last: bool) -> None:
        """Run in ``torch.channels_last`` memory format (NHWC) when ``channels_last``, from the next Trainer start.

        Convolutions run faster in it on GPUs (tensor cores) and on CPUs (oneDNN). Values are the
        same, only the strides change, so checkpoints are unaffected. Lightning has no flag for it
        (timm's ``--channels-last`` does the same): the model is converted in :meth:`prepare_execution`
        and the input in :meth:`normalize`.
        """
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def prepare_execution(self) -> None:
        """Convert the model to ``channels_last`` when asked, then compile it (:meth:`Task.prepare_execution`)."""
        if self.memory_format is torch.channels_last and self.model is not None:
            self.model.to(memory_format=torch.channels_last)  # in place; only 4-D tensors change
        super().prepare_execution()

    def init_normalization(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        """Keep ``mean``/``std`` (C,) as (C, 1, 1) buffers; None for both leaves images as they are until data has them.

        Raises:
            ValueError: only one of the two is given.
        """
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither (then the datamodule's are used)")
        for name, value in (("mean", mean), ("std", std)):
            stats = torch.tensor(value, dtype=torch.float32, device=self.device) if value else \
                torch.zeros(0, device=self.device)
            self.register_buffer(name, stats.view(-1, 1, 1), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        """Model input for images in [0, 1]: ``(images - mean) / std`` per channel, in the task's memory format.

        Shape: (B, C, H, W), unchanged.
        """
        if self.memory_format is torch.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)  # the arithmetic below keeps the strides
        return (images - self.mean) / self.std if self.mean.numel() else images

    def denormalize(self, x: Tensor) -> Tensor:
        """Images in the [0, 1] scale for model input ``x``, the inverse of :meth:`normalize`. Shape: (B, C, H, W)."""
        return x * self.std + self.mean if self.mean.numel() else x

    def fit_to_data(self, datamodule: L.LightningDataModule | None) -> None:
        """:meth:`check_data`, adopt the datamodule's mean/std unless given, run the model on a blank image."""
        super().fit_to_data(datamodule)
        if datamodule is None:
            return
        if not self.mean.numel() and getattr(datamodule, "mean", None) is not None:
            self.hparams["mean"], self.hparams["std"] = tuple(datamodule.mean), tuple(datamodule.std)  # in checkpoints
            self.init_normalization(datamodule.mean, datamodule.std)
        image = self.blank_image(datamodule)
        if image is not None:
            self.check_output(self.dry_forward(self.dry_run, image))

    def blank_image(self, datamodule: L.LightningDataModule) -> Tensor | None:
        """A (1, C, H, W) zero image of the datamodule's shape (None when it does not say), where the weights are.

        Raises:
            ValueError: mean/std of another channel count than the images.
        """
        in_chans, img_size = getattr(datamodule, "in_chans", None), getattr(datamodule, "img_size", None)
        if in_chans is None or img_size is None:
            return None
        if self.mean.numel() and self.mean.numel() != in_chans:
            raise ValueError(f"mean/std have {self.mean.numel()} channels but the images have {in_chans}")
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        weight = next(self.parameters())
        return torch.zeros(1, in_chans, h, w, dtype=weight.dtype, device=weight.device)

    def dry_forward(self, run: Callable[[Tensor], Any], image: Tensor, *, who: str = "the model",
                    advice: str = _ADVICE) -> Any:
        """``run(image)`` in eval mode without gradients, each module's mode restored after: fail here, not mid-run.

        Raises:
            ValueError: ``run`` fails; the message names the image shape, the error and ``advice``.
        """
        modes = [(m, m.training) for m in self.modules()]
        self.eval()  # no BatchNorm statistics move
        try:
            with torch.no_grad():
                return run(image)
        except (ValueError, RuntimeError) as err:
            raise ValueError(
                f"{who} cannot take this data's images (shape (B, {', '.join(map(str, image.shape[1:]))})): {err}\n"
                f"{advice}"
            ) from err
        finally:
            for m, training in modes:
                m.training = training

    def dry_run(self, image: Tensor) -> Any:
        """What :meth:`fit_to_data` runs on the blank image: the task's model on the normalised image."""
        return self.model(self.normalize(image))

    def check_output(self, output: Any) -> None:
        """Check what :meth:`dry_run` returned; the default accepts anything."""
