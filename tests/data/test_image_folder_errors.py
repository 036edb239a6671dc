"""An ImageFolder layout that cannot mean what it says is one line, before the Trainer starts (issue 15, item 2).

Empty class folders in any split (not only the first, not only under train/), and val/ or test/
class folders that differ from train's. Each test reads what the user sees, as
tests/test_user_errors.py does: the last line printed, the exit code, no traceback.
"""

import sys
from pathlib import Path

import pytest
from PIL import Image

from research.commands import fit
from research.data import ImageFolderDataModule
from research.errors import TRACEBACK_ENV, run_command

EXTENSIONS = ".jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp"
TINY = """
trainer: {logger: false, enable_progress_bar: false, enable_model_summary: false, max_epochs: 1}
model:
  class_path: research.tasks.ImageClassification
  init_args:
    model: {name: five_layer_cnn, num_classes: 3, in_chans: 3, img_size: 16, hidden_dim: 16}
data:
  class_path: research.data.ImageFolderDataModule
  init_args: {root: images, batch_size: 2}
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
    assert exit_info.value.code == 2
    assert "Traceback" not in text
    last = text.splitlines()[-1]
    assert last.startswith("error: ") and last.endswith(f"[{TRACEBACK_ENV}=1 shows the traceback]")
    return last


def tree(splits: dict[str, dict[str, int]]) -> None:
    """images/<split>/<class>/<i>.png, ``count`` 16x16 images a class (0 leaves the folder empty)."""
    for split, classes in splits.items():
        for name, count in classes.items():
            Path(f"images/{split}/{name}").mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (16, 16), (30 * i, 0, 0)).save(f"images/{split}/{name}/{i}.png")


FULL = {"cat": 4, "cow": 4, "dog": 4}


def test_a_complete_layout_builds_and_reads_every_split():
    """The control: the same layouts as below, with nothing wrong, build and load."""
    tree({"train": FULL, "val": {"cat": 1, "cow": 1, "dog": 1}, "test": {"cat": 2, "cow": 1, "dog": 1}})
    Path("images/train/dog/deeper").mkdir()
    Image.new("RGB", (16, 16)).save("images/train/dog/deeper/x.png")  # images at any depth count
    data = ImageFolderDataModule("images", batch_size=2)
    data.setup("fit")
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (13, 3, 4)
    assert data.class_names == ("cat", "cow", "dog")


@pytest.mark.parametrize("split", ["train", "val", "test"])
@pytest.mark.parametrize("empty", ["cow", "dog"], ids=["middle", "last"])
def test_an_empty_class_folder_in_any_split_is_named(split, empty, capsys):
    splits = {"train": dict(FULL), "val": dict(FULL), "test": dict(FULL)}
    splits[split][empty] = 0
    tree(splits)
    Path(f"images/{split}/{empty}/notes.txt").write_text("not an image")  # a file that is not an image
    last = printed(capsys, lambda: ImageFolderDataModule("images"))
    assert f"class folder {empty} under images/{split} holds no image ({EXTENSIONS})" in last
    if split == "train":
        assert "every folder under train/ is a class: add images or remove the folder" in last
    else:
        carved = "validation" if split == "val" else "test"
        assert f"add images of the class, or remove images/{split} to carve the {carved} split from train/" in last


def test_several_empty_class_folders_are_named_together(capsys):
    tree({"train": FULL, "val": {"cat": 1, "cow": 0, "dog": 0}})
    last = printed(capsys, lambda: ImageFolderDataModule("images"))
    assert "class folders cow, dog under images/val hold no image" in last


def test_an_empty_first_class_folder_is_named_like_the_others(capsys):
    tree({"train": {"cat": 0, "cow": 4, "dog": 4}})
    last = printed(capsys, lambda: ImageFolderDataModule("images"))
    assert "class folder cat under images/train holds no image" in last


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_class_missing_from_val_or_test_is_named(split, capsys):
    tree({"train": FULL, split: {"cat": 1, "dog": 1}})
    last = printed(capsys, lambda: ImageFolderDataModule("images"))
    carved = "validation" if split == "val" else "test"
    assert (f"images/{split} lacks class folder cow that images/train has: add it with images of the class, or "
            f"remove images/{split} to carve the {carved} split from train/") in last


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_class_that_train_lacks_is_named(split, capsys):
    tree({"train": FULL, split: {**FULL, "emu": 1}})
    last = printed(capsys, lambda: ImageFolderDataModule("images"))
    assert (f"images/{split} has class folder emu that images/train lacks (the classes are train/'s folders): add "
            f"it to train/ with images, or rename or remove it under {split}/") in last


def test_a_misspelt_class_folder_is_named_both_ways(capsys):
    tree({"train": FULL, "val": {"cat": 1, "Cow": 1, "dog": 1}})
    last = printed(capsys, lambda: ImageFolderDataModule("images"))
    assert ("images/val has class folder Cow that images/train lacks, and lacks class folder cow that it has: val/ "
            "must hold train/'s class folders, named alike (case counts)") in last


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_split_without_class_folders_is_named(split, capsys):
    tree({"train": FULL} if split == "val" else {})
    Path(f"images/{split}").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16)).save(f"images/{split}/loose.png")  # an image outside any class folder
    last = printed(capsys, lambda: ImageFolderDataModule("images"))
    assert f"no class folder under images/{split}" in last


@pytest.mark.parametrize(("layout", "said"), [
    ({"train": FULL, "test": {"cat": 1, "cow": 0, "dog": 1}}, "class folder cow under images/test holds no image"),
    ({"train": FULL, "val": {"cat": 1, "dog": 1}}, "images/val lacks class folder cow that images/train has"),
], ids=["empty-test-class", "class-missing-from-val"])
def test_a_layout_mistake_stops_fit_before_the_trainer_starts(layout, said, capsys):
    """Through ``python -m research fit`` with a config: one line, and no Trainer ran (no checkpoint or log folder)."""
    tree(layout)
    Path("tiny.yaml").write_text(TINY)
    last = printed(capsys, lambda: fit.main(["fit", "--config", "tiny.yaml"]))
    assert said in last
    assert not Path("checkpoints").exists() and not Path("logs").exists()
