"""Fréchet distance between feature distributions (Heusel et al. 2017) with our own classifier's features.

FID fits a Gaussian to the features of real and of generated images and reports
``|mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))`` (Heusel et al., section 3). The standard
features are Inception-v3's 2048 pool features, whose weights cannot be downloaded here; for
MNIST-like digits we use the penultimate features of a classifier trained by this project
(e.g. ``configs/cnn/mnist_five_layer_cnn.yaml``: its 128 hidden units). Values are therefore on
their own scale, comparable only between runs that use the same extractor checkpoint and the
same number of images (FID is biased upwards for small samples, Binkowski et al. 2018):
report them next to the real-vs-real and real-vs-noise values of the same extractor.

torchmetrics' ``FrechetInceptionDistance`` accepts any ``nn.Module`` as ``feature``: with a
``num_features`` attribute it needs no dummy forward, and with ``normalize=True`` float images in
[0, 1] reach the module unchanged. It needs neither torch-fidelity (only for Inception) nor scipy
(the matrix square root goes through ``torch.linalg.eigvals``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from research.models import build_model
from research.models.protocols import FeatureClassifier, require


class ClassifierFeatures(nn.Module):
    """Frozen penultimate features of an image classifier, for FID.

    Normalises [0, 1] images with the classifier's mean/std, then returns its pooled pre-logit
    features (``forward_head(forward_features(x), pre_logits=True)``). Always in eval mode and
    without gradients. Its weights stay out of ``state_dict()``: a GAN checkpoint holds the GAN,
    not the extractor, which is rebuilt from its own checkpoint (see :meth:`from_checkpoint`);
    loading a state dict leaves them as they are.

    Args:
        classifier: a model with ``forward_features``, ``forward_head(..., pre_logits=True)``
            and ``num_features`` (every classifier in research.models).
        mean: per-channel mean the classifier was trained with.
        std: per-channel std the classifier was trained with.
    """

    def __init__(self, classifier: nn.Module, *, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        require(classifier, FeatureClassifier, "FID features need a classifier with forward_features, "
                "forward_head(pre_logits=True) and num_features")
        if len(mean) != len(std):
            raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} must have one entry per channel")
        self.classifier = classifier.requires_grad_(False).eval()
        self.num_features = int(classifier.num_features)  # read by torchmetrics for its state sizes
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_state_dict_post_hook(_drop_own_keys)
        self.register_load_state_dict_pre_hook(_keep_own_weights)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> ClassifierFeatures:
        """The extractor of an :class:`~research.tasks.ImageClassification` checkpoint (its model and mean/std)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"FID feature extractor checkpoint {str(path)!r} not found; train a classifier first, e.g. "
                "python -m research fit --config configs/cnn/mnist_five_layer_cnn.yaml "
                "(writes checkpoints/cnn/mnist_five_layer_cnn/last.ckpt)"
            )
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        hparams = checkpoint.get("hyper_parameters", {})
        if not isinstance(hparams.get("model"), dict | str) or hparams.get("mean") is None:
            raise ValueError(
                f"{str(path)!r} is not an ImageClassification checkpoint with a registered model and mean/std "
                f"in its hyper_parameters (found keys {sorted(hparams)}); pass a checkpoint written by "
                "python -m research fit with research.tasks.ImageClassification"
            )
        classifier = build_model(hparams["model"])
        weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        classifier.load_state_dict(weights, strict=True)
        return cls(classifier, mean=hparams["mean"], std=hparams["std"])

    def train(self, mode: bool = True) -> ClassifierFeatures:
        """Stay in eval mode: BatchNorm statistics and dropout of the extractor never change."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features of images in [0, 1].

        Args:
            images: (B, C, H, W) in [0, 1], the classifier's channels and size.

        Returns:
            (B, num_features) float features.
        """
        x = (images.float() - self.mean) / self.std
        return self.classifier.forward_head(self.classifier.forward_features(x), pre_logits=True)


def _drop_own_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _keep_own_weights(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    # the extractor's weights are not saved (above): hand torch's strict loading the current ones
    for name, value in module.classifier.state_dict(prefix=f"{prefix}classifier.", keep_vars=True).items():
        state_dict.setdefault(name, value)


def classifier_fid(features: ClassifierFeatures) -> FrechetInceptionDistance:
    """FID of torchmetrics over ``features``; ``update(images, real=...)`` takes float images in [0, 1]."""
    return FrechetInceptionDistance(feature=features, normalize=True)
