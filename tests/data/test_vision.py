from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from torch import nn

import research
from research.data import EmbeddedMNISTDataModule, NpzDataModule, SyntheticDataModule, VisionDataModule
from research.data.image_tensors import LUMA_WEIGHTS, channel_stats, convert_stats, image_hw, to_float
from research.data.loaders import read_examples
from research.data.npz import EMBEDDED_MNIST

# Class counts of the embedded digits, as stated in research/data/embedded/README.md.
EMBEDDED_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


def write_npz(path: Path, images: np.ndarray, labels: np.ndarray, **extra) -> Path:
    np.savez(path, images=images, labels=labels, **extra)
    return path


def rgb_npz(tmp_path: Path, n: int = 60, size: int = 12) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return write_npz(tmp_path / "rgb.npz", images, np.arange(n) % 3)


def first_batch(loader):
    return next(iter(loader))


def all_images(loader) -> torch.Tensor:
    return torch.cat([x for x, _ in loader])


def check_batch(dm: VisionDataModule, images: torch.Tensor, labels: torch.Tensor) -> None:
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.shape[1:] == (dm.in_chans, *image_hw(dm.img_size))
    assert len(images) == len(labels) <= dm.batch_size
    assert 0 <= images.min() and images.max() <= 1
    assert 0 <= labels.min() and labels.max() < dm.num_classes


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: EmbeddedMNISTDataModule(batch_size=64),
        lambda tmp: EmbeddedMNISTDataModule(batch_size=64, img_size=32, in_chans=3, augment="crop_flip"),
        lambda tmp: SyntheticDataModule(batch_size=32, augment="crop"),
        lambda tmp: SyntheticDataModule(num_samples=100, num_classes=4, img_size=16, in_chans=1, batch_size=16),
        lambda tmp: NpzDataModule(rgb_npz(tmp), batch_size=16, augment="rand-m9-mstd0.5"),
        lambda tmp: EmbeddedMNISTDataModule(batch_size=64, img_size=(32, 48), in_chans=3, augment="crop_flip"),
        lambda tmp: SyntheticDataModule(batch_size=16, img_size=(12, 20), augment="crop_flip+rand-m9-mstd0.5"),
    ],
    ids=["embedded", "embedded-32-rgb-crop_flip", "synthetic", "synthetic-grey", "npz-rgb-randaugment",
         "embedded-32x48-crop_flip", "synthetic-12x20-randaugment"],
)
def test_batches_are_float_images_in_unit_range(make, tmp_path):
    dm = make(tmp_path)
    assert len(dm.mean) == len(dm.std) == dm.in_chans and len(dm.class_names) == dm.num_classes
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        check_batch(dm, *first_batch(loader))


def test_embedded_attributes_are_known_before_setup():
    dm = EmbeddedMNISTDataModule()
    assert dm.train_set is None
    assert (dm.num_classes, dm.in_chans, dm.img_size) == (10, 1, 28)
    assert dm.class_names == tuple("0123456789")
    assert dm.mean[0] == pytest.approx(0.1311, abs=1e-3) and dm.std[0] == pytest.approx(0.3087, abs=1e-3)
    converted = EmbeddedMNISTDataModule(img_size=32, in_chans=3)
    assert (converted.in_chans, converted.img_size) == (3, 32)
    assert len(set(converted.mean)) == 1 and converted.mean[0] == pytest.approx(dm.mean[0], abs=2e-3)


def test_embedded_data_ships_inside_the_package():
    assert EMBEDDED_MNIST.is_file()
    assert EMBEDDED_MNIST.is_relative_to(Path(research.__file__).parent)
    assert (EMBEDDED_MNIST.parent / "README.md").is_file()


def test_embedded_split_is_fixed_disjoint_and_complete():
    a, b, other_seed = EmbeddedMNISTDataModule(), EmbeddedMNISTDataModule(), EmbeddedMNISTDataModule(seed=1)
    for dm in (a, b, other_seed):
        dm.setup()
    assert (len(a.train_set), len(a.val_set), len(a.test_set)) == (8000, 1000, 1000)
    splits = [set(s.indices) for s in (a.train_set, a.val_set, a.test_set)]
    assert set.union(*splits) == set(range(10_000)) and sum(map(len, splits)) == 10_000
    assert a.test_set.indices == b.test_set.indices == other_seed.test_set.indices
    assert a.val_set.indices == b.val_set.indices
    assert a.val_set.indices != other_seed.val_set.indices
    assert torch.bincount(a.train_set.dataset.labels).tolist() == EMBEDDED_COUNTS  # the real digits


def test_val_and_test_loaders_are_deterministic_and_unaugmented():
    dm = SyntheticDataModule(augment="crop_flip", batch_size=32)
    dm.setup()
    loader = dm.val_dataloader()
    order = loader.dataset.indices  # a fixed permutation of the split (research.data.loaders.fixed_order)
    assert sorted(order) == list(range(len(dm.val_set)))
    stored = dm.val_set.dataset.images[[dm.val_set.indices[i] for i in order]]
    assert torch.equal(all_images(loader), to_float(stored))
    assert torch.equal(all_images(dm.test_dataloader()), all_images(dm.test_dataloader()))


