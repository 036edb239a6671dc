"""A run interrupted in epoch 2 and resumed from epoch 1's checkpoint ends with the uninterrupted run's weights.

Images with random crops, flips and RandAugment, loaded in the main process and by two persistent
workers: the setting in which the workers' RNG streams used to make the resumed run diverge (issue 13, item 5).
Also with a learning-rate schedule over the run, as every config has: ``configure_optimizers`` reads
``trainer.estimated_stepping_batches``, which builds the train loader and creates its iterator before
Lightning restores the checkpoint (so before it knows the epoch), and the resumed epoch keeps that iterator.
"""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from research.callbacks import RNGState
from research.data import SyntheticDataModule


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class Scheduled(Tiny):
    """A schedule over the whole run, as research.tasks.optim's: it asks for the run's length."""

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        total = self.trainer.estimated_stepping_batches  # builds the train loader and creates its iterator
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class Interrupt(Callback):
    """Stop the run at batch ``batch`` of epoch ``epoch`` (0-based), as a kill would."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise KeyboardInterrupt


def run(tmp_path, *, callbacks=(), ckpt_path=None, num_workers=2, model=Tiny) -> dict[str, torch.Tensor]:
    L.seed_everything(0)
    dm = SyntheticDataModule(num_samples=160, img_size=16, in_chans=3, num_classes=4, batch_size=16,
                         augment="crop_flip+rand-m9-mstd0.5", num_workers=num_workers)
    model = model()
    trainer = L.Trainer(
        max_epochs=3, limit_train_batches=5, limit_val_batches=2, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_epochs=1), RNGState(), *callbacks],
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("num_workers", "model"), [(0, Tiny), (2, Tiny), (0, Scheduled), (2, Scheduled)])
def test_resumed_run_ends_with_the_uninterrupted_weights(tmp_path, num_workers, model):
    full = run(tmp_path / "full", num_workers=num_workers, model=model)
    with pytest.raises(SystemExit):  # Lightning's answer to a KeyboardInterrupt
        run(tmp_path / "cut", callbacks=[Interrupt(epoch=1, batch=3)], num_workers=num_workers, model=model)
    assert torch.load(tmp_path / "cut" / "last.ckpt", weights_only=True)["epoch"] == 0  # end of epoch 1
    resumed = run(tmp_path / "cut", ckpt_path=tmp_path / "cut" / "last.ckpt", num_workers=num_workers, model=model)
    difference = max((full[k] - resumed[k]).abs().max().item() for k in full)
    assert difference == 0, f"resumed weights differ from the uninterrupted run's by up to {difference}"
