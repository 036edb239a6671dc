"""Every name for a state holds that state: last.ckpt, --ckpt_path best/last, config.yaml, resumed loggers."""

import csv
import sys
import warnings

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from test_cli import QUIET, ROOT, StopAfterFirstEpoch, fit, weights
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from research.callbacks import ModelCheckpoint
from research.callbacks.checkpoint import best_checkpoint, logger_ids
from research.commands.fit import main


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["research"])


class BestFirst(L.LightningModule):
    """A regression whose logged validation score is best in the first epoch and worse ever after."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("val/score", float(self.current_epoch))  # "min": epoch 0 is the best

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(24, 4, generator=g), torch.randn(24, 1, generator=g)), batch_size=4)


def _train(callback, tmp_path, **trainer_kwargs):
    model = BestFirst()
    trainer = L.Trainer(
        max_epochs=3, callbacks=[callback], logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, **trainer_kwargs,
    )
    trainer.fit(model, _loader(), _loader())
    return model, trainer


def test_lightning_rewrites_last_only_with_a_top_k_save(tmp_path):
    """Pins the Lightning behaviour our ModelCheckpoint exists for: if this fails, Lightning changed again."""
    callback = LightningModelCheckpoint(dirpath=tmp_path / "lightning", monitor="val/score", save_last=True)
    _, trainer = _train(callback, tmp_path)
    saved = torch.load(tmp_path / "lightning/last.ckpt", weights_only=True)
    assert trainer.global_step == 18 and saved["global_step"] == 6  # last.ckpt stuck at the best (first) epoch


@pytest.mark.parametrize("stop", [{}, {"max_steps": 14}], ids=["epochs", "max_steps_mid_epoch"])
def test_last_ckpt_holds_the_final_step(tmp_path, stop):
    callback = ModelCheckpoint(dirpath=tmp_path / "ours", monitor="val/score", save_last=True)
    model, trainer = _train(callback, tmp_path, **stop)
    saved = torch.load(tmp_path / "ours/last.ckpt", weights_only=True)
    assert saved["global_step"] == trainer.global_step == stop.get("max_steps", 18)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(saved["state_dict"][name], value, rtol=0, atol=0)
    assert callback.best_model_path.endswith("epoch=0-step=6.ckpt")  # best is still the first epoch


def test_fit_last_ckpt_equals_the_final_model(tmp_path):
    cli = fit(["--trainer.max_epochs", "3"], tmp_path)
    saved = torch.load(tmp_path / "checkpoints/tiny/last.ckpt", weights_only=True)
    assert saved["global_step"] == cli.trainer.global_step == 3 * cli.trainer.num_training_batches
    final = weights(cli)
    for name, value in saved["state_dict"].items():
        torch.testing.assert_close(value, final[name], rtol=0, atol=0, msg=name)


def test_ckpt_path_best_in_a_later_process_is_the_recorded_best(tmp_path):
    first = fit(["--trainer.max_epochs", "2"], tmp_path)
    recorded = first.trainer.checkpoint_callback.best_model_path
    # a stale best file of an older run in the same folder is never picked
    torch.save({"state_dict": {}}, tmp_path / "checkpoints/tiny/best-epoch=99-step=999.ckpt")
    assert best_checkpoint(tmp_path / "checkpoints/tiny").name == recorded.split("/")[-1]
    cli = fit(["--ckpt_path", "best"], tmp_path, subcommand="test")
    assert cli.ckpt_path.endswith(recorded.split("/")[-1]) and "test/acc" in cli.trainer.callback_metrics


def test_fit_docstring_test_best_command_runs(tmp_path):
    """research/commands/fit.py's docstring: fit, then `test --config configs/cnn/mnist_five_layer_cnn.yaml
    --ckpt_path best`."""
    config = str(ROOT / "configs/cnn/mnist_five_layer_cnn.yaml")
    tiny = [*QUIET, "--trainer.logger", "false", "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]
    main(["fit", "--config", config, *tiny, "--trainer.max_epochs", "1", "--test_after_fit", "false"])
    cli = main(["test", "--config", config, *tiny, "--ckpt_path", "best"])
    assert "test/acc" in cli.trainer.callback_metrics


@pytest.mark.parametrize("alias", ["last", "best"])
def test_missing_last_or_best_is_a_clear_error(tmp_path, alias):
    expected = "no checkpoints/nowhere/last.ckpt|no last.ckpt under checkpoints/nowhere"
    with pytest.raises(FileNotFoundError, match=expected):
        fit(["--experiment", "nowhere", "--ckpt_path", alias], tmp_path)


def test_each_run_keeps_its_own_config_yaml(tmp_path):
    fit(["--trainer.max_epochs", "1", "--experiment", "a"], tmp_path)
    fit(["--trainer.max_epochs", "1", "--experiment", "b", "--model.model", '{"name": "resnet32", "num_classes": 4}'],
        tmp_path)
    fit(["--experiment", "a", "--ckpt_path", "last"], tmp_path, subcommand="test")  # a test does not rewrite it
    for experiment, model in (("a", "resnet20"), ("b", "resnet32")):
        saved = yaml.safe_load((tmp_path / f"checkpoints/{experiment}/config.yaml").read_text())
        assert saved["model"]["init_args"]["model"]["name"] == model
        assert saved["experiment"] == experiment
    assert not (tmp_path / "logs/config.yaml").exists()


def test_resume_continues_the_same_wandb_run_and_csv_version(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    common = ["--trainer.max_epochs", "2", "--trainer.logger", "true", "--trainer.log_every_n_steps", "1",
              "--experiment", "logged"]
    first = fit(common, tmp_path, run=False)
    first.trainer.callbacks.append(StopAfterFirstEpoch())
    first.trainer.fit(first.model, datamodule=first.datamodule)
    wandb_id, csv_version = (lg.version for lg in first.trainer.loggers)
    first.trainer.loggers[0].experiment.finish()
    step = first.trainer.global_step
    stored = logger_ids(tmp_path / "checkpoints/logged/last.ckpt")
    assert stored == {"wandb": wandb_id, "csv": csv_version, "step": step}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = fit([*common, "--ckpt_path", "last"], tmp_path)
    assert not [w for w in caught if "will be deleted" in str(w.message)]  # they are kept, so not said
    assert [lg.version for lg in resumed.trainer.loggers] == [wandb_id, csv_version]
    resumed.trainer.loggers[0].experiment.finish()
    assert not (tmp_path / "logs/csv/logged/version_1").exists()
    with open(tmp_path / f"logs/csv/logged/version_{csv_version}/metrics.csv", newline="") as file:
        steps = sorted({int(float(row["step"])) for row in csv.DictReader(file) if row["train/loss"]})
    assert steps[0] < step < steps[-1]  # the first run's rows are kept, the resumed run's appended


class RecordRobust(L.Callback):
    def __init__(self):
        self.scores = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.scores.append(trainer.callback_metrics["val/robust_acc"].item())


def test_monitor_selects_the_best_checkpoint_on_robust_accuracy(tmp_path):
    """Robust model selection (Rice et al. 2020) is one config line: --monitor val/robust_acc."""
    callback = '{"class_path": "research.callbacks.RobustEvaluation", "init_args": {"eps": 0.02, "num_samples": 16, ' \
               '"pgd_steps": 2}}'
    cli = fit(["--trainer.max_epochs", "4", "--trainer.callbacks+", callback, "--monitor", "val/robust_acc"], tmp_path,
              run=False)
    record = RecordRobust()
    cli.trainer.callbacks.insert(0, record)  # before ModelCheckpoint, which saves at the end of validation
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    checkpoint = cli.trainer.checkpoint_callback
    assert (checkpoint.monitor, checkpoint.mode) == ("val/robust_acc", "max")
    assert len(set(record.scores)) > 1, record.scores  # the epochs differ, so the choice means something
    best_epoch = record.scores.index(max(record.scores))
    assert f"epoch={best_epoch}-" in checkpoint.best_model_path and checkpoint.best_model_score == max(record.scores)


@pytest.mark.parametrize(
    "extra, said",
    [
        (["--monitor", "val/robust_acc"], "--monitor val/robust_acc is logged by the RobustEvaluation callback"),
        (["--monitor", "val/top5"], "--monitor val/top5: is it best when largest or smallest? add --monitor_mode"),
    ],
)
def test_a_monitor_that_cannot_work_stops_before_training(extra, said, tmp_path):
    from research.errors import UserError

    with pytest.raises(UserError, match=said.replace("?", r"\?")):
        fit(["--trainer.max_epochs", "1", *extra], tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_a_run_started_from_pretrained_weights_is_tested_and_loaded_without_that_file(tmp_path):
    """--ckpt_path (and load_run) take every weight from the checkpoint: the config's pretrained file may be gone."""
    from research.commands.load import load_run

    config = str(ROOT / "configs/cnn/mnist_five_layer_cnn.yaml")
    tiny = [*QUIET, "--trainer.logger", "false", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches",
            "1", "--trainer.limit_test_batches", "1", "--trainer.max_epochs", "1", "--test_after_fit", "false"]
    source = main(["fit", "--config", config, *tiny, "--experiment", "source"])
    (tmp_path / "source.ckpt").write_bytes((tmp_path / source.trainer.checkpoint_callback.dirpath / "last.ckpt")
                                           .read_bytes())
    tuned = [*tiny, "--model.init_args.pretrained", str(tmp_path / "source.ckpt"), "--experiment", "tuned"]
    fitted = main(["fit", "--config", config, *tuned])
    (tmp_path / "source.ckpt").unlink()  # moved, or another machine
    cli = main(["test", "--config", config, *tuned, "--ckpt_path", "last"])
    assert "test/acc" in cli.trainer.callback_metrics
    last = tmp_path / fitted.trainer.checkpoint_callback.dirpath / "last.ckpt"
    run = load_run(config, last, tuned[-4:-2])
    for key, value in weights(cli).items():
        assert torch.equal(run.task.state_dict()[key], value), key


def test_load_run_takes_a_text_checkpoint_whose_sizes_came_from_the_data(tmp_path):
    """The checkpoint's model spec also records vocab_size, num_classes and pad_id; the config leaves them out."""
    from research.commands.load import load_run

    config = str(ROOT / "configs/text/bible_language_id_gru.yaml")
    fitted = main(["fit", "--config", config, *QUIET, "--trainer.logger", "false", "--trainer.max_steps", "2",
                   "--trainer.limit_val_batches", "1", "--test_after_fit", "false"])
    last = tmp_path / fitted.trainer.checkpoint_callback.dirpath / "last.ckpt"
    run = load_run(config, last)
    assert run.task.hparams.model["vocab_size"] == fitted.model.hparams.model["vocab_size"]
    assert load_run(last.parent / "config.yaml", last).task.hparams.model == run.task.hparams.model  # the run's own
    with pytest.raises(ValueError, match="pass the config the checkpoint was trained with"):
        load_run(config, last, ["--model.init_args.model", '{"name": "gru_classifier", "hidden_size": 8}'])
