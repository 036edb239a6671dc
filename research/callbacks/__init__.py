"""Lightning callbacks that plug into any task from the YAML (trainer.callbacks)."""

from research.callbacks.adversarial_examples import AdversarialExamples
from research.callbacks.adversarial_training import AdversarialTraining
from research.callbacks.checkpoint import ModelCheckpoint, RunIdentity
from research.callbacks.finite_loss import FiniteLoss, NonFiniteLoss
from research.callbacks.gan_samples import GANSamples
from research.callbacks.mae_reconstructions import MAEReconstructions
from research.callbacks.pruning import Pruning
from research.callbacks.rng_state import RNGState
from research.callbacks.robust_evaluation import RobustEvaluation

__all__ = [
    "AdversarialExamples",
    "AdversarialTraining",
    "FiniteLoss",
    "GANSamples",
    "MAEReconstructions",
    "ModelCheckpoint",
    "NonFiniteLoss",
    "Pruning",
    "RNGState",
    "RobustEvaluation",
    "RunIdentity",
]
