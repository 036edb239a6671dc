"""``img_size`` may be (height, width) wherever a vision datamodule takes it (issue 15, item 6).

Every source, every loader and every augmentation hands out exactly (B, C, H, W); the image is
stretched, not transposed (a bright left band stays on the left); the pair reaches the datamodule
from YAML and from the command line; a model built for another size stops the run with one line.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from research.commands import fit
from research.data import (
    CIFAR10DataModule,
    EmbeddedMNISTDataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    NpzDataModule,
    SyntheticDataModule,
)
from research.data.augment import BatchAugment, _rand_augment, random_crop
from research.data.image_folder import ImageFiles
from research.data.image_tensors import convert_images, image_hw
from research.errors import TRACEBACK_ENV, run_command

ROOT = Path(__file__).resolve().parents[2]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.logger", "false"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["research.fit"])
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)


def test_image_hw_reads_a_side_or_a_pair():
    assert image_hw(28) == (28, 28)
    assert image_hw((32, 48)) == image_hw([32, 48]) == image_hw(np.array([32, 48]).tolist()) == (32, 48)
    assert image_hw(np.int64(7)) == (7, 7) and type(image_hw(np.int64(7))[0]) is int
    for bad in (0, -3, (32,), (32, 48, 3), (32, 0), "32", (32.0, 48), True, None):
        with pytest.raises(ValueError, match=r"img_size must be a positive integer .* e\.g\. \[32, 48\]"):
            image_hw(bad)


def test_a_square_pair_is_stored_as_its_side():
    assert SyntheticDataModule(num_samples=20, img_size=(16, 16)).img_size == 16
    assert SyntheticDataModule(num_samples=20, img_size=[12, 20]).img_size == (12, 20)


def _left_band(height: int, width: int) -> np.ndarray:
    """(20, height, width) uint8 images, 255 in the left third of the columns and the top third of the rows."""
    images = np.zeros((20, height, width), np.uint8)
    images[:, :, : width // 3] = 255
    images[:, : height // 3, :] = 255
    return images


def _check_orientation(images: torch.Tensor) -> None:
    """The bright bands of :func:`_left_band` are still on the left and at the top, not transposed."""
    h, w = images.shape[-2:]
    grey = images.float().mean(1)  # (B, H, W)
    assert grey[:, h // 2 :, : w // 4].min() > 0.9  # left band, below the top band
    assert grey[:, h // 2 :, w // 2 :].max() < 0.1  # right and bottom: dark
    assert grey[:, : h // 4, w // 2 :].min() > 0.9  # top band, right of the left band


def _sources(tmp: Path, root: Path) -> dict:
    np.savez(tmp / "band.npz", images=_left_band(24, 18), labels=np.arange(20) % 2)
    for name, count in (("a", 6), ("b", 6)):
        (tmp / "folder/train" / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(_left_band(24, 18)[0]).save(tmp / "folder/train" / name / f"{i}.png")
    return {
        "embedded": lambda size, augment: EmbeddedMNISTDataModule(img_size=size, augment=augment, batch_size=500),
        "synthetic": lambda size, augment: SyntheticDataModule(num_samples=40, img_size=size, augment=augment,
                                                           batch_size=8),
        "npz": lambda size, augment: NpzDataModule(tmp / "band.npz", img_size=size, augment=augment, batch_size=4),
        "image_folder": lambda size, augment: ImageFolderDataModule(
            tmp / "folder", img_size=size, augment=augment, batch_size=4, val_fraction=0.2, test_fraction=0.2
        ),
        "mnist": lambda size, augment: MNISTDataModule(root, img_size=size, augment=augment, batch_size=4),
        "fashion_mnist": lambda size, augment: FashionMNISTDataModule(
            root, img_size=size, augment=augment, batch_size=4
        ),
        "cifar10": lambda size, augment: CIFAR10DataModule(root, img_size=size, augment=augment, batch_size=4),
    }


SOURCES = ["embedded", "synthetic", "npz", "image_folder", "mnist", "fashion_mnist", "cifar10"]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("size", [(32, 48), (20, 12)], ids=["32x48", "20x12"])
def test_every_source_and_loader_gives_exactly_height_by_width(source, size, tmp_path, fake_torchvision_root):
    augment = "crop_flip+rand-m9-mstd0.5" if source in ("npz", "image_folder") else "crop_flip"
    dm = _sources(tmp_path, fake_torchvision_root)[source](list(size), augment)
    assert dm.img_size == size
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        shapes = {tuple(images.shape[1:]) for images, _ in loader}
        assert shapes == {(dm.in_chans, *size)}, (source, shapes)


@pytest.mark.parametrize("source", ["npz", "image_folder"])
def test_resizing_to_a_pair_stretches_and_never_transposes(source, tmp_path, fake_torchvision_root):
    """24x18 images (taller than wide) resized to 12x36 (wider than tall): the bands stay where they were."""
    dm = _sources(tmp_path, fake_torchvision_root)[source]((12, 36), "none")
    dm.setup("fit")
    images, _ = next(iter(dm.test_dataloader()))
    assert images.shape[-2:] == (12, 36)
    _check_orientation(images)


def test_the_file_reader_and_the_tensor_resize_agree_on_height_and_width(tmp_path):
    Image.fromarray(_left_band(24, 18)[0]).save(tmp_path / "band.png")
    from_file, _ = ImageFiles([(str(tmp_path / "band.png"), 0)], img_size=(12, 36), in_chans=1)[0]
    from_tensor = convert_images(torch.from_numpy(_left_band(24, 18)[:1, None]), img_size=(12, 36), in_chans=1)
    assert from_file.shape == from_tensor.shape[1:] == (1, 12, 36)
    _check_orientation(from_file[None])
    _check_orientation(from_tensor)


def test_a_folder_of_non_square_images_keeps_their_size_by_default(tmp_path, fake_torchvision_root):
    dm = _sources(tmp_path, fake_torchvision_root)["image_folder"](None, "none")
    assert dm.img_size == (24, 18)
    assert NpzDataModule(tmp_path / "band.npz").img_size == (24, 18)


@pytest.mark.parametrize("spec", ["crop", "flip", "crop_flip", "rand-m9-mstd0.5", "crop_flip+rand-m15-n3"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_every_augmentation_keeps_height_and_width(spec, dtype):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 12, 20), dtype=torch.uint8)
    images = images if dtype == torch.uint8 else images.float() / 255
    out = BatchAugment(spec, img_size=(12, 20), fill=(0.5, 0.5, 0.5))(images)
    assert out.shape == (6, 3, 12, 20) and out.dtype == dtype


def test_a_crop_of_a_non_square_image_is_a_shift_of_it():
    torch.manual_seed(0)
    images = torch.zeros(64, 1, 12, 20, dtype=torch.uint8)
    images[:, :, 5, 13] = 255
    crops = random_crop(images, padding=4)
    flat = crops[:, 0].flatten(1).argmax(1)
    shift = torch.stack([flat // 20 - 5, flat % 20 - 13], 1)
    assert (crops.flatten(1).sum(1) == 255).all() and shift.abs().max() == 4


def test_rand_augment_translations_follow_the_shorter_side():
    """As timm's create_transform: translate_const = 0.45 x min(H, W)."""
    for size, const in ((32, 14), ((32, 48), 14), ((48, 32), 14), ((100, 40), 18)):
        assert {op.hparams["translate_const"] for op in _rand_augment("rand-m9", img_size=size, fill=(0.5,)).ops} == {
            const}


