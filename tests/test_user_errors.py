"""A user's mistake ends every command with one line (what was wrong, what to do) and a non-zero exit.

Each test reads what the user sees: the last line printed, the exit code, no traceback unless asked.
"""

import os
import subprocess
import sys
from argparse import ArgumentError
from pathlib import Path

import pytest
import torch

from research.commands import attack, fit, quantize
from research.errors import TRACEBACK_ENV, UserError, run_command, user_message
from research.tasks import Distillation, ImageClassification

ROOT = Path(__file__).resolve().parents[1]
TINY = """
trainer: {logger: false, enable_progress_bar: false, enable_model_summary: false, max_epochs: 1}
model:
  class_path: research.tasks.ImageClassification
  init_args:
    model: {name: five_layer_cnn, num_classes: 4, in_chans: 1, img_size: 16, hidden_dim: 16}
data:
  class_path: research.data.SyntheticDataModule
  init_args: {num_samples: 16, num_classes: 4, img_size: 16, in_chans: 1, batch_size: 8}
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["research"])
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)


def printed(capsys, command) -> str:
    """Run ``command`` as a command's entry point does; the last line printed, after checking the rest."""
    with pytest.raises(SystemExit) as exit_info:
        run_command(command)
    out = capsys.readouterr()
    text = (out.out + out.err).strip()
    assert exit_info.value.code not in (0, None)
    assert "Traceback" not in text
    last = text.splitlines()[-1]
    assert last.startswith("error: ") and last.endswith(f"[{TRACEBACK_ENV}=1 shows the traceback]")
    return last


def config(text: str = TINY, name: str = "tiny.yaml") -> str:
    Path(name).write_text(text)
    return name


# --- one line, for each command -------------------------------------------------------------------------


def test_a_command_line_mistake_is_one_line_from_python_m(tmp_path):
    """The real entry point: ``python -m research fit`` with an empty config file."""
    Path("empty.yaml").write_text("")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop(TRACEBACK_ENV, None)
    done = subprocess.run([sys.executable, "-m", "research", "fit", "--config", "empty.yaml"], env=env,
                          capture_output=True, text=True, timeout=300)
    text = (done.stdout + done.stderr).strip()
    assert done.returncode == 2
    assert "Traceback" not in text
    assert text.splitlines()[-1].startswith("error: config file empty.yaml is empty")


def test_the_traceback_comes_when_asked(monkeypatch, capsys):
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(UserError, match="is empty"):
        run_command(lambda: fit.main(["fit", "--config", config("")]))


def test_an_error_that_is_not_the_users_keeps_its_traceback():
    def broken():
        return torch.zeros(2) @ torch.zeros(3)  # a RuntimeError inside torch: a bug, not a mistake

    with pytest.raises(RuntimeError):
        run_command(broken)
    assert user_message(ValueError("raised outside this package")) is None


def test_our_message_is_dug_out_of_jsonargparse(capsys):
    spec = TINY.replace("num_classes: 4, in_chans", "num_classes: ten, in_chans")
    last = printed(capsys, lambda: fit.main(["fit", "--config", config(spec)]))
    assert "num_classes: ten" in last and "write counts and sizes as numbers" in last
    assert "Union subtypes" not in last and "NoneType" not in last


def test_an_unknown_option_is_one_line(capsys):
    last = printed(capsys, lambda: fit.main(["fit", "--config", config(), "--model.init_args.lrr", "0.1"]))
    assert "Option 'lrr' is not accepted" in last
    last = printed(capsys, lambda: fit.main(["fit", "--config", config(), "--trainer.max_epochs", "abc"]))
    assert "trainer.max_epochs" in last and "'abc'" in last
    with pytest.raises(ArgumentError):  # main() itself raises
        fit.main(["fit", "--config", config(), "--model.init_args.lrr", "0.1"])


@pytest.mark.parametrize("where", ["command line", "yaml"])
def test_a_former_flat_optimizer_argument_names_its_place_in_the_optim_group(where, capsys):
    """Configs written before the optimizer group (``optimizer: sgd`` under init_args) say where it went."""
    if where == "yaml":
        text = TINY.replace("    model: {name: five_layer_cnn", "    optimizer: sgd\n    model: {name: five_layer_cnn")
        command = ["fit", "--config", config(text)]
    else:
        command = ["fit", "--config", config(), "--model.init_args.optimizer", "sgd"]
    last = printed(capsys, lambda: fit.main(command))
    assert "Option 'optimizer' is not accepted; the optimizer settings are one group now: " \
           "--model.init_args.optim.name (in YAML, optim: {name: ...} under the model's init_args)" in last
    last = printed(capsys, lambda: fit.main(["fit", "--config", config(), "--model.init_args.lrr", "0.1"]))
    assert "one group now" not in last  # only the former names get the hint


