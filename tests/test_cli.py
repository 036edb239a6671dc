"""The command line: every config runs, resume is exact, runs are reproducible, mistakes stop early."""

import json
import sys
from argparse import ArgumentError
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from research.commands.fit import main
from research.loggers import wandb_mode
from research.models import build_model
from research.reproduce.runs import quick_bible, quick_bible_references

ROOT = Path(__file__).resolve().parents[1]
# whole runs; the trainer snippets (configs/strategies/, configs/trainer/) are second configs, run by their own tests
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "model" in yaml.safe_load(p.read_text()))
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SYNTHETIC = [
    "--data",
    "research.data.SyntheticDataModule",
    "--data.num_samples",
    "48",
    "--data.num_classes",
    "4",
    "--data.img_size",
    "16",
    "--data.batch_size",
    "16",
]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # checkpoints/ and logs/ land in the test's folder
    monkeypatch.setattr(sys, "argv", ["research"])  # pytest's own arguments are not ours


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_runs_one_batch(config, fake_torchvision_root):
    args = ["fit", "--config", str(config), "--trainer.fast_dev_run", "true", *QUIET]
    data_class = yaml.safe_load(config.read_text()).get("data", {}).get("class_path", "")
    if data_class.rsplit(".", 1)[-1] in (
        "MNISTDataModule", "FashionMNISTDataModule", "CIFAR10DataModule", "CIFAR100DataModule"
    ):
        # the real sets are downloads; the config runs on tiny stand-ins in the same layout
        args += ["--data.init_args.root", str(fake_torchvision_root), "--data.init_args.batch_size", "4"]
    task_args = yaml.safe_load(config.read_text()).get("model", {}).get("init_args", {})
    if "teacher_checkpoint" in task_args:
        # distillation needs a trained teacher; an untrained one of the config's architecture stands in
        torch.save(build_model(task_args["teacher"]).state_dict(), "teacher.pt")
        args += ["--model.init_args.teacher_checkpoint", "teacher.pt"]
    if isinstance(task_args.get("model"), dict) and task_args["model"].get("pretrained"):
        # fine-tuning needs a pre-training run (its checkpoint and tokenizer); a new model and tokenizer stand in
        args += ["--model.init_args.model", json.dumps({**task_args["model"], "pretrained": None}),
                 "--data.init_args.tokenizer_of", "null"]
    if data_class.endswith("TranslationDataModule"):
        # an untrained model never says EOS, so each decoded sentence runs to its length limit: decode a few
        args += ["--data.init_args.eval_batch_size", "8", "--model.init_args.test_decoding", "greedy"]
    if data_class.endswith(("TranslationDataModule", "MaskedLanguageModellingDataModule", "BibleVersesDataModule")):
        # every 16th verse of the shipped Bible: tokenizing all 31,077 took most of the run (the configs' data on the
        # whole corpus: the README's fit commands in test_documented_commands.py, tests/data, tests/tasks)
        args += ["--data.init_args.corpus", str(quick_bible())]
        if data_class.endswith("BibleVersesDataModule"):
            args += ["--data.init_args.references", str(quick_bible_references())]
    cli = main(args)
    assert cli.trainer.state.finished
    stage = "test/" if yaml.safe_load(config.read_text()).get("test_after_fit", True) else "val/"
    assert any(k.startswith(stage) for k in cli.trainer.callback_metrics)  # fit ends with a test (or validates)


def fit(args, tmp_path, run=True, subcommand="fit"):
    return main(
        [
            *([subcommand] if run else []),
            *QUIET,
            "--model",
            "research.tasks.ImageClassification",
            "--model.model",
            '{"name": "resnet20", "num_classes": 4}',
            "--model.optim.lr",
            "0.01",
            *SYNTHETIC,
            "--trainer.logger",
            "false",
            "--trainer.limit_val_batches",
            "1",
            "--experiment",
            "tiny",
            "--test_after_fit",
            "false",
            *args,
        ],
        run=run,
    )