# --- through the command line and YAML ---------------------------------------------------------------


SYNTHETIC = """
trainer: {logger: false, enable_progress_bar: false, enable_model_summary: false, max_epochs: 1}
model:
  class_path: research.tasks.ImageClassification
  init_args:
    model: {name: vit_tiny_patch4_32, num_classes: 4, in_chans: 1, img_size: [32, 48], depth: 1}
data:
  class_path: research.data.SyntheticDataModule
  init_args: {num_samples: 24, num_classes: 4, img_size: [32, 48], in_chans: 1, batch_size: 8}
"""


def test_a_pair_comes_from_yaml_and_from_the_command_line():
    Path("pair.yaml").write_text(SYNTHETIC)
    cli = fit.main(["--config", "pair.yaml"], run=False)
    assert cli.datamodule.img_size == (32, 48)
    cli = fit.main(["--config", "pair.yaml", "--data.init_args.img_size", "[24,16]"], run=False)
    assert cli.datamodule.img_size == (24, 16)
    cli = fit.main(["--config", "pair.yaml", "--data.init_args.img_size", "28"], run=False)
    assert cli.datamodule.img_size == 28


def test_a_model_built_for_another_size_is_one_line_before_training(capsys):
    """ViT built for 32x48, data resized to 48x32: the task's dry forward names both sizes."""
    Path("pair.yaml").write_text(SYNTHETIC)
    with pytest.raises(SystemExit) as exit_info:
        run_command(lambda: fit.main(["fit", "--config", "pair.yaml", "--data.init_args.img_size", "[48,32]"]))
    out = capsys.readouterr()
    text = (out.out + out.err).strip()
    assert exit_info.value.code == 2 and "Traceback" not in text
    last = text.splitlines()[-1]
    assert last.startswith("error: the model cannot take this data's images (shape (B, 1, 48, 32))"), last
    assert "built for 32x48" in last and "img_size" in last
    assert not list(Path().rglob("*.ckpt"))


def test_swin_config_trains_one_batch_on_32x48(fake_torchvision_root, monkeypatch):
    """The issue's command: the Fashion-MNIST Swin-T config with both sizes overridden to [32,48]."""
    from research.models.swin import SwinTransformer

    seen = []
    forward = SwinTransformer.forward
    monkeypatch.setattr(SwinTransformer, "forward", lambda self, x: seen.append(tuple(x.shape)) or forward(self, x))
    fit.main(["fit", "--config", str(ROOT / "configs/swin/fashion_mnist_swin_tiny.yaml"),
              "--data.init_args.img_size", "[32,48]", "--model.init_args.model.img_size", "[32,48]",
              "--data.init_args.batch_size", "4", "--trainer.fast_dev_run", "true", *QUIET])
    assert (1, 1, 32, 48) in seen  # the task's dry forward at setup
    assert (4, 1, 32, 48) in seen  # a training (and a validation) batch
    assert {shape[1:] for shape in seen} == {(1, 32, 48)}
