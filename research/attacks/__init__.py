"""Functional attacks on any ``nn.Module`` mapping [0, 1] images to logits; no Lightning."""

from research.attacks.balls import BALLS, L2Ball, LinfBall
from research.attacks.fgsm import fgsm
from research.attacks.mode import attack_mode
from research.attacks.pgd import per_example_cross_entropy, pgd

__all__ = ["BALLS", "L2Ball", "LinfBall", "attack_mode", "fgsm", "per_example_cross_entropy", "pgd"]
