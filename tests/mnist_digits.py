"""Embedded MNIST digits as tensors, and the small models the attack tests train on them (one copy of each)."""

import torch
import torch.nn.functional as F
from torch import nn

from research.data import EmbeddedMNISTDataModule


def digits(split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` digits of ``split`` as (count, 1, 28, 28) floats in [0, 1] and (count,) labels, a fixed draw."""
    dm = EmbeddedMNISTDataModule()
    dm.setup("fit")
    subset = getattr(dm, f"{split}_set")
    # A fixed random draw: the file is sorted by label, so the first images are all zeros.
    order = torch.randperm(len(subset), generator=torch.Generator().manual_seed(0))[:count]
    images, labels = subset.dataset.read_batch([subset.indices[i] for i in order])
    return images.float() / 255, labels


def fit_digits(model: nn.Module, *, epochs: int, count: int) -> nn.Module:
    """Adam 1e-3, batches of 64, on ``count`` training digits; the caller seeds (before or after building)."""
    x, y = digits("train", count)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()