class StopAfterFirstEpoch(Callback):
    """Stands in for a run killed after its first epoch's checkpoint: same config, same schedule."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def weights(cli):
    return {k: v.clone() for k, v in cli.model.state_dict().items()}


def test_resume_ends_with_the_same_weights(tmp_path):
    uninterrupted = fit(["--trainer.max_epochs", "2", "--experiment", "straight"], tmp_path)
    straight = weights(uninterrupted)
    interrupted = fit(["--trainer.max_epochs", "2", "--experiment", "split"], tmp_path, run=False)
    interrupted.trainer.callbacks.append(StopAfterFirstEpoch())
    interrupted.trainer.fit(interrupted.model, datamodule=interrupted.datamodule)
    assert (
        interrupted.trainer.current_epoch == 1 and interrupted.trainer.global_step < uninterrupted.trainer.global_step
    )
    assert (tmp_path / "checkpoints/split/last.ckpt").exists()
    resumed = fit(["--trainer.max_epochs", "2", "--experiment", "split", "--ckpt_path", "last"], tmp_path)
    assert resumed.trainer.global_step == uninterrupted.trainer.global_step > 2
    for name, value in weights(resumed).items():
        torch.testing.assert_close(value, straight[name], rtol=0, atol=0, msg=name)


def test_same_seed_same_metrics(tmp_path):
    a = fit(["--trainer.max_epochs", "1", "--experiment", "a"], tmp_path).trainer.callback_metrics
    b = fit(["--trainer.max_epochs", "1", "--experiment", "b"], tmp_path).trainer.callback_metrics
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_validate_test_predict_from_a_checkpoint(tmp_path):
    fit(["--trainer.max_epochs", "1"], tmp_path)
    ckpt = str(tmp_path / "checkpoints/tiny/last.ckpt")
    for subcommand, metric in (("validate", "val/acc"), ("test", "test/acc")):
        cli = fit(["--ckpt_path", ckpt], tmp_path, subcommand=subcommand)
        assert metric in cli.trainer.callback_metrics
    cli = main(
        [
            "predict",
            *QUIET,
            "--model",
            "ImageClassification",
            "--model.model",
            '{"name": "resnet20", "num_classes": 4}',
            *SYNTHETIC,
            "--ckpt_path",
            ckpt,
            "--trainer.logger",
            "false",
        ]
    )
    probs = torch.cat(cli.trainer.predict_loop.predictions)
    assert probs.shape[1] == 4 and torch.allclose(probs.sum(1), torch.ones(len(probs)))


def test_print_config_shows_the_resolved_config(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs/resnet/mnist_resnet20.yaml"), "--print_config"])
    printed = capsys.readouterr().out
    assert "research.tasks.ImageClassification" in printed and "name: resnet20" in printed
    assert "research.data.EmbeddedMNISTDataModule" in printed
    # what runs is what is printed: the loggers and callbacks that fit adds, not "logger: null"
    trainer = yaml.safe_load(printed)["trainer"]
    assert [c["class_path"] for c in trainer["logger"]] == [
        "research.loggers.WandbLogger", "research.loggers.ContinuedCSVLogger"]
    callbacks = {c["class_path"].rsplit(".", 1)[1]: c["init_args"] for c in trainer["callbacks"]}
    assert callbacks["ModelCheckpoint"]["dirpath"] == "checkpoints/resnet/mnist_resnet20"
    assert callbacks["ModelCheckpoint"]["monitor"] == "val/acc" and {"RNGState", "FiniteLoss"} <= set(callbacks)


def test_printed_config_runs_as_a_config(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs/resnet/mnist_resnet20.yaml"), "--print_config"])
    (tmp_path / "printed.yaml").write_text(capsys.readouterr().out)
    cli = main(["fit", "--config", str(tmp_path / "printed.yaml"), "--trainer.max_steps", "1",
                "--trainer.limit_val_batches", "1", "--test_after_fit", "false"])
    assert [type(lg).__name__ for lg in cli.trainer.loggers] == ["WandbLogger", "ContinuedCSVLogger"]
    assert cli.trainer.checkpoint_callback.dirpath.endswith("checkpoints/resnet/mnist_resnet20")
    assert sum(type(c).__name__ == "ModelCheckpoint" for c in cli.trainer.callbacks) == 1


def test_checkpoints_load_weights_only(tmp_path):
    fit(["--trainer.max_epochs", "1"], tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints/tiny/last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["model"]["name"] == "resnet20"


def test_resume_from_another_models_checkpoint_is_a_clear_error(tmp_path):
    fit(["--trainer.max_epochs", "1"], tmp_path)
    with pytest.raises(ValueError, match="this checkpoint holds .*resnet20.*resnet32"):
        fit(
            [
                "--model.model",
                '{"name": "resnet32", "num_classes": 4}',
                "--trainer.max_epochs",
                "2",
                "--ckpt_path",
                "last",
            ],
            tmp_path,
        )


def test_default_run_has_offline_wandb_csv_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cli = main(
        [
            "fit",
            "--model",
            "ImageClassification",
            "--model.model",
            '{"name": "resnet20", "num_classes": 4}',
            *SYNTHETIC,
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_val_batches",
            "1",
            "--experiment",
            "smoke/default",
        ]
    )
    assert [type(lg).__mro__[1 if type(lg).__name__ == "ContinuedCSVLogger" else 0].__name__
            for lg in cli.trainer.loggers] == ["WandbLogger", "CSVLogger"]
    wandb_logger = next(lg for lg in cli.trainer.loggers if type(lg).__name__ == "WandbLogger")
    assert wandb_logger._wandb_init["mode"] == "offline"  # the run dir itself depends on wandb's global state
    assert (tmp_path / "checkpoints/smoke/default/last.ckpt").exists()
    assert list((tmp_path / "checkpoints/smoke/default").glob("best-*.ckpt"))
    names = {type(c).__name__ for c in cli.trainer.callbacks}
    assert {"ModelCheckpoint", "RichProgressBar", "LearningRateMonitor", "RNGState", "FiniteLoss"} <= names


def test_wandb_is_offline_unless_logged_in(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_unknown_config_key_is_rejected():
    with pytest.raises(ArgumentError, match="lrr"):  # python -m research fit prints it as one line
        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs/resnet/mnist_resnet20.yaml"),
                "--model.init_args.lrr",
                "0.1",
            ]
        )


def test_unknown_model_name_is_one_clear_message():
    with pytest.raises(ValueError, match="unknown model 'resnet2'; did you mean"):
        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs/resnet/mnist_resnet20.yaml"),
                "--model.init_args.model",
                '{"name": "resnet2", "num_classes": 10}',
            ]
        )


def test_missing_dataset_offline_is_one_clear_message(tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match="download"):
        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs/resnet/cifar10_resnet20.yaml"),
                "--data.init_args.root",
                str(tmp_path / "nowhere"),
                *QUIET,
            ]
        )


@pytest.mark.slow
def test_quick_start_reaches_98_percent(tmp_path):
    """The README's main job, end to end (about 5 minutes on 2 CPU cores): `pytest -m slow`."""
    cli = main(
        ["fit", "--config", str(ROOT / "configs/resnet/mnist_resnet20.yaml"), *QUIET, "--trainer.logger", "false"]
    )
    assert cli.trainer.callback_metrics["test/acc"] >= 0.98
    assert (tmp_path / "checkpoints/resnet/mnist_resnet20/last.ckpt").exists()


def test_image_size_not_divisible_by_patch_is_one_clear_message():
    config = str(ROOT / "configs/vit/mnist_vit_tiny.yaml")
    spec = '{"name": "vit_tiny_patch4_32", "num_classes": 10, "in_chans": 1, "img_size": 30}'
    with pytest.raises(ValueError, match="not divisible by patch_size=4"):
        main(["fit", "--config", config, "--model.init_args.model", spec])
    with pytest.raises(ValueError, match="cannot take this data's images .*built for 32x32"):
        main(["fit", "--config", config, "--data.init_args.img_size", "28", *QUIET, "--trainer.logger", "false"])
