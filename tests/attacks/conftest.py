import pytest
import torch
from test_torchattacks_agreement import seeded_mlp as build_seeded_mlp
from test_torchattacks_agreement import trained
from torch import nn


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run thousands of tiny forwards, where a second OpenMP thread only adds waiting.

    On a loaded 2-core machine two threads made a tiny attack step 100x slower (120 ms vs 1 ms).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mlp():
    """The MLP of the PGD, APGD and AutoAttack agreement tests, trained on 4,000 embedded digits (one per module)."""
    torch.set_num_threads(1)  # the module fixture runs before the per-test one-thread fixture
    torch.manual_seed(0)  # trained() seeds only after the model's initialisation
    return trained(nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10)), epochs=5)


@pytest.fixture(scope="module")
def seeded_mlp():
    """The MLP of the Square and FAB-T agreement tests, whose figures were measured on it (one per test module)."""
    torch.set_num_threads(1)
    return build_seeded_mlp()
