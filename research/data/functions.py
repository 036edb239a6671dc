"""Samples of a known function of one variable, for non-linear regression (our notes' second task).

:class:`FunctionRegressionDataModule` draws x uniformly on [low, high] (by default [-2 pi, 2 pi]) and sets
y = f(x) for a function named in :data:`FUNCTIONS`. Optional Gaussian noise goes on the *training*
targets only: validation and test targets are the function itself, so their MSE is the distance
of the fitted curve from the true one and a perfect fit reads 0 whatever the noise.

The test set is drawn from a fixed seed (:data:`TEST_SEED`) and is the same in every run, as for
the image and text datamodules; ``seed`` draws the training and validation sets. Each set has a
random stream of its own (:func:`split_generator`), so no seed makes two sets share points.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from research.data.splits import SplitDataModule, check_loading

# The test set ignores ``seed``: it must be the same points in every run.
TEST_SEED = 0

FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sin": torch.sin,
    "cos": torch.cos,
    "tanh": torch.tanh,
    "abs": torch.abs,
    "square": torch.square,
    "cube": lambda x: x**3,
    "sinc": torch.sinc,  # sin(pi x) / (pi x), 1 at 0
    "gaussian": lambda x: torch.exp(-0.5 * x**2),
    "x_sin_x": lambda x: x * torch.sin(x),
}


def function_by_name(name: str) -> Callable[[Tensor], Tensor]:
    """The function registered in :data:`FUNCTIONS` under ``name``.

    Raises:
        ValueError: an unknown name (the message lists close matches and every name).

    """
    if name not in FUNCTIONS:
        close = difflib.get_close_matches(name, FUNCTIONS, n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ValueError(f"unknown function {name!r}; {hint}choose one of {sorted(FUNCTIONS)}")
    return FUNCTIONS[name]


def split_generator(split: str, seed: int) -> torch.Generator:
    """A generator for one split, seeded from a hash of (split, seed).

    Seeding every split with ``seed`` itself would draw the same x for the test set and the
    training set whenever ``seed`` equals :data:`TEST_SEED` (the default): test points in training.
    """
    digest = hashlib.sha256(f"{split}:{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def sample_function(
    fn: Callable[[Tensor], Tensor], *, num_samples: int, low: float, high: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``num_samples`` points x ~ U[low, high] and y = fn(x).

    Returns:
        ``(x, y)``, both (num_samples, 1) float32.

    """
    x = low + (high - low) * torch.rand(num_samples, 1, generator=generator)
    return x, fn(x)


class FunctionRegressionDataModule(SplitDataModule):
    """Batches ``(x, y)`` of (B, 1) float32 tensors with y = f(x), x uniform on [low, high].

    Args:
        function: a name in :data:`FUNCTIONS` ("sin", "cos", "tanh", "abs", "square", "cube",
            "sinc", "gaussian", "x_sin_x").
        low: the left end of the input interval.
        high: the right end of the input interval.
        num_train: training points.
        num_val: validation points.
        num_test: test points (the same in every run).
        noise_std: standard deviation of Gaussian noise added to the training targets only.
        batch_size: points per batch.
        num_workers: DataLoader worker processes (the data is a few kB; 0 is fastest).
        seed: seed of the training and validation points and of the noise.

    """

    #: the model's input and output widths (an MLP's ``in_features`` and ``out_features``).
    in_features = 1
    out_features = 1

    def __init__(
        self,
        *,
        function: str = "sin",
        low: float = -2 * math.pi,
        high: float = 2 * math.pi,
        num_train: int = 2000,
        num_val: int = 500,
        num_test: int = 500,
        noise_std: float = 0.0,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.fn = function_by_name(function)  # an unknown name stops here, before a Trainer starts
        if not low < high:
            raise ValueError(f"need low < high for the input interval, got low={low}, high={high}")
        if min(num_train, num_val, num_test) < 1:
            raise ValueError(
                f"every split needs at least one point, got num_train={num_train}, num_val={num_val}, "
                f"num_test={num_test}"
            )
        if noise_std < 0:
            raise ValueError(f"noise_std is a standard deviation and must be >= 0, got {noise_std}")
        check_loading(batch_size, num_workers)
        self.function, self.low, self.high = function, low, high
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.noise_std, self.batch_size, self.num_workers, self.seed = noise_std, batch_size, num_workers, seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Draw the three sets (once)."""
        if self.train_set is not None:
            return
        draw = dict(low=self.low, high=self.high)
        generator = split_generator("train", self.seed)
        x, y = sample_function(self.fn, num_samples=self.num_train, generator=generator, **draw)
        if self.noise_std > 0:
            y = y + self.noise_std * torch.randn(y.shape, generator=generator)
        self.train_set = TensorDataset(x, y)
        generator = split_generator("val", self.seed)
        self.val_set = TensorDataset(*sample_function(self.fn, num_samples=self.num_val, generator=generator, **draw))
        generator = split_generator("test", TEST_SEED)
        self.test_set = TensorDataset(*sample_function(self.fn, num_samples=self.num_test, generator=generator, **draw))

