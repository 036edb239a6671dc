"""Datamodules: (images, labels) batches, float32 in [0, 1], for the tasks in research.tasks."""

from research.data.augment import AUGMENT_STEPS, BatchAugment
from research.data.torchvision_sets import CIFAR10, CIFAR100, MNIST, FashionMNIST, TorchvisionData
from research.data.vision import (
    EmbeddedMNIST,
    ImageFolderData,
    NpzImages,
    SyntheticImages,
    VisionDataModule,
)

__all__ = [
    "AUGMENT_STEPS",
    "CIFAR10",
    "CIFAR100",
    "MNIST",
    "BatchAugment",
    "EmbeddedMNIST",
    "FashionMNIST",
    "ImageFolderData",
    "NpzImages",
    "SyntheticImages",
    "TorchvisionData",
    "VisionDataModule",
]
