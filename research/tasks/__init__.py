"""LightningModules, one per training objective; each wraps a plain ``nn.Module`` from research.models.

Every task subclasses :class:`Task` (image tasks :class:`ImageTask`) and takes its optimizer and
schedule as one :class:`OptimizerSettings` group (``optim``).
"""

from research.tasks.base import ImageTask, Task
from research.tasks.classification import ImageClassification
from research.tasks.distillation import Distillation
from research.tasks.gan import GAN
from research.tasks.mae import MAEPretraining
from research.tasks.mlm import MaskedLanguageModelling
from research.tasks.optim import OptimizerSettings
from research.tasks.regression import Regression
from research.tasks.sequence_classification import SequenceClassification
from research.tasks.translation import Translation

__all__ = [
    "Distillation",
    "GAN",
    "ImageClassification",
    "ImageTask",
    "MAEPretraining",
    "MaskedLanguageModelling",
    "OptimizerSettings",
    "Regression",
    "SequenceClassification",
    "Task",
    "Translation",
]
