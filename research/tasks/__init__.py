"""LightningModules, one per training objective; each wraps a plain ``nn.Module`` from research.models."""

from research.tasks.classification import ImageClassification

__all__ = ["ImageClassification"]