def test_reproduce_exits_with_its_status_through_the_entry_point(capsys):
    from research.commands.reproduce import main

    with pytest.raises(SystemExit) as exit_info:
        run_command(lambda: main(["list"]))
    assert exit_info.value.code == 0


# --- config files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "said"),
    [("", "is empty"), ("- a\n- b\n", "is a list"), ("hello\n", "is a str, 'hello'"),
     ("trainer:\n\tmax_epochs: 1\n", "is not valid YAML at line 2, column 1 (a tab: YAML indents with spaces")],
    ids=["empty", "list", "string", "tabs"],
)
def test_a_config_file_that_is_not_a_mapping_is_named(text, said, capsys):
    name = config(text, "mine.yaml")
    for command in (lambda: fit.main(["fit", "--config", name]),
                    lambda: attack.main(["--config", name, "--ckpt_path", "x.ckpt"]),
                    lambda: quantize.main(["--config", name, "--ckpt_path", "x.ckpt"])):
        torch.save({"state_dict": {}}, "x.ckpt")
        assert f"error: config file mine.yaml {said}" in printed(capsys, command)


def test_a_missing_config_file_is_named(capsys):
    assert "config file nope.yaml not found" in printed(capsys, lambda: fit.main(["fit", "--config", "nope.yaml"]))


# --- checkpoints that are not checkpoints --------------------------------------------------------------


def _broken(kind: str) -> str:
    path = Path(f"{kind}.ckpt")
    if kind == "random":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        torch.save(torch.zeros(3), path)
    return str(path)


BROKEN = {"random": "neither the zip archive torch.save writes nor a pickle", "truncated": "truncated",
          "empty": "the file is empty, 0 bytes", "tensor": "it holds a Tensor, not a mapping"}
CNN = {"name": "five_layer_cnn", "num_classes": 4, "in_chans": 1, "img_size": 16, "hidden_dim": 16}


@pytest.mark.parametrize("kind", BROKEN)
@pytest.mark.parametrize("reader", ["fit --ckpt_path", "attack", "quantize", "teacher", "pretrained"])
def test_a_file_that_is_not_a_checkpoint_says_so(kind, reader, capsys):
    path = _broken(kind)
    commands = {
        "fit --ckpt_path": lambda: fit.main(["test", "--config", config(), "--ckpt_path", path]),
        "attack": lambda: attack.main(["--config", config(), "--ckpt_path", path]),
        "quantize": lambda: quantize.main(["--config", config(), "--ckpt_path", path]),
        "teacher": lambda: Distillation(model=CNN, teacher=CNN, teacher_checkpoint=path),
        "pretrained": lambda: ImageClassification(model=CNN, pretrained=path),
    }
    last = printed(capsys, commands[reader])
    assert f"not a checkpoint: {path} (" in last and BROKEN[kind] in last
    assert "weights_only=False" not in last


def test_a_state_dict_is_not_a_checkpoint_to_resume(capsys):
    torch.save({"w": torch.zeros(2)}, "weights.pt")
    last = printed(capsys, lambda: fit.main(["fit", "--config", config(), "--ckpt_path", "weights.pt"]))
    assert "not a checkpoint: weights.pt (a mapping without 'state_dict'" in last


def test_ckpt_path_last_without_a_last_checkpoint_is_one_line(capsys):
    last = printed(capsys, lambda: fit.main(["fit", "--config", config(), "--ckpt_path", "last",
                                             "--experiment", "nothing-here"]))
    assert "--ckpt_path last: there is no checkpoints/nothing-here/last.ckpt" in last


# --- run length, labels, attack settings, data ---------------------------------------------------------


@pytest.mark.parametrize("key", ["max_epochs", "max_steps"])
def test_a_run_that_trains_nothing_stops_before_training(key, capsys):
    last = printed(capsys, lambda: fit.main(["fit", "--config", config(), f"--trainer.{key}", "0"]))
    assert f"--trainer.{key} 0 trains nothing; give at least 1" in last


