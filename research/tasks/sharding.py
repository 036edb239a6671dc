"""Sharded data-parallel training with FSDP2: every process holds a shard of the weights, gradients and optimizer state.

Sources: PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``; Zhao et al. 2023, "PyTorch FSDP:
Experiences on Scaling Fully Sharded Data Parallel", arXiv:2304.11277), applied as Lightning's
``ModelParallelStrategy`` asks (lightning.ai/docs/pytorch/stable/advanced/model_parallel/fsdp.html:
``fully_shard`` per transformer block in the LightningModule's ``configure_model``, then on the
whole model), one unit per block as torchtitan's ``apply_fsdp`` does.

How a run gets here: ``trainer.strategy`` is :class:`FSDP2Strategy` (configs/strategies/fsdp.yaml)
or Lightning's ``ModelParallelStrategy``; either gives the task a device mesh, and
:meth:`research.tasks.Task.configure_model` then calls :func:`shard_task` once the model fits the
data. Lightning's ``FSDPStrategy`` (FSDP1) refuses ``accelerator="cpu"``; this path also runs on
CPU processes over gloo, which is how the tests run it.

What is sharded: the task's ``model``, one FSDP unit per outermost :data:`SHARD_UNITS` module (a
transformer :class:`~research.layers.Block`, a whole Swin stage), then the model itself (the
embeddings, heads and anything else outside the units). In a forward each unit all-gathers its
full parameters in its pre-forward hook and frees them after (``reshard_after_forward``), so at
most one unit is whole at a time besides the root; backward gathers again and reduce-scatters the
gradients (averaged over the processes, as DDP averages them). A model without such blocks
(ResNet, the CNNs) is one unit: sharded at rest, whole during each forward.

Attacks need no extra step: an attack calls the task's ``forward`` (or the model's methods of
:data:`FORWARD_METHODS`), which gathers the full parameters as the training step's forward does.
Its gradients are taken with respect to the input only (``torch.autograd.grad``), so no parameter
receives a gradient and FSDP reduces nothing; each PGD step costs one all-gather per unit in the
forward and one in the backward.

Checkpoints: :class:`FSDP2Strategy` saves a full (unsharded) checkpoint by default, the same single
file as a DDP run's (the commands that load a trained run read it on one process); rank 0 gathers
it on the CPU. ``save_distributed_checkpoint: true`` saves one shard per process instead (a folder).

Not synchronised, unlike DDP: buffers. DDP copies rank 0's buffers (BatchNorm's running
statistics) to every process at each forward; under FSDP2 each process keeps its own, so a model
with BatchNorm ends with per-process statistics (the transformers have none).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed._composable import checkpoint as checkpoint_activations
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, OptimStateKeyType, fully_shard, register_fsdp_forward_method
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from research.layers import Block
from research.models.swin import SwinStage
from research.tasks.checks import check_checkpoint

if TYPE_CHECKING:
    import lightning as L
    from torch.distributed.device_mesh import DeviceMesh

log = logging.getLogger(__name__)

#: the modules that become one FSDP unit each (the outermost one where they nest: a Swin stage holds Blocks).
SHARD_UNITS: tuple[type[nn.Module], ...] = (SwinStage, Block)
#: the model methods besides ``forward`` that tasks and decoding call on the whole model: each gathers the
#: model's own (root) parameters as ``forward`` does.
FORWARD_METHODS = ("forward_features", "forward_head", "mlm_logits", "next_sentence_logits", "encode", "decode")


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The outermost :data:`SHARD_UNITS` submodules of ``model``, in module order (empty: the model is one unit)."""
    units = []
    for child in model.children():
        units.extend([child] if isinstance(child, SHARD_UNITS) else shard_units(child))
    return units


def shard_model(model: nn.Module, mesh: DeviceMesh, *, activation_checkpointing: bool = False,
                reshard_after_forward: bool = True) -> None:
    """Shard ``model`` in place over the 1-D ``mesh``: one FSDP2 unit per :func:`shard_units` module, then the model.

    Args:
        model: the module to shard; its parameters become ``DTensor`` shards (dim 0 split over ``mesh``).
        mesh: the data-parallel device mesh (every process of it holds one shard).
        activation_checkpointing: keep only each transformer block's input in the forward and run the block
            again in the backward (``torch.utils.checkpoint``, non-reentrant, dropout's RNG replayed): the
            activations of a block are held for one block at a time, at the cost of a second forward.
        reshard_after_forward: free each unit's gathered parameters after its forward (gather again in the
            backward); False keeps them until the backward (more memory, one all-gather fewer per unit).
    """
    if activation_checkpointing:
        blocks = [m for m in model.modules() if isinstance(m, Block)]
        if not blocks:
            log.warning("activation_checkpointing: %s has no transformer blocks; nothing is recomputed",
                        type(model).__name__)
        for block in blocks:
            checkpoint_activations(block)
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    register_forward_methods(model)


def register_forward_methods(model: nn.Module) -> None:
    """Make each of :data:`FORWARD_METHODS` that ``model`` has gather its root parameters when called from outside.

    ``register_fsdp_forward_method`` runs FSDP's pre- and post-forward around every call of the method,
    also a call from inside the model's own ``forward`` (a classifier's ``forward`` calls its
    ``forward_features``, then its head): the nested post-forward reshards the root's parameters and the
    rest of ``forward`` meets sharded weights ("got mixed torch.Tensor and DTensor"). So the hooked method
    runs only when no forward of the model is in progress; inside one, the plain method runs on the
    parameters that forward already gathered.
    """
    depth = [0]  # forwards and hooked methods of the model in progress

    def enter(*_: Any) -> None:
        depth[0] += 1

    def leave(*_: Any) -> None:
        depth[0] -= 1

    model.register_forward_pre_hook(enter)
    model.register_forward_hook(leave, always_call=True)
    for name in FORWARD_METHODS:
        if not callable(getattr(model, name, None)):
            continue
        plain = getattr(model, name)
        register_fsdp_forward_method(model, name)
        hooked = getattr(model, name)

        def method(*args: Any, plain=plain, hooked=hooked, **kwargs: Any) -> Any:
            if depth[0]:
                return plain(*args, **kwargs)
            depth[0] += 1
            try:
                return hooked(*args, **kwargs)
            finally:
                depth[0] -= 1

        setattr(model, name, method)


