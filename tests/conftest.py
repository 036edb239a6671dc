import pickle
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from research.data.readers import write_idx

# The tests' tensors are tiny: one thread avoids the pool's hand-offs, and on a busy machine the
# suite runs several times faster than with one thread per core.
torch.set_num_threads(1)


def trainer(root: Path | str | None = None, **overrides) -> L.Trainer:
    """A quiet one-CPU Trainer for tests (no logger, checkpoints, progress bar or summary); ``root`` is its folder.

    Test files import it (``from conftest import trainer``) and pin their own defaults with
    ``functools.partial``; keyword arguments override every default.
    """
    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False)
    if root is not None:
        options["default_root_dir"] = str(root)
    return L.Trainer(**(options | overrides))


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch):
    """No test talks to wandb's servers or depends on the previous test's RNG."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    torch.manual_seed(0)


@pytest.fixture
def fake_torchvision_root(tmp_path) -> Path:
    """A data root with tiny MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 in torchvision's layout.

    20 random images a split: enough for a config's one-batch run without the real (downloaded) sets.
    """
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for folder in ("MNIST", "FashionMNIST"):
        raw = root / folder / "raw"
        raw.mkdir(parents=True)
        for split in ("train", "t10k"):
            write_idx(raw / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
            write_idx(raw / f"{split}-labels-idx1-ubyte.gz", np.arange(20) % 10)
    for folder, names, key, classes in (
        ("cifar-10-batches-py", [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"], "labels", 10),
        ("cifar-100-python", ["train", "test"], "fine_labels", 100),
    ):
        (root / folder).mkdir(parents=True)
        for name in names:
            batch = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), key: list(np.arange(20) % classes)}
            (root / folder / name).write_bytes(pickle.dumps(batch))
    return root


# The trained MNIST models of the attack agreement tests (tests/attacks), one per test module. Here rather
# than in a tests/attacks/conftest.py: a second conftest module would shadow this one for
# `from conftest import trainer`. The builders live beside the PGD agreement test, imported when first used.


@pytest.fixture(scope="module")
def mlp():
    """The MLP of the PGD, APGD and AutoAttack agreement tests, trained on 4,000 embedded digits."""
    from test_torchattacks_agreement import trained

    torch.manual_seed(0)  # trained() seeds only after the model's initialisation
    return trained(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 128), torch.nn.ReLU(),
                                       torch.nn.Linear(128, 10)), epochs=5)


@pytest.fixture(scope="module")
def seeded_mlp():
    """The MLP of the Square and FAB-T agreement tests, whose figures were measured on it."""
    from test_torchattacks_agreement import seeded_mlp as build

    return build()
