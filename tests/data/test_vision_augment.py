import pytest
import torch

from research.data.augment import BatchAugment, parse_augment, random_crop, random_flip


def one_bright_pixel(batch: int, size: int = 12, row: int = 5, col: int = 6) -> torch.Tensor:
    images = torch.zeros(batch, 1, size, size, dtype=torch.uint8)
    images[:, :, row, col] = 255
    return images


def bright_position(images: torch.Tensor) -> torch.Tensor:
    flat = images[:, 0].flatten(1).argmax(1)
    return torch.stack([flat // images.shape[-1], flat % images.shape[-1]], 1)


def test_random_crop_shifts_each_image_by_at_most_the_padding():
    torch.manual_seed(0)
    images = one_bright_pixel(256)
    crops = random_crop(images, padding=4)
    assert crops.shape == images.shape and crops.dtype == torch.uint8
    assert (crops.flatten(1).sum(1) == 255).all()  # an interior pixel is never cropped away
    shift = bright_position(crops) - torch.tensor([5, 6])
    assert shift.abs().max() == 4
    assert len({tuple(s) for s in shift.tolist()}) > 40  # each image gets its own offset (81 possible)


def test_random_crop_fills_with_zeros_at_the_border():
    torch.manual_seed(0)
    crops = random_crop(torch.full((64, 3, 8, 8), 0.5), padding=2)
    assert set(crops.unique().tolist()) == {0.0, 0.5}
    assert ((crops == 0).flatten(1).sum(1) > 0).float().mean() > 0.9  # most offsets are not (2, 2)


def test_random_flip_flips_about_half_the_images():
    torch.manual_seed(0)
    images = one_bright_pixel(200)
    flipped = random_flip(images)
    cols = bright_position(flipped)[:, 1]
    assert set(cols.tolist()) == {6, 12 - 1 - 6}
    assert 70 < (cols == 5).sum() < 130


def test_crop_flip_composes_both_steps_in_order():
    augment = BatchAugment("crop_flip", img_size=12, fill=(0.5,))
    assert augment.steps == [random_crop, random_flip]
    assert BatchAugment("flip+crop", img_size=12, fill=(0.5,)).steps == [random_flip, random_crop]
    assert BatchAugment("none", img_size=12, fill=(0.5,)).steps == []


@pytest.mark.parametrize("chans", [1, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_rand_augment_keeps_shape_dtype_and_range(chans, dtype):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, chans, 16, 16), dtype=torch.uint8)
    images = images if dtype == torch.uint8 else images.float() / 255
    augment = BatchAugment("crop+rand-m9-mstd0.5", img_size=16, fill=(0.5,) * chans)
    out = augment(images)
    assert out.shape == images.shape and out.dtype == dtype
    assert 0 <= out.min() and out.max() <= (255 if dtype == torch.uint8 else 1)
    assert not torch.equal(out, images)


def test_parse_augment():
    assert parse_augment("none") == []
    assert parse_augment("crop_flip + rand-m9-mstd0.5") == ["crop_flip", "rand-m9-mstd0.5"]
    with pytest.raises(ValueError, match=r"unknown augment 'mixup' in 'crop\+mixup'; known: none, crop"):
        parse_augment("crop+mixup")
    with pytest.raises(ValueError, match="bad RandAugment string 'rand-z3'"):
        parse_augment("rand-z3")
