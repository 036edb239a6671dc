"""EMA of the weights: Lightning's ``EMAWeightAveraging`` set from configs/trainer/ema.yaml on one of our tasks.

What we rely on from Lightning 2.6 (``lightning/pytorch/callbacks/weight_averaging.py``), pinned here:
the average follows torch's ``get_ema_avg_fn`` (``ema = decay * ema + (1 - decay) * w`` after every optimizer
step, the first update copying ``w``); validation during fit runs on the averaged weights (swapped in at the
epoch's start, out at its end); a checkpoint's ``state_dict`` holds the averaged weights and
``current_model_state`` the raw ones, so ``test``/``validate``/``attack`` from a checkpoint evaluate the average
and ``--ckpt_path last`` resumes the raw weights and the average alike; after fit the task holds the average.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging

from research.commands.fit import main

ROOT = Path(__file__).resolve().parents[2]
EMA = str(ROOT / "configs/trainer/ema.yaml")
DECAY = 0.5  # a short memory, so that a few steps of a tiny run separate the average from the raw weights


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # checkpoints/ land in the test's folder
    # H's configure_model in the task base makes Lightning warn that averaging does not shard: not our concern here
    monkeypatch.setattr("lightning.pytorch.callbacks.weight_averaging.rank_zero_warn", lambda *a, **k: None)


def run(*args: str, subcommand: str = "fit", ema: bool = True, experiment: str = "ema"):
    """A tiny ResNet-20, 16-pixel synthetic images (3 steps an epoch), the fit command; built only if no subcommand."""
    return main([
        *([subcommand] if subcommand else []), "--model", "research.tasks.ImageClassification", "--model.model",
        '{"name": "resnet20", "num_classes": 4}', "--model.optim.lr", "0.05",
        "--data", "research.data.SyntheticDataModule", "--data.num_samples", "64", "--data.num_classes", "4",
        "--data.img_size", "16", "--data.batch_size", "16",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.limit_val_batches", "1",
        "--experiment", experiment, *(["--test_after_fit", "false"] if subcommand == "fit" else []),
        *(["--config", EMA, "--trainer.callbacks.decay", str(DECAY)] if ema else []), *args,
    ], run=bool(subcommand))


def averaging(cli) -> EMAWeightAveraging:
    return next(c for c in cli.trainer.callbacks if isinstance(c, EMAWeightAveraging))


def cloned(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def first_batch_loss(cli, weights: dict[str, torch.Tensor], loader) -> float:
    """The cross-entropy of the task with ``weights`` on the loader's first batch, in eval mode."""
    task = cli.model
    kept = cloned(task.state_dict())
    task.load_state_dict(weights)
    task.eval()
    x, y = next(iter(loader))
    with torch.no_grad():
        loss = F.cross_entropy(task(x), y).item()
    task.load_state_dict(kept)
    return loss


class Record(Callback):
    """The raw weights after every optimizer step, and what the task holds while the last validation runs."""

    def __init__(self):
        self.steps, self.validated, self.swapped_out = [], None, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append({k: v.detach().clone() for k, v in pl_module.named_parameters()})

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.validated = cloned(pl_module.state_dict())
        ema = next(c for c in trainer.callbacks if isinstance(c, EMAWeightAveraging))
        self.swapped_out = {k: v.detach().clone() for k, v in ema._average_model.module.named_parameters()}


def test_the_average_follows_the_ema_formula_and_is_what_validation_evaluates():
    record = Record()
    cli = run("--trainer.max_epochs", "2", "--experiment", "recorded", subcommand="")  # built, not run
    cli.trainer.callbacks.append(record)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert len(record.steps) == cli.trainer.global_step == 6

    expected = dict(record.steps[0])  # the first update copies the weights
    for raw in record.steps[1:]:
        expected = {k: DECAY * expected[k] + (1 - DECAY) * raw[k] for k in raw}
    after = dict(cli.model.named_parameters())  # fit's end copies the average into the task
    assert largest_difference(expected, after) < 1e-6
    assert largest_difference(record.steps[-1], after) > 1e-3  # the average is not the raw weights

    # the last validation (after the last step) ran on the averaged weights while Lightning's AveragedModel held
    # the raw ones, and the logged loss is the averaged weights'
    assert largest_difference(record.validated, cli.model.state_dict()) == 0
    assert largest_difference(record.swapped_out, record.steps[-1]) == 0
    val_loader = cli.datamodule.val_dataloader()
    logged = cli.trainer.callback_metrics["val/loss"].item()
    assert logged == pytest.approx(first_batch_loss(cli, record.validated, val_loader), rel=1e-5)
    raw = cloned(cli.model.state_dict()) | {k: v for k, v in record.steps[-1].items()}
    assert abs(logged - first_batch_loss(cli, raw, val_loader)) > 1e-4


