"""Gradual magnitude pruning during training: Lightning's ModelPruning, configured from YAML.

    trainer:
      callbacks:
        - class_path: research.callbacks.Pruning
          init_args: {amount: 0.8, method: l1_unstructured, start_epoch: 1, end_epoch: 4}

The weights to prune are found by type (every Conv and Linear weight of the task's ``model``, the
classifier excepted), so a config needs no parameter list. Two criteria:

* ``l1_unstructured``: individual weights of smallest magnitude (Han et al. 2015), ranked across
  all layers together (``scope: global``) or within each layer. Irregular zeros: the tensors keep
  their shapes and dense kernels run as fast as before.
* ``ln_structured``: whole output channels (conv) or neurons (linear) of smallest Ln norm, i.e.
  dim 0 of the weight (Li et al. 2017 rank filters by L1 norm), in every layer alike. The network
  stays regular: the zeroed channels can be cut out (benchmarks/pruning_speed.py).

The sparsity follows the cubic schedule of Zhu & Gupta 2017 ("To prune, or not to prune", eq. 1),
pruning at the start of epochs ``start_epoch`` .. ``end_epoch`` and fine-tuning at the final
sparsity afterwards: pruning early in an epoch lets that epoch's training recover, so the epoch's
validation accuracy is that of the pruned network.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
from lightning.pytorch.callbacks import ModelPruning
from torch import nn

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class Pruning(ModelPruning):
    """Magnitude pruning of Conv/Linear weights to ``amount`` sparsity, applied gradually.

    Logged every epoch: ``prune/sparsity`` (fraction of the pruned weights that are zero by
    mask), ``prune/target`` (the schedule's value) and, for structured pruning,
    ``prune/channel_sparsity`` (fraction of output channels/neurons removed). At the end of
    training the masks are folded into the weights (``make_pruning_permanent``), as they are in
    every saved checkpoint.

    Args:
        amount: final fraction of the selected weights (unstructured) or of each layer's output
            channels (structured) to remove, in [0, 1).
        method: ``"l1_unstructured"`` (weights) or ``"ln_structured"`` (channels/neurons, dim 0).
        norm: the n of ``ln_structured``'s Ln norm (1 as Li et al. 2017; 2; ``inf``).
        scope: ``"global"`` ranks unstructured weights across all layers (layers end with different
            sparsities); ``"layer"`` prunes ``amount`` of every layer. Structured pruning is per layer.
        start_epoch: first epoch that prunes (train dense before it).
        end_epoch: epoch at which ``amount`` is reached; defaults to ``start_epoch`` (one shot).
        prune_classifier: also prune the classifier (the last Conv/Linear of the model); off by
            default, since structured pruning there would delete classes.
        verbose: 1 logs the overall sparsity after each step to the console, 2 also per layer.
    """

    def __init__(
        self,
        *,
        amount: float = 0.5,
        method: Literal["l1_unstructured", "ln_structured"] = "l1_unstructured",
        norm: float = 1,
        scope: Literal["global", "layer"] = "global",
        start_epoch: int = 0,
        end_epoch: int | None = None,
        prune_classifier: bool = False,
        verbose: int = 0,
    ) -> None:
        if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0.0 <= amount < 1.0:
            raise ValueError(
                f"pruning amount is the fraction of weights to remove and must be in [0, 1), got {amount!r}; "
                "e.g. amount: 0.8 keeps 20% of the weights"
            )
        if method not in ("l1_unstructured", "ln_structured"):
            raise ValueError(f"unknown pruning method {method!r}; choose 'l1_unstructured' or 'ln_structured'")
        if scope not in ("global", "layer"):
            raise ValueError(f"unknown pruning scope {scope!r}; choose 'global' or 'layer'")
        end_epoch = start_epoch if end_epoch is None else end_epoch
        if not 0 <= start_epoch <= end_epoch:
            raise ValueError(
                f"the pruning schedule needs 0 <= start_epoch <= end_epoch, got {start_epoch} and {end_epoch}"
            )
        structured = method == "ln_structured"
        super().__init__(
            pruning_fn=method,
            parameter_names=["weight"],
            use_global_unstructured=scope == "global" and not structured,
            amount=float(amount),
            make_pruning_permanent=True,
            use_lottery_ticket_hypothesis=False,  # fine-tune the surviving weights, do not rewind them
            pruning_dim=0 if structured else None,
            pruning_norm=norm if structured else None,
            verbose=verbose,
        )
        self.final_amount, self.structured = float(amount), structured
        self.start_epoch, self.end_epoch, self.prune_classifier = start_epoch, end_epoch, prune_classifier

    def target_sparsity(self, epoch: int) -> float:
        """The schedule: Zhu & Gupta's s_t = s_f (1 - (1 - t / n)^3) after the t-th of n pruning steps."""
        steps = self.end_epoch - self.start_epoch + 1
        done = min(max(epoch - self.start_epoch + 1, 0), steps)
        return self.final_amount * (1 - (1 - done / steps) ** 3)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Pick every Conv/Linear weight of the task's model (not a distillation teacher's), then Lightning's setup."""
        model = getattr(pl_module, "model", pl_module)
        layers = [m for m in model.modules() if isinstance(m, PRUNABLE)]
        if not self.prune_classifier:
            layers = layers[:-1]
        if not layers:
            raise ValueError(
                f"{type(model).__name__} has no Conv or Linear layer to prune"
                + ("" if self.prune_classifier else " besides its classifier (set prune_classifier: true)")
            )
        self._parameters_to_prune = [(m, "weight") for m in layers]
        super().setup(trainer, pl_module, stage)

    def masked_fraction(self) -> float:
        """Fraction of the selected weights that the masks currently remove (0 before any pruning)."""
        zeros = total = 0
        for module, name in self._parameters_to_prune:
            mask = getattr(module, f"{name}_mask", None)
            total += getattr(module, name).numel()
            zeros += 0 if mask is None else int((mask == 0).sum())
        return zeros / max(total, 1)

    def channel_sparsity(self) -> float:
        """Fraction of output channels/neurons of the selected layers whose weights are all zero."""
        dead = total = 0
        for module, name in self._parameters_to_prune:
            weight = getattr(module, name).detach()
            alive = weight.flatten(1).abs().sum(1) > 0
            dead, total = dead + int((~alive).sum()), total + alive.numel()
        return dead / max(total, 1)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        target = self.target_sparsity(pl_module.current_epoch)
        already = self.masked_fraction()
        if target > already:
            # torch.nn.utils.prune removes ``amount`` of the weights still unmasked; a run resumed from
            # a checkpoint has no masks yet, but its zeros have the smallest norm and go first again.
            self.apply_pruning(1 - (1 - target) / (1 - already))
        metrics = {"prune/sparsity": self.masked_fraction(), "prune/target": target}
        if self.structured:
            metrics["prune/channel_sparsity"] = self.channel_sparsity()
        pl_module.log_dict(metrics, on_step=False, on_epoch=True)

    # ModelPruning prunes at epoch ends; this schedule prunes at epoch starts (see the module docstring).
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass


def sparsity(module: nn.Module) -> float:
    """Fraction of exactly-zero entries over all Conv/Linear weights of ``module`` (e.g. of a saved, pruned model)."""
    weights = [m.weight.detach() for m in module.modules() if isinstance(m, PRUNABLE)]
    if not weights:
        return 0.0
    return float(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights))