def test_augmentation_changes_train_batches_only():
    dm = SyntheticDataModule(augment="crop_flip")
    dm.setup()
    batch = read_examples(dm.train_set, list(range(64)))
    torch.manual_seed(0)
    augmented, labels = dm.train_dataloader().collate_fn.collate(batch)
    assert torch.equal(labels, batch[1])
    assert not torch.equal(augmented, to_float(batch[0]))
    assert torch.equal(dm.val_dataloader().collate_fn.collate(batch)[0], to_float(batch[0]))


def test_train_loader_shuffles_and_drops_last():
    dm = SyntheticDataModule(num_samples=100, batch_size=16)  # 80 train images: 5 full batches
    dm.setup()
    loader = dm.train_dataloader()
    first = [y for _, y in loader]
    _set_sampler_epoch(loader, 1)  # what Lightning calls before each epoch
    second = [y for _, y in loader]
    assert [len(y) for y in first] == [16] * 5
    assert not all(torch.equal(p, q) for p, q in zip(first, second))


def test_resize_and_grey_to_rgb():
    grey, rgb32 = EmbeddedMNISTDataModule(), EmbeddedMNISTDataModule(img_size=32, in_chans=3)
    grey.setup(), rgb32.setup()
    x = first_batch(rgb32.val_dataloader())[0]
    assert x.shape[1:] == (3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    # Same split, same digits: the resized mean brightness stays close to the original.
    original = first_batch(grey.val_dataloader())[0]
    assert x.mean().item() == pytest.approx(original.mean().item(), rel=0.02)


def test_rgb_to_grey_is_luminance(tmp_path):
    path = rgb_npz(tmp_path)
    rgb, grey = NpzDataModule(path), NpzDataModule(path, in_chans=1)
    rgb.setup(), grey.setup()
    x_rgb, x_grey = first_batch(rgb.test_dataloader())[0], first_batch(grey.test_dataloader())[0]
    luminance = torch.einsum("c,bchw->bhw", torch.tensor(LUMA_WEIGHTS), x_rgb)
    assert x_grey.shape[1] == 1
    torch.testing.assert_close(x_grey[:, 0], luminance, atol=0.5 / 255 + 1e-6, rtol=0)  # rounded to uint8
    # Stats of in-memory sets are measured after conversion, so they match the converted data.
    assert grey.mean[0] == pytest.approx(to_float(grey.train_set.dataset.images).mean().item(), abs=1e-4)


def test_resize_keeps_a_constant_image_constant(tmp_path):
    images = np.full((30, 28, 28), 200, dtype=np.uint8)
    dm = NpzDataModule(write_npz(tmp_path / "c.npz", images, np.zeros(30, dtype=np.int64)), img_size=32)
    dm.setup()
    x = first_batch(dm.test_dataloader())[0]
    assert x.shape[-2:] == (32, 32)
    torch.testing.assert_close(x, torch.full_like(x, 200 / 255))


def test_convert_stats():
    assert convert_stats((0.1,), (0.3,), 3) == ((0.1,) * 3, (0.3,) * 3)
    mean, std = convert_stats((0.2, 0.4, 0.6), (0.1, 0.2, 0.3), 1)
    assert mean[0] == pytest.approx(0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6)
    assert std[0] == pytest.approx(0.299 * 0.1 + 0.587 * 0.2 + 0.114 * 0.3)
    with pytest.raises(ValueError, match="do not fit"):
        convert_stats((0.1, 0.2), (0.1, 0.2), 3)


def test_channel_stats_match_numpy():
    images = torch.randint(0, 256, (3000, 3, 8, 8), dtype=torch.uint8)  # more than one chunk
    array = images.numpy() / 255
    for x in (images, images.float() / 255):
        mean, std = channel_stats(x)
        np.testing.assert_allclose(mean, array.mean(axis=(0, 2, 3)), rtol=1e-6)
        np.testing.assert_allclose(std, array.std(axis=(0, 2, 3), ddof=1), rtol=1e-6)


def test_npz_float_nhwc_with_class_names(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.random((40, 10, 10, 3), dtype=np.float32)
    path = write_npz(tmp_path / "f.npz", images, np.arange(40) % 2, extra=np.zeros(1))
    dm = NpzDataModule(path, class_names=["a", "b", "c"], batch_size=8)
    assert (dm.num_classes, dm.in_chans, dm.img_size, dm.class_names) == (3, 3, 10, ("a", "b", "c"))
    dm.setup()
    x, _ = first_batch(dm.predict_dataloader())  # the split's own order
    expected = torch.from_numpy(images[dm.test_set.indices[: len(x)]]).permute(0, 3, 1, 2)
    torch.testing.assert_close(x, expected)


def test_npz_custom_keys(tmp_path):
    path = tmp_path / "k.npz"
    np.savez(path, x=np.zeros((20, 8, 8), np.uint8), y=np.arange(20) % 5)
    dm = NpzDataModule(path, images_key="x", labels_key="y")
    assert (dm.num_classes, dm.in_chans, dm.img_size) == (5, 1, 8)


GREY, ZEROS = np.zeros((20, 8, 8), np.uint8), np.zeros(20, int)


@pytest.mark.parametrize(
    ("images", "labels", "kwargs", "match"),
    [
        (
            GREY,
            ZEROS,
            {"images_key": "x"},
            r"no array 'x'; its arrays are \['images', 'labels'\]: pass images_key",
        ),
        (GREY, np.full(20, 5), {"class_names": ["a", "b"]}, r"span \[5, 5\] but there are 2 classes"),
        (GREY, np.full(20, -1), {}, "negative labels"),
        (GREY, np.zeros(19, int), {}, "one per image"),
        (GREY, np.zeros(20, float), {}, "must be integers"),
        (np.full((20, 8, 8), 255.0), ZEROS, {}, r"lie in \[0, 1\]"),
        (np.zeros((20, 8, 8), np.int32), ZEROS, {}, "expected uint8"),
        (np.zeros((20, 8), np.uint8), ZEROS, {}, r"expected \(N, H, W\)"),
        (GREY, ZEROS, {"img_size": (8, 0)}, r"img_size must be a positive integer .* \[height, width\]"),
        (GREY, ZEROS, {"img_size": (8, 8, 8)}, r"img_size must be .* e.g. \[32, 48\]; got \(8, 8, 8\)"),
        (GREY, ZEROS, {"in_chans": 2}, "cannot convert 1-channel images to in_chans=2"),
    ],
)
def test_npz_errors_say_what_to_fix(tmp_path, images, labels, kwargs, match):
    path = write_npz(tmp_path / "bad.npz", images, labels)
    with pytest.raises(ValueError, match=match):
        NpzDataModule(path, **kwargs).setup()  # the file is read at setup


def test_npz_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no npz file"):
        NpzDataModule(tmp_path / "absent.npz")


def test_non_square_npz_keeps_its_size_or_takes_img_size(tmp_path):
    path = write_npz(tmp_path / "r.npz", np.zeros((20, 8, 6), np.uint8), ZEROS)
    for img_size, shape in ((None, (8, 6)), (7, (7, 7)), ((6, 10), (6, 10))):
        dm = NpzDataModule(path, img_size=img_size)
        assert dm.img_size == (shape[0] if shape[0] == shape[1] else shape)
        dm.setup()
        assert first_batch(dm.test_dataloader())[0].shape[1:] == (1, *shape)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"augment": "cutmix"}, "unknown augment 'cutmix'.*known: none, crop, flip, crop_flip"),
        ({"augment": "rand-q9"}, "bad RandAugment string"),
        ({"img_size": 0}, "img_size must be a positive integer"),
        ({"in_chans": 0}, "in_chans must be a positive integer"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "leave part of the train split"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_raise_early(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticDataModule(**kwargs)


def test_drop_last_with_too_small_train_split_says_what_to_do():
    dm = SyntheticDataModule(num_samples=40, batch_size=64)
    dm.setup()
    with pytest.raises(ValueError, match="lower batch_size or set drop_last=False"):
        dm.train_dataloader()
    dm = SyntheticDataModule(num_samples=40, batch_size=64, drop_last=False)
    dm.setup()
    assert len(first_batch(dm.train_dataloader())[1]) == 32


def test_too_small_source_for_a_split():
    with pytest.raises(ValueError, match="cannot carve a test split"):
        SyntheticDataModule(num_samples=10, num_classes=2, test_fraction=0.01).setup()


def test_synthetic_is_deterministic_per_seed():
    # each source's whole train split, as read by load() (at setup)
    a, b, c = (SyntheticDataModule(seed=seed).load()["train"] for seed in (0, 0, 1))
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert torch.bincount(a.labels).tolist() == [26] * 6 + [25] * 4


def test_synthetic_classes_are_learnable():
    dm = SyntheticDataModule(num_samples=500, num_classes=10, noise=0.2)
    dm.setup()
    x_train, y_train = (torch.cat(t) for t in zip(*dm.train_dataloader()))
    x_test, y_test = (torch.cat(t) for t in zip(*dm.test_dataloader()))
    centroids = torch.stack([x_train[y_train == k].mean(0) for k in range(10)]).flatten(1)
    predicted = torch.cdist(x_test.flatten(1), centroids).argmin(1)
    assert (predicted == y_test).float().mean() > 0.95


class _TinyClassifier(L.LightningModule):
    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))

    def training_step(self, batch, _):
        images, labels = batch
        return nn.functional.cross_entropy(self.net(images), labels)

    def validation_step(self, batch, _):
        images, labels = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(images), labels))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_runs_under_a_lightning_trainer(tmp_path):
    dm = SyntheticDataModule(img_size=8, batch_size=32, augment="crop_flip")
    model = _TinyClassifier(dm.in_chans * dm.img_size**2, dm.num_classes)
    trainer = L.Trainer(
        fast_dev_run=2,
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.state.finished
