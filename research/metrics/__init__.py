"""Metrics that need more than torchmetrics ships: FID with a feature extractor trained by this project."""

from research.metrics.fid import ClassifierFeatures, classifier_fid

__all__ = ["ClassifierFeatures", "classifier_fid"]
