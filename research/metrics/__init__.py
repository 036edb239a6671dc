"""Metrics torchmetrics does not ship: the majority baseline, FID with a feature extractor trained by this project."""

from research.metrics.fid import ClassifierFeatures, classifier_fid
from research.metrics.majority import MostFrequentAccuracy

__all__ = ["ClassifierFeatures", "MostFrequentAccuracy", "classifier_fid"]
