import pytest
import torch


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch):
    """No test talks to wandb's servers or depends on the previous test's RNG."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    torch.manual_seed(0)
