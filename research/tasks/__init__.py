"""LightningModules, one per training objective; each wraps a plain ``nn.Module`` from research.models."""

from research.tasks.classification import ImageClassification
from research.tasks.mae import MAEPretraining
from research.tasks.mlm import MaskedLanguageModelling

__all__ = ["ImageClassification", "MAEPretraining", "MaskedLanguageModelling"]
