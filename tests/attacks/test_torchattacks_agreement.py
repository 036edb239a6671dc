"""Our PGD against torchattacks' on the same trained MNIST models and digits.

A robust accuracy says something only between 0% and 100%: at Madry et al.'s MNIST eps = 0.3 a model
trained without attacks is at about 0% under both attacks, so each model is also compared at an
eps where its robust accuracy is mid-range. Models train in the test, in seconds, on 4,000 of the
embedded MNIST digits.
"""

import pytest
import torch
from mnist_digits import digits, fit_digits
from torch import nn

from research.attacks import pgd
from research.models import create_model

torchattacks = pytest.importorskip("torchattacks")

STEPS, STEP_SIZE = 40, 0.01  # Madry et al.'s MNIST attack: 40 steps of 0.01


def trained(model: nn.Module, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    return fit_digits(model, epochs=epochs, count=4000)


def seeded_mlp() -> nn.Module:
    """The MLP of the Square and FAB-T tests, whose figures were measured on it: seeded before it is built,
    then trained 5 epochs on 4,000 digits without re-seeding (so not :func:`trained`'s weights)."""
    torch.manual_seed(0)
    return fit_digits(nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10)),
                      epochs=5, count=4000)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


def robust_accuracies(model: nn.Module, x, y, eps: float, random_start: bool = True) -> tuple[float, float]:
    ours = pgd(model, x, y, eps=eps, step_size=STEP_SIZE, steps=STEPS, random_start=random_start)
    theirs = torchattacks.PGD(model, eps=eps, alpha=STEP_SIZE, steps=STEPS, random_start=random_start)(x, y)
    return accuracy(model, ours, y), accuracy(model, theirs, y)


@pytest.mark.parametrize(
    ("eps", "expected"), [(0.3, (0.0, 0.05)), (0.05, (0.2, 0.8))], ids=["madry_eps0.3", "mid_eps0.05"]
)
def test_robust_accuracy_within_one_point_of_torchattacks(mlp, eps, expected):
    x, y = digits("test", 1000)
    assert accuracy(mlp, x, y) > 0.85  # 90.3%
    ours, theirs = robust_accuracies(mlp, x, y, eps)
    assert expected[0] <= ours <= expected[1], f"robust accuracy {ours:.3f}: the comparison is not the intended one"
    assert abs(ours - theirs) <= 0.01, f"ours {ours:.3f}, torchattacks {theirs:.3f}"


def test_without_random_start_the_adversarial_images_are_torchattacks_images(mlp):
    x, y = digits("test", 200)
    ours = pgd(mlp, x, y, eps=0.1, step_size=STEP_SIZE, steps=STEPS, random_start=False)
    theirs = torchattacks.PGD(mlp, eps=0.1, alpha=STEP_SIZE, steps=STEPS, random_start=False)(x, y)
    # Same start, step, projection and clamp; only the loss's reduction (sum vs mean) differs,
    # which can flip the sign of a gradient entry that is zero up to rounding.
    assert (ours != theirs).float().mean() < 1e-3


@pytest.fixture(scope="module")
def cnn():
    torch.set_num_threads(1)
    return trained(create_model("five_layer_cnn"), epochs=1)  # 94.6% on the 1,000 test digits


@pytest.mark.slow
@pytest.mark.parametrize(
    ("eps", "expected"), [(0.3, (0.0, 0.05)), (0.15, (0.2, 0.8))], ids=["madry_eps0.3", "mid_eps0.15"]
)
def test_registered_cnn_robust_accuracy_within_one_point_of_torchattacks(cnn, eps, expected):
    # The course notes' five-layer CNN (BatchNorm, attacked in eval mode): about 90 s per eps on one core.
    x, y = digits("test", 1000)
    assert accuracy(cnn, x, y) > 0.9
    ours, theirs = robust_accuracies(cnn, x, y, eps)
    assert expected[0] <= ours <= expected[1], f"robust accuracy {ours:.3f}: the comparison is not the intended one"
    assert abs(ours - theirs) <= 0.01, f"ours {ours:.3f}, torchattacks {theirs:.3f}"
