"""Tiny tasks, data and probes for the attack-callback tests (also imported by the DDP script)."""

from __future__ import annotations

from functools import partial

import lightning as L
import torch
from conftest import trainer as quiet_trainer
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from research.data import SyntheticDataModule
from research.tasks import ImageClassification

trainer = partial(quiet_trainer, num_sanity_val_steps=0)


def tiny_cnn(in_chans: int = 1, num_classes: int = 4) -> nn.Module:
    """Conv, BatchNorm, ReLU, pool, linear: the smallest model with running statistics."""
    return nn.Sequential(
        nn.Conv2d(in_chans, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, num_classes),
    )


def tiny_task(in_chans: int = 1, num_classes: int = 4, lr: float = 0.05) -> ImageClassification:
    return ImageClassification(
        tiny_cnn(in_chans, num_classes),
        num_classes=num_classes,
        optim={"name": "sgd", "lr": lr, "weight_decay": 0.0, "schedule": "constant"},
    )


def synthetic(num_samples: int = 64, batch_size: int = 8, **kwargs) -> SyntheticDataModule:
    """8x8 grey images of 4 classes, (images, labels) tuples as every research datamodule yields."""
    return SyntheticDataModule(
        num_samples=num_samples, num_classes=4, img_size=8, in_chans=1, batch_size=batch_size, **kwargs
    )


class Brightness(nn.Module):
    """Class 1 if the mean pixel exceeds 0.5, else class 0, with margin ``scale * |mean - 0.5|``.

    On :func:`brightness_data` (images of 0.2 or 0.8) it is always right, stays right under an
    L-inf attack of eps < 0.3 and is always wrong under eps > 0.3: robust accuracy known in advance.
    """

    def __init__(self, scale: float = 10.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))
        self.num_classes = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = self.scale * (x.mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([-margin, margin], dim=1)


def brightness_task(lr: float = 0.0) -> ImageClassification:
    return ImageClassification(
        Brightness(), num_classes=2, mean=(0.0,), std=(1.0,),
        optim={"name": "sgd", "lr": lr, "weight_decay": 0.0, "schedule": "constant"},
    )


class TensorData(L.LightningDataModule):
    """The same tensors for every split, in ``DataLoader(TensorDataset)`` form: batches are lists [x, y]."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, shuffle: bool = True):
        super().__init__()
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


def brightness_data(n: int = 16, batch_size: int = 4) -> TensorData:
    """Half the images 0.2 everywhere (class 0), half 0.8 (class 1), 1x6x6, interleaved."""
    y = torch.arange(n) % 2
    x = (0.2 + 0.6 * y.float()).view(-1, 1, 1, 1).expand(-1, 1, 6, 6).clone()
    return TensorData(x, y, batch_size=batch_size)


class AttackWindow:
    """Two callbacks to put around the one under test; what happens between them is its attack.

    ``opening`` (listed before the callback) records each clean batch and the BatchNorm
    statistics; ``closing`` (listed after it) records the batch that ``training_step`` will get and
    the statistics again. In between, every forward of the first BatchNorm layer logs
    (training flag, CPU autocast on).
    """

    def __init__(self, module: nn.Module):
        self.clean: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.attacked: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.stats_before: list[list[torch.Tensor]] = []
        self.stats_after: list[list[torch.Tensor]] = []
        self.forwards: list[tuple[bool, bool]] = []
        self._open = False
        self.bn = next((m for m in module.modules() if isinstance(m, nn.BatchNorm2d)), None)
        if self.bn is not None:
            self.bn.register_forward_pre_hook(self._log_forward)
        self.opening, self.closing = _Edge(self, opening=True), _Edge(self, opening=False)

    def _log_forward(self, module: nn.Module, args) -> None:
        if self._open:
            self.forwards.append((module.training, torch.is_autocast_enabled("cpu")))

    def _stats(self) -> list[torch.Tensor]:
        return [b.detach().clone() for b in self.bn.buffers()] if self.bn is not None else []


class _Edge(Callback):
    def __init__(self, window: AttackWindow, *, opening: bool):
        self.window, self.opening = window, opening

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        w = self.window
        (w.clean if self.opening else w.attacked).append((batch[0].detach().clone(), batch[1].detach().clone()))
        (w.stats_before if self.opening else w.stats_after).append(w._stats())
        w._open = self.opening


class TokenTask(L.LightningModule):
    """Batches of token ids, not images."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.EmbeddingBag(10, 2)

    def forward(self, tokens):
        return self.embed(tokens)

    def training_step(self, batch, batch_idx):
        tokens, y = batch
        return torch.nn.functional.cross_entropy(self(tokens), y)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randint(0, 10, (8, 5)), torch.randint(0, 2, (8,)))
        return DataLoader(data, batch_size=4)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TokenEval(TokenTask):
    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.training_step(batch, batch_idx))

    def val_dataloader(self):
        return self.train_dataloader()
