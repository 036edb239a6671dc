"""AdversarialExamples: a PNG of the documented layout in the run folder, and the same picture sent to wandb."""

import numpy as np
import pytest
import torch
import wandb
from attack_setup import TokenEval, brightness_data, brightness_task, synthetic, tiny_task, trainer
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from PIL import Image

from research.callbacks import AdversarialExamples
from research.callbacks.adversarial_examples import draw_examples


def test_png_in_the_run_folder_with_the_expected_size(tmp_path):
    callback = AdversarialExamples(eps=0.1, steps=2, num_examples=3, cell_size=64)
    logger = CSVLogger(save_dir=tmp_path, name="run")
    t = trainer(callbacks=[callback], logger=logger, max_epochs=2, limit_train_batches=1)
    t.fit(tiny_task(), datamodule=synthetic())
    folder = tmp_path / "run" / "version_0" / "adversarial_examples"
    assert sorted(p.name for p in folder.iterdir()) == ["val_epoch=000.png", "val_epoch=001.png"]
    with Image.open(folder / "val_epoch=001.png") as picture:
        # 3 cells of 64 px and 4 margins of 2 px across; a 14 px title strip, then 3 rows of
        # 64 px plus a 14 px caption, and 4 margins of 2 px down
        assert picture.size == (3 * 64 + 4 * 2, 14 + 3 * (64 + 14) + 4 * 2) == (200, 256)
    t.test(t.lightning_module, datamodule=synthetic())
    assert (folder / "test_epoch=002.png").exists()  # after 2 epochs


def test_cells_hold_the_clean_image_the_magnified_perturbation_and_the_adversarial_image():
    clean = torch.full((1, 1, 4, 4), 0.5)
    delta = torch.zeros(1, 1, 4, 4)
    delta[..., 0, 0], delta[..., 3, 3] = 0.1, -0.05
    picture = np.asarray(
        draw_examples(
            clean, clean + delta, torch.tensor([1]), torch.tensor([1]), torch.tensor([0]),
            class_names=["zero", "one"], cell_size=8,
        )
    )
    top, cells = 14 + 2, [2, 2 + 8 + 2, 2 + 2 * (8 + 2)]
    cell = [picture[top : top + 8, left : left + 8, 0].astype(int) for left in cells]
    assert (cell[0] == 128).all()  # clean 0.5, nearest-neighbour upscaled 4 -> 8
    # 0.5 + delta / (2 * max|delta|): the largest change is white, -0.05 is a quarter below grey
    assert cell[1][0, 0] == 255 and cell[1][7, 7] == 64 and cell[1][4, 4] == 128
    assert cell[2][0, 0] == 153 and cell[2][7, 7] == 115  # (0.5 + delta) * 255, rounded


def test_picture_goes_to_wandb(tmp_path, monkeypatch):
    logger = WandbLogger(save_dir=str(tmp_path), mode="disabled")
    sent = []
    monkeypatch.setattr(logger, "log_image", lambda key, images, step: sent.append((key, images, step)))
    callback = AdversarialExamples(eps=0.1, attack="fgsm", num_examples=2, dirpath=tmp_path / "pictures")
    try:
        trainer(callbacks=[callback], logger=logger).validate(brightness_task(), datamodule=brightness_data())
    finally:
        wandb.finish()  # the next test's WandbLogger must not join this run
    assert sent == [("val/adversarial_examples", [str(callback.last_path)], 0)]
    assert callback.last_path.parent == tmp_path / "pictures" / "adversarial_examples"


def test_task_without_images_is_a_clear_error():
    with pytest.raises(ValueError, match=r"AdversarialExamples expects batches of \(images, labels\)"):
        trainer(callbacks=[AdversarialExamples(eps=0.1)]).validate(TokenEval())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(eps=-1), "eps must be > 0"),
        (dict(eps=0.1, attack="cw"), "unknown attack 'cw'"),
        (dict(eps=0.1, attack="fgsm", norm="l2"), "'linf' for fgsm"),
        (dict(eps=0.1, num_examples=0), "num_examples must be >= 1"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdversarialExamples(**kwargs)