def shard_task(task: L.LightningModule) -> None:
    """Shard ``task.model`` over the data-parallel dimension of the task's device mesh (once; idempotent).

    The options come from the Trainer's strategy when it is an :class:`FSDP2Strategy`; Lightning's
    ``ModelParallelStrategy`` gets the defaults.

    Raises:
        ValueError: a mesh with tensor parallelism, a task without a ``model``, trainable parameters
            outside ``task.model`` (no process would average their gradients), or a weight-averaging (EMA)
            callback, which Lightning does not support on sharded models.
    """
    mesh = task.device_mesh
    if mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            f"our models have no tensor-parallel plan, but the strategy asks for tensor_parallel_size="
            f"{mesh['tensor_parallel'].size()}; use configs/strategies/fsdp.yaml (FSDP2Strategy) or "
            "ModelParallelStrategy with tensor_parallel_size: 1 and data_parallel_size: <number of processes>"
        )
    model = getattr(task, "model", None)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{type(task).__name__} has no `model` to shard; train it with strategy: ddp")
    if isinstance(model, FSDPModule):
        return  # a later fit/validate/test of the same task
    averaging = [type(c).__name__ for c in task.trainer.callbacks if isinstance(c, WeightAveraging)]
    if averaging:
        # Lightning's WeightAveraging copies the whole unsharded model and averages it on one process.
        raise ValueError(
            f"{averaging[0]} does not average a sharded model; train with strategy: ddp, or drop the callback"
        )
    strategy = task.trainer.strategy
    options = strategy.sharding_options if isinstance(strategy, FSDP2Strategy) else {}
    shard_model(model, mesh["data_parallel"], **options)
    outside = [name for name, p in task.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
    if outside:
        raise ValueError(
            f"sharded training shards {type(task).__name__}.model only, and these trainable parameters lie outside "
            f"it: {outside[:5]}; move them into the model, freeze them, or train with strategy: ddp"
        )


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` as pure sharded data parallelism over every process, with our options.

    Every process is one data-parallel shard (``data_parallel_size`` = number of nodes x processes per
    node, ``tensor_parallel_size`` = 1; Lightning's default would split each node's processes into a
    tensor-parallel group, for which our models have no plan). The task shards its model in
    ``configure_model`` (:func:`shard_task`).

    Args:
        activation_checkpointing: recompute each transformer block in the backward (:func:`shard_model`).
        reshard_after_forward: free each unit's gathered parameters after its forward (:func:`shard_model`).
        save_distributed_checkpoint: False (default) saves one full checkpoint file, as DDP does; True one
            shard per process in a folder (no gathering on rank 0; only this strategy can read it back).
        process_group_backend: "gloo" on CPU, "nccl" on GPUs by default.
        timeout: how long a collective waits for the other processes.
    """

    def __init__(
        self,
        *,
        activation_checkpointing: bool = False,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = False,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            data_parallel_size="auto", tensor_parallel_size=1, save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend, timeout=timeout,
        )
        self.sharding_options = {"activation_checkpointing": activation_checkpointing,
                                 "reshard_after_forward": reshard_after_forward}

    def setup_environment(self) -> None:
        # ModelParallelStrategy reads "auto" as one data-parallel shard per node; we want one per process.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        """The optimizer's state; a full one (rank 0) numbers the parameters as the optimizer does, as DDP's does.

        ModelParallelStrategy numbers them in the model's order, so a DDP checkpoint would give each
        parameter another's moments under it and the reverse; in the optimizer's order either
        strategy resumes the other's checkpoint.
        """
        if self._save_distributed_checkpoint:
            return super().optimizer_state(optimizer)
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer's
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_optimizer_state_dict(self.model, optimizer, options=options)  # keyed by name; empty but on rank 0
        return FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model, optim=optimizer) \
            if state else state

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Load a checkpoint into the sharded model and its optimizer: a folder of shards, or a full file.

        A full file is first checked against the task (a readable error instead of torch's strict
        load), and its optimizer state is read in the optimizer's order (:meth:`optimizer_state`), so a
        DDP run's checkpoint resumes here too. ModelParallelStrategy loads the weights here, before the
        task's ``on_load_checkpoint``; that hook receives the whole checkpoint, weights included, as under DDP.

        Raises:
            ValueError: a full checkpoint whose weights do not fit the task.
        """
        path = Path(self.broadcast(checkpoint_path))
        if not path.is_file():  # a folder of shards
            return super().load_checkpoint(path, weights_only=weights_only)
        checkpoint = torch.load(path, mmap=True, map_location="cpu", weights_only=weights_only)
        check_checkpoint(self.lightning_module, checkpoint)
        strict = self.lightning_module.strict_loading
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=strict)
        set_model_state_dict(self.model, checkpoint["state_dict"], options=options)
        for optimizer, state in zip(self.optimizers, checkpoint.get("optimizer_states", []), strict=False):
            state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_NAME, self.model, optim=optimizer)
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=state, options=options)
        return checkpoint