def test_a_label_equal_to_num_classes_is_named(capsys):
    import numpy as np

    labels = np.arange(16) % 4
    labels[5] = 4  # one label too many for a 4-class model
    np.savez("data.npz", images=np.zeros((16, 16, 16), np.uint8), labels=labels)
    spec = TINY.replace("class_path: research.data.SyntheticDataModule", "class_path: research.data.NpzDataModule")
    spec = spec.replace("{num_samples: 16, num_classes: 4, img_size: 16, in_chans: 1, batch_size: 8}",
                        "{path: data.npz, batch_size: 8}")
    last = printed(capsys, lambda: fit.main(["fit", "--config", config(spec)]))
    assert "NpzDataModule has label 4, but the model predicts 4 classes (labels 0 to 3)" in last


def test_nan_in_an_npz_is_a_clear_error_at_setup(capsys):
    import numpy as np

    from research.data import NpzDataModule

    images = np.full((8, 4, 4), 0.5, np.float32)
    images[3, 1, 1] = np.nan
    np.savez("nan.npz", images=images, labels=np.arange(8) % 2)
    last = printed(capsys, lambda: NpzDataModule("nan.npz").setup())
    assert "nan.npz['images'] holds NaN or inf in 1 of its 8 entries (the first: index 3)" in last


def test_an_empty_class_folder_that_is_not_the_first_is_named(capsys):
    from PIL import Image

    from research.data import ImageFolderDataModule

    for name in ("cat", "dog"):
        Path(f"images/train/{name}").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save("images/train/cat/0.png")
    last = printed(capsys, lambda: ImageFolderDataModule("images"))
    assert "class folder dog under images/train holds no image" in last


def test_a_corpus_that_is_not_utf8_is_named_before_training(capsys):
    from research.data import TranslationDataModule

    Path("corpus.tsv").write_bytes("hello\tol\u00e1\n".encode("latin-1"))
    last = printed(capsys, lambda: TranslationDataModule(corpus="corpus.tsv"))
    assert "corpus file corpus.tsv is not UTF-8 text (byte 0xe1 on line 1)" in last


ATTACKED = {"eps": (["--eps", "8"], "--eps 8 is above 1: images are in [0, 1]"),
            "steps": (["--steps", "0", "--step_size", "0.01"], "--steps 0 with --step_size 0.01: PGD needs steps >= 1")}


@pytest.mark.parametrize("case", ATTACKED)
def test_attack_settings_that_cannot_mean_what_they_say(case, capsys):
    from research.attacks.evaluation import robust_accuracy

    args, said = ATTACKED[case]
    eps = [float(args[1])] if case == "eps" else [0.1]
    steps, size = (0, 0.01) if case == "steps" else (40, None)
    last = printed(capsys, lambda: robust_accuracy(torch.nn.Flatten(), [], attacks=["pgd"], eps=eps, steps=steps,
                                                   step_size=size))
    assert said in last


# --- a loss that diverges during training --------------------------------------------------------------


def test_a_loss_that_becomes_nan_stops_training_and_keeps_the_last_good_checkpoint(capsys):
    """lr 1000: the first epochs stay finite, then the loss is NaN; the run stops in that step."""
    import re

    spec = TINY.replace("max_epochs: 1}", "max_epochs: 8}").replace("num_samples: 16", "num_samples: 20")
    spec = spec.replace("hidden_dim: 16}", "hidden_dim: 16}\n    optim: {lr: 1000.0}")
    last = printed(capsys, lambda: fit.main(["fit", "--config", config(spec), "--experiment", "nan",
                                             "--test_after_fit", "false"]))
    said = re.search(r"error: (\S+) became (nan|inf|-inf) at training batch \d of epoch (\d+) \(global step (\d+)\); "
                     r"training stopped and checkpoints/nan/last.ckpt keeps the last good state; try a lower "
                     r"learning rate \(now [\d.e+]+\) or gradient clipping \(--trainer.gradient_clip_val 1.0\)", last)
    assert said, last
    name, epoch, step = said[1], int(said[3]), int(said[4])
    assert name == "train/loss" and epoch >= 1  # a good epoch came first
    steps_per_epoch = 2  # 16 training images in batches of 8
    assert epoch * steps_per_epoch < step <= (epoch + 1) * steps_per_epoch  # stopped in the epoch it diverged
    kept = torch.load("checkpoints/nan/last.ckpt", weights_only=False)
    assert (kept["epoch"], kept["global_step"]) == (epoch - 1, epoch * steps_per_epoch)  # the last epoch end
    assert all(v.isfinite().all() for v in kept["state_dict"].values() if v.is_floating_point())
    for best in Path("checkpoints/nan").glob("best-*.ckpt"):
        assert int(re.search(r"step=(\d+)", best.name)[1]) <= kept["global_step"]


# --- unreadable image files ----------------------------------------------------------------------------


