"""Sharded training (FSDP2 through research.tasks.sharding.FSDP2Strategy) against DDP, on 2 CPU processes over gloo.

From the same seed and data, a run whose weights, gradients and optimizer state are sharded ends
with the weights of a DDP run, within float tolerance (the reduce-scatter and DDP's all-reduce may
round differently): with a checkpoint and a resume halfway (both strategies resume alike), with
activation checkpointing, and with PGD adversarial training, whose attack runs through the sharded
model (each forward gathers the full parameters). The checkpoint FSDP2Strategy writes is the full
one, the same file as DDP's. BERT's case is slow.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from research.tasks.sharding import FSDP2Strategy, shard_units

SCRIPT = Path(__file__).with_name("fsdp_run.py")
ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5


def run(out: Path, *cases: str) -> Path:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",  # two processes on a small machine: no thread oversubscription
        "WANDB_MODE": "disabled",
    }
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), *cases], env=env, cwd=out, capture_output=True,
                          text=True, timeout=300)  # a hang (one rank waiting in a collective forever) fails here
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def load(out: Path, case: str, strategy: str) -> list[dict]:
    return [torch.load(out / case / f"{strategy}-rank{r}.pt", weights_only=True) for r in range(2)]


def assert_close(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(ours[name], value, atol=TOLERANCE, rtol=0, msg=name)


@pytest.fixture(scope="module")
def vit_runs(tmp_path_factory) -> Path:
    """ViT under DDP and FSDP2 (resumed halfway), FSDP2 with activation checkpointing, PGD training under both."""
    return run(tmp_path_factory.mktemp("fsdp"), "vit", "vit_ac", "adversarial")


def test_vit_resumed_under_fsdp_ends_with_ddps_weights(vit_runs):
    ddp, fsdp = load(vit_runs, "vit", "ddp"), load(vit_runs, "vit", "fsdp")
    assert all(fsdp[0]["sharded"]) and not any(ddp[0]["sharded"])  # the weights were DTensor shards at every step
    for rank in range(2):
        assert len(fsdp[rank]["images"]) == 4  # 2 epochs x 2 steps, half of them after the resume
        for ours, theirs in zip(fsdp[rank]["images"], ddp[rank]["images"], strict=True):
            assert torch.equal(ours, theirs)  # the same data on each rank
        assert_close(fsdp[rank]["weights"], ddp[0]["weights"])


def test_fsdp_saves_the_full_checkpoint_ddp_saves(vit_runs):
    """One file, whole weights and optimizer state, parameters numbered as under DDP: either resumes the other."""
    ddp = torch.load(vit_runs / "vit" / "ddp" / "last.ckpt", weights_only=True)
    fsdp = torch.load(vit_runs / "vit" / "fsdp" / "last.ckpt", weights_only=True)
    assert fsdp["global_step"] == ddp["global_step"] == 4
    assert_close(fsdp["state_dict"], ddp["state_dict"])
    ours, theirs = fsdp["optimizer_states"][0], ddp["optimizer_states"][0]
    assert ours["state"].keys() == theirs["state"].keys()  # parameter ids, as DDP's optimizer numbers them
    for index, state in theirs["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ours["state"][index][key], state[key], atol=TOLERANCE, rtol=0)


def test_activation_checkpointing_changes_no_weight(vit_runs):
    recomputed, ddp = load(vit_runs, "vit_ac", "fsdp"), load(vit_runs, "vit", "ddp")
    for rank in range(2):
        assert_close(recomputed[rank]["weights"], ddp[0]["weights"])


def test_pgd_training_under_fsdp_ends_with_ddps_weights(vit_runs):
    """The attack's forward and backward run through the sharded model: DDP's adversarial images and weights."""
    ddp, fsdp = load(vit_runs, "adversarial", "ddp"), load(vit_runs, "adversarial", "fsdp")
    assert all(fsdp[0]["sharded"])
    for rank in range(2):
        for attacked, clean in zip(fsdp[rank]["images"], load(vit_runs, "vit", "fsdp")[rank]["images"], strict=True):
            assert 0 < (attacked - clean).abs().max() <= 0.1 + 1e-6  # trained on attacked images, in the eps ball
        for ours, theirs in zip(fsdp[rank]["images"], ddp[rank]["images"], strict=True):
            torch.testing.assert_close(ours, theirs, atol=TOLERANCE, rtol=0)
        assert_close(fsdp[rank]["weights"], ddp[0]["weights"])


@pytest.mark.slow
def test_bert_resumed_under_fsdp_ends_with_ddps_weights(tmp_path):
    out = run(tmp_path, "bert")
    ddp, fsdp = load(out, "bert", "ddp"), load(out, "bert", "fsdp")
    assert all(fsdp[0]["sharded"])
    for rank in range(2):
        assert_close(fsdp[rank]["weights"], ddp[0]["weights"])


@pytest.mark.slow
def test_fsdp_from_yaml_through_the_fit_command(tmp_path):
    """configs/strategies/fsdp.yaml after a run's config trains sharded; its last.ckpt is tested in one process."""
    config = ["--config", str(ROOT / "configs/vit/mnist_vit_tiny.yaml")]
    quick = ["--trainer.accelerator", "cpu", "--data.init_args.batch_size", "16", "--trainer.limit_val_batches", "1",
             "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    commands = [
        ["fit", *config, "--config", str(ROOT / "configs/strategies/fsdp.yaml"), "--trainer.devices", "2",
         "--trainer.max_steps", "2", "--test_after_fit", "false", *quick],
        ["test", *config, "--trainer.devices", "1", "--ckpt_path", "last", *quick],
    ]
    for command in commands:
        done = subprocess.run([sys.executable, "-m", "research", *command], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = torch.load(tmp_path / "checkpoints/vit/mnist_vit_tiny/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
    weight = checkpoint["state_dict"]["model.patch_embed.proj.weight"]
    assert type(weight) is torch.Tensor and weight.shape == (192, 1, 4, 4)  # whole, not a shard
    assert "test/acc" in done.stdout


def test_fsdp_yaml_sets_the_strategy_and_keeps_the_runs_folder(capsys, monkeypatch):
    """A trainer snippet after the run's config: checkpoints stay in the run's folder, not in strategies/fsdp."""
    import yaml

    from research.commands.fit import main

    monkeypatch.setattr(sys, "argv", ["research"])
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs/vit/mnist_vit_tiny.yaml"), "--config",
              str(ROOT / "configs/strategies/fsdp.yaml"), "--print_config"])
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert trainer["strategy"]["class_path"] == "research.tasks.sharding.FSDP2Strategy"
    callbacks = {c["class_path"].rsplit(".", 1)[1]: c["init_args"] for c in trainer["callbacks"]}
    assert callbacks["ModelCheckpoint"]["dirpath"] == "checkpoints/vit/mnist_vit_tiny"