def test_the_checkpoint_holds_the_average_and_test_evaluates_it():
    averaged = run("--trainer.max_epochs", "2")
    plain = run("--trainer.max_epochs", "2", ema=False, experiment="plain")  # same seed: the raw weights
    checkpoint = torch.load("checkpoints/ema/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 6
    assert largest_difference(checkpoint["state_dict"], averaged.model.state_dict()) == 0
    assert largest_difference(checkpoint["current_model_state"], plain.model.state_dict()) == 0
    assert largest_difference(checkpoint["state_dict"], checkpoint["current_model_state"]) > 1e-3

    # a stop mid-epoch writes last.ckpt at fit's end, after Lightning copied the average into the task: the raw
    # weights it keeps are still the raw ones
    run("--trainer.max_steps", "5", "--experiment", "steps")
    raw = run("--trainer.max_steps", "5", ema=False, experiment="steps_plain").model.state_dict()
    stopped = torch.load("checkpoints/steps/last.ckpt", weights_only=True)
    assert stopped["global_step"] == 5 and largest_difference(stopped["current_model_state"], raw) == 0

    # test from the checkpoint, with or without the callback in the config: the averaged weights
    for ema in (True, False):
        tested = run("--ckpt_path", "checkpoints/ema/last.ckpt", "--trainer.limit_test_batches", "1",
                     subcommand="test", ema=ema)
        logged = tested.trainer.callback_metrics["test/loss"].item()
        loader = tested.datamodule.test_dataloader()
        assert logged == pytest.approx(first_batch_loss(tested, checkpoint["state_dict"], loader), rel=1e-5)
        assert abs(logged - first_batch_loss(tested, checkpoint["current_model_state"], loader)) > 1e-4


class StopAfterFirstEpoch(Callback):
    """Stands in for a run killed after its first epoch's checkpoint."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def test_resuming_from_last_continues_the_raw_weights_and_the_average_exactly():
    straight = run("--trainer.max_epochs", "3", "--experiment", "straight")
    cut = run("--trainer.max_epochs", "3", "--experiment", "cut", subcommand="")
    cut.trainer.callbacks.append(StopAfterFirstEpoch())
    cut.trainer.fit(cut.model, datamodule=cut.datamodule)
    resumed = run("--trainer.max_epochs", "3", "--experiment", "cut", "--ckpt_path", "last")
    assert resumed.trainer.global_step == straight.trainer.global_step == 9
    assert largest_difference(resumed.model.state_dict(), straight.model.state_dict()) == 0  # the average
    ends = [torch.load(f"checkpoints/{name}/last.ckpt", weights_only=True) for name in ("straight", "cut")]
    assert largest_difference(ends[0]["current_model_state"], ends[1]["current_model_state"]) == 0  # raw weights
    assert ends[0]["averaging_state"]["n_averaged"] == ends[1]["averaging_state"]["n_averaged"] == 9


def test_a_compiled_task_averages_the_same_weights_under_the_same_keys():
    compiled = run("--trainer.max_epochs", "1", "--model.compile", '{"backend": "aot_eager"}', experiment="compiled")
    eager = run("--trainer.max_epochs", "1", experiment="eager")
    assert largest_difference(compiled.model.state_dict(), eager.model.state_dict()) == 0
    checkpoint = torch.load("checkpoints/compiled/last.ckpt", weights_only=True)
    keys = eager.model.state_dict().keys()  # without the compile wrapper's prefix
    assert checkpoint["state_dict"].keys() == checkpoint["current_model_state"].keys() == keys
