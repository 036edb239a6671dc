"""Datamodules for the tasks in research.tasks: images (float32 in [0, 1]) with labels; text for MLM."""

from research.data.augment import AUGMENT_STEPS, BatchAugment
from research.data.mlm import MaskedLMDataModule, MLMCollator, mask_tokens_for_mlm
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
    "MLMCollator",
    "BatchAugment",
    "EmbeddedMNIST",
    "FashionMNIST",
    "ImageFolderData",
    "MaskedLMDataModule",
    "NpzImages",
    "SyntheticImages",
    "TorchvisionData",
    "VisionDataModule",
    "mask_tokens_for_mlm",
]