def test_shard_units_are_the_outermost_blocks():
    from research.layers import Block
    from research.models import create_model
    from research.models.swin import SwinStage

    vit = create_model("vit_tiny_patch4_32", depth=3)
    assert shard_units(vit) == list(vit.blocks)
    swin = create_model("swin_tiny_patch2_window4_32")
    units = shard_units(swin)
    assert units and all(isinstance(u, SwinStage) for u in units)  # a stage's blocks shard with their stage
    assert not any(isinstance(u, Block) for u in units)
    assert shard_units(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())) == []  # one unit: the whole model


def test_fsdp2_strategy_takes_its_options_from_yaml_arguments():
    strategy = FSDP2Strategy(activation_checkpointing=True, reshard_after_forward=False)
    assert strategy.sharding_options == {"activation_checkpointing": True, "reshard_after_forward": False}
    assert strategy._save_distributed_checkpoint is False  # full checkpoints unless asked


def test_weight_averaging_under_sharding_stops_with_one_line():
    """Lightning's EMA copies and averages the whole unsharded model: sharding a task with it stops before training."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import EMAWeightAveraging

    from research.tasks.sharding import shard_task

    one = SimpleNamespace(size=lambda: 1)
    task = SimpleNamespace(device_mesh={"tensor_parallel": one, "data_parallel": one}, model=nn.Linear(2, 2),
                           trainer=SimpleNamespace(callbacks=[EMAWeightAveraging()], strategy=None))
    with pytest.raises(ValueError, match=r"^EMAWeightAveraging does not average a sharded model; train with "
                                         r"strategy: ddp, or drop the callback$"):
        shard_task(task)


def test_the_fit_command_drops_lightnings_sharding_warning_for_weight_averaging(monkeypatch):
    """WeightAveraging warns at every run of a task that overrides configure_model (all of ours); only sharding,
    which refuses EMA above, would make it true, so the fit command's filters drop it (Lightning's own warning,
    raised by its own setup: a reworded message fails here)."""
    import warnings

    import lightning as L
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from research import quiet

    class Task(L.LightningModule):
        def configure_model(self):
            self.layer = nn.Linear(2, 2)

    def setup_warnings() -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if silenced:
                monkeypatch.setattr(quiet, "_silenced", False)
                quiet.silence_known_noise()
            EMAWeightAveraging().setup(None, Task(), "fit")
        return [str(w.message) for w in caught if "WeightAveraging" in str(w.message)]

    silenced = False
    assert setup_warnings()  # Lightning still warns: the filter below has something to drop
    silenced = True
    assert setup_warnings() == []
