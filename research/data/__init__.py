"""Datamodules for the tasks in research.tasks: images (float32 in [0, 1]) with labels; text for MLM."""

from research.data.augment import AUGMENT_STEPS, BatchAugment
from research.data.functions import FunctionRegression
from research.data.mlm import MaskedLMDataModule, MLMCollator, mask_tokens_for_mlm
from research.data.torchvision_sets import CIFAR10, CIFAR100, MNIST, FashionMNIST, TorchvisionData
from research.data.translation import LengthBucketSampler, TranslationDataModule
from research.data.vision import (
    EmbeddedMNIST,
    ImageFolderData,
    NpzImages,
    SyntheticImages,
    VisionDataModule,
)
from research.data.words import LanguageWords

__all__ = [
    "AUGMENT_STEPS",
    "CIFAR10",
    "CIFAR100",
    "MNIST",
    "MLMCollator",
    "BatchAugment",
    "EmbeddedMNIST",
    "FashionMNIST",
    "FunctionRegression",
    "LengthBucketSampler",
    "ImageFolderData",
    "LanguageWords",
    "MaskedLMDataModule",
    "NpzImages",
    "SyntheticImages",
    "TorchvisionData",
    "TranslationDataModule",
    "VisionDataModule",
    "mask_tokens_for_mlm",
]
