"""Functional attacks on any ``nn.Module`` mapping [0, 1] images to logits; no Lightning."""

from research.attacks.apgd import apgd, apgd_targeted
from research.attacks.balls import BALLS, L2Ball, LinfBall
from research.attacks.embedding import embedding_perturbation, embedding_pgd, freelb_init, freelb_update
from research.attacks.ensemble import autoattack, autoattack_ensemble
from research.attacks.fab import fab_targeted
from research.attacks.fgsm import fgsm
from research.attacks.mode import attack_mode
from research.attacks.pgd import per_example_cross_entropy, pgd
from research.attacks.square import square
from research.attacks.trades import mart_attack, trades_attack

__all__ = [
    "BALLS",
    "L2Ball",
    "LinfBall",
    "apgd",
    "apgd_targeted",
    "attack_mode",
    "autoattack",
    "autoattack_ensemble",
    "embedding_perturbation",
    "embedding_pgd",
    "fab_targeted",
    "fgsm",
    "freelb_init",
    "freelb_update",
    "mart_attack",
    "per_example_cross_entropy",
    "pgd",
    "square",
    "trades_attack",
]
