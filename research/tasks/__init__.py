"""LightningModules, one per training objective; each wraps a plain ``nn.Module`` from research.models."""

from research.tasks.classification import ImageClassification
from research.tasks.distillation import Distillation
from research.tasks.gan import GAN
from research.tasks.mae import MAEPretraining
from research.tasks.mlm import MaskedLanguageModelling
from research.tasks.regression import Regression
from research.tasks.sequence_classification import SequenceClassification
from research.tasks.translation import Translation

__all__ = [
    "Distillation",
    "GAN",
    "ImageClassification",
    "MAEPretraining",
    "MaskedLanguageModelling",
    "Regression",
    "SequenceClassification",
    "Translation",
]