def _image_folder(corrupt: str = "dog/9.png") -> None:
    from PIL import Image

    for name in ("cat", "dog"):
        Path(f"images/train/{name}").mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(f"images/train/{name}/{i}.png")
    Path(f"images/train/{corrupt}").write_bytes(b"not an image")


def test_an_unreadable_image_is_named_before_training(capsys):
    _image_folder()
    spec = TINY.replace("num_classes: 4, in_chans: 1, img_size: 16", "num_classes: 2, in_chans: 3, img_size: 16")
    spec = spec.replace("class_path: research.data.SyntheticDataModule",
                        "class_path: research.data.ImageFolderDataModule")
    spec = spec.replace("{num_samples: 16, num_classes: 4, img_size: 16, in_chans: 1, batch_size: 8}",
                        "{root: images, batch_size: 2, img_size: 16}")
    last = printed(capsys, lambda: fit.main(["fit", "--config", config(spec)]))
    assert ("error: 1 of the 9 image files under images/train cannot be read, the first images/train/dog/9.png "
            "(cannot identify image file): fix or remove them, or skip them with --data.init_args.skip_unreadable "
            "true") in last
    assert not Path("checkpoints").exists() or not list(Path("checkpoints").rglob("*.ckpt"))  # nothing trained


def test_unreadable_images_can_be_skipped_with_a_warning_and_a_count():
    from research.data import ImageFolderDataModule

    _image_folder()
    data = ImageFolderDataModule("images", batch_size=2, skip_unreadable=True)
    with pytest.warns(UserWarning, match=r"skipping 1 of the 9 image files under images/train that cannot be "
                                         r"read \(skip_unreadable=True\): images/train/dog/9.png"):
        data.setup("fit")
    assert len(data.train_set) + len(data.val_set) + len(data.test_set) == 8


def test_an_unreadable_first_image_is_named(capsys):
    from research.data import ImageFolderDataModule

    _image_folder("cat/0.png")
    last = printed(capsys, lambda: ImageFolderDataModule("images").setup())  # the first image is read then
    assert "image file images/train/cat/0.png cannot be read (cannot identify image file); fix or remove it" in last
    data = ImageFolderDataModule("images", batch_size=2, skip_unreadable=True)  # the next readable one: the defaults
    assert data.in_chans == 3


def test_an_image_that_breaks_while_loading_is_named_from_a_worker(capsys):
    """A truncated JPEG passes the header check; reading it in a DataLoader worker names it in one line."""
    from PIL import Image
    from torch.utils.data import DataLoader

    from research.data.image_folder import ImageFiles

    Image.new("RGB", (64, 64), (200, 10, 10)).save("whole.jpg")
    Path("cut.jpg").write_bytes(Path("whole.jpg").read_bytes()[:300])
    loader = DataLoader(ImageFiles([("cut.jpg", 0)], img_size=8, in_chans=3), batch_size=1, num_workers=1)
    last = printed(capsys, lambda: next(iter(loader)))
    assert "error: cannot read image cut.jpg (" in last and "fix or remove the file" in last
    assert "Original Traceback" not in last


# --- a command that needs an earlier run names that run -------------------------------------------------


@pytest.mark.parametrize(
    "command, maker",
    [
        (lambda: fit.main(["fit", "--config", str(ROOT / "configs/distill/mnist_resnet18_to_five_layer_cnn.yaml"),
                           "--model.init_args.teacher_checkpoint", "checkpoints/resnet/mnist_resnet18/last.ckpt"]),
         "configs/resnet/mnist_resnet18.yaml"),
        (lambda: fit.main(["fit", "--config", str(ROOT / "configs/mae/fashion_mnist_linprobe.yaml"),
                           "--data.init_args.root", "DIR",
                           "--model.init_args.pretrained", "checkpoints/mae/fashion_mnist_pretrain/last.ckpt"]),
         "configs/mae/fashion_mnist_pretrain.yaml"),
        (lambda: quantize.main(["--config", str(ROOT / "configs/cnn/mnist_five_layer_cnn.yaml"),
                                "--ckpt_path", "checkpoints/cnn/mnist_five_layer_cnn/last.ckpt"]),
         "configs/cnn/mnist_five_layer_cnn.yaml"),
    ],
    ids=["distillation teacher", "mae probe", "quantize"],
)
def test_a_checkpoint_from_an_earlier_run_names_the_command_that_writes_it(command, maker, capsys):
    """The README's commands that read an earlier run's checkpoint: without it, the line says how to make it."""
    last = printed(capsys, command)
    assert f"train it first with python -m research fit --config {maker}" in last
