import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from research.callbacks import MAEReconstructions
from research.callbacks.mae_reconstructions import MASK_FILL
from research.data import SyntheticDataModule
from research.tasks import ImageClassification, MAEPretraining

MAE = dict(
    name="mae_vit_tiny_patch4_32",
    img_size=16,
    in_chans=3,
    embed_dim=16,
    depth=1,
    num_heads=2,
    decoder_embed_dim=8,
    decoder_depth=1,
    decoder_num_heads=2,
)


def synthetic() -> SyntheticDataModule:
    return SyntheticDataModule(num_samples=64, num_classes=4, img_size=16, in_chans=3, batch_size=8)


def fit(callback, tmp_path, epochs=2, **kw):
    task = MAEPretraining(MAE, optim={"warmup_epochs": 0})
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=epochs,
        limit_train_batches=1,
        limit_val_batches=1,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
    )
    trainer = L.Trainer(**{**defaults, "callbacks": [callback], **kw})
    trainer.fit(task, datamodule=synthetic())
    return task, trainer


def test_grid_columns_are_original_masked_reconstruction_pasted():
    task = MAEPretraining(MAE, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2)).eval()
    images = torch.rand(3, 3, 16, 16)
    grid = MAEReconstructions(num_images=3).grid(task, images)
    assert grid.shape == (12, 3, 16, 16)
    original, masked, pred, pasted = grid[0::4], grid[1::4], grid[2::4], grid[3::4]
    assert torch.equal(original, images)
    hidden = (masked == MASK_FILL).all(1)  # (N, H, W): the masked pixels
    assert torch.allclose(hidden.float().mean(), torch.tensor(12 / 16))  # 12 of 16 patches at ratio 0.75
    visible = ~hidden[:, None].expand_as(images)
    assert torch.equal(pasted[visible], images[visible])
    assert torch.equal(pasted[~visible], pred[~visible])
    assert pred.min() >= 0 and pred.max() <= 1
    # the prediction is the task's, turned back into pixels
    noise = torch.rand(3, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(pred, task.reconstruct(images, noise).pred)


def test_pngs_every_n_epochs_in_the_given_folder(tmp_path):
    callback = MAEReconstructions(every_n_epochs=2, num_images=3, dirpath=tmp_path / "pictures")
    fit(callback, tmp_path, epochs=4)
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == [
        "reconstructions_epoch001.png",
        "reconstructions_epoch003.png",
    ]
    picture = np.asarray(Image.open(callback.last_path))
    # 3 rows x 4 columns of 16 px images with 1 px padding
    assert picture.shape == (3 * 17 + 1, 4 * 17 + 1, 3)


def test_default_folder_is_the_checkpoint_folder_and_wandb_gets_the_picture(tmp_path, monkeypatch):
    logged = []
    monkeypatch.setattr(WandbLogger, "log_image", lambda self, **kw: logged.append(kw))
    logger = WandbLogger(save_dir=str(tmp_path), mode="disabled")
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "run")
    callback = MAEReconstructions(num_images=2)
    fit(callback, tmp_path, epochs=1, logger=logger, enable_checkpointing=True, callbacks=[callback, checkpoints])
    assert callback.last_path == tmp_path / "run" / "reconstructions_epoch000.png" and callback.last_path.exists()
    assert len(logged) == 1 and logged[0]["key"] == "val/reconstructions"
    assert logged[0]["images"] == [str(callback.last_path)]


def test_bad_arguments_and_a_task_without_reconstructions(tmp_path):
    with pytest.raises(ValueError, match="every_n_epochs and num_images must be >= 1"):
        MAEReconstructions(every_n_epochs=0)
    task = ImageClassification({"name": "resnet20", "num_classes": 4})
    trainer = L.Trainer(
        callbacks=[MAEReconstructions()],
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(ValueError, match="has no reconstruct"):
        trainer.fit(task, datamodule=synthetic())
