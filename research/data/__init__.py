"""Datamodules for the tasks in research.tasks: images (float32 in [0, 1]) with labels; text for MLM.

Every datamodule's name ends in ``DataModule``. A run saved before they did names its datamodule
by the old name; :data:`FORMER_NAMES` maps those to today's, for whoever reads such a config.
"""

from research.data.augment import AUGMENT_STEPS, BatchAugment
from research.data.bible_verses import BibleVersesDataModule
from research.data.functions import FunctionRegressionDataModule
from research.data.image_folder import ImageFolderDataModule
from research.data.mlm import (
    MaskedLanguageModellingCollator,
    MaskedLanguageModellingDataModule,
    mask_tokens_for_mlm,
)
from research.data.npz import EmbeddedMNISTDataModule, NpzDataModule
from research.data.synthetic import SyntheticDataModule
from research.data.torchvision_sets import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    TorchvisionDataModule,
)
from research.data.translation import LengthBucketSampler, TranslationDataModule
from research.data.vision import VisionDataModule
from research.data.words import LanguageWordsDataModule

# research.data.<old name> -> research.data.<new name> (issue 16)
FORMER_NAMES = {
    "CIFAR10": "CIFAR10DataModule",
    "CIFAR100": "CIFAR100DataModule",
    "EmbeddedMNIST": "EmbeddedMNISTDataModule",
    "FashionMNIST": "FashionMNISTDataModule",
    "FunctionRegression": "FunctionRegressionDataModule",
    "ImageFolderData": "ImageFolderDataModule",
    "LanguageWords": "LanguageWordsDataModule",
    "MaskedLMDataModule": "MaskedLanguageModellingDataModule",
    "MNIST": "MNISTDataModule",
    "NpzImages": "NpzDataModule",
    "SyntheticImages": "SyntheticDataModule",
}

__all__ = [
    "AUGMENT_STEPS",
    "FORMER_NAMES",
    "BatchAugment",
    "BibleVersesDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "EmbeddedMNISTDataModule",
    "FashionMNISTDataModule",
    "FunctionRegressionDataModule",
    "ImageFolderDataModule",
    "LanguageWordsDataModule",
    "LengthBucketSampler",
    "MNISTDataModule",
    "MaskedLanguageModellingCollator",
    "MaskedLanguageModellingDataModule",
    "NpzDataModule",
    "SyntheticDataModule",
    "TorchvisionDataModule",
    "TranslationDataModule",
    "VisionDataModule",
    "mask_tokens_for_mlm",
]
