import math

import pytest
import torch

from research.data import FunctionRegressionDataModule
from research.data.functions import FUNCTIONS, function_by_name


def sets(**kw):
    dm = FunctionRegressionDataModule(**({"num_train": 200, "num_val": 50, "num_test": 50} | kw))
    dm.setup("fit")
    return dm


def test_targets_are_the_function_on_the_interval():
    dm = sets()
    for dataset, n in ((dm.train_set, 200), (dm.val_set, 50), (dm.test_set, 50)):
        x, y = dataset.tensors
        assert x.shape == y.shape == (n, 1) and x.dtype == torch.float32
        assert x.min() >= -2 * math.pi and x.max() <= 2 * math.pi
        torch.testing.assert_close(y, torch.sin(x))
    x = dm.train_set.tensors[0]
    assert x.min() < -5 and x.max() > 5  # spread over the interval, not a corner of it


def test_batches_are_pairs_of_column_vectors():
    x, y = next(iter(sets(batch_size=16).train_dataloader()))
    assert x.shape == y.shape == (16, 1)


def test_noise_goes_on_training_targets_only():
    dm = sets(noise_std=0.5, num_train=4000)
    x, y = dm.train_set.tensors
    assert (y - torch.sin(x)).std().item() == pytest.approx(0.5, rel=0.05)
    for dataset in (dm.val_set, dm.test_set):
        x, y = dataset.tensors
        torch.testing.assert_close(y, torch.sin(x))


def test_test_points_are_fixed_and_never_training_points():
    a, b = sets(seed=0), sets(seed=1)
    assert torch.equal(a.test_set.tensors[0], b.test_set.tensors[0])
    assert not torch.equal(a.train_set.tensors[0], b.train_set.tensors[0])
    assert torch.equal(a.train_set.tensors[0], sets(seed=0).train_set.tensors[0])  # reproducible
    for dm in (a, b):  # seed 0 is the test set's seed too: the sets must still differ
        train, val, test = (set(d.tensors[0].flatten().tolist()) for d in (dm.train_set, dm.val_set, dm.test_set))
        assert not (train & test or val & test or train & val)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_function_is_a_real_function_of_x(name):
    x = torch.linspace(-3, 3, 7)[:, None]
    y = function_by_name(name)(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_other_functions_and_intervals():
    x, y = sets(function="square", low=0.0, high=1.0).val_set.tensors
    assert x.min() >= 0 and x.max() <= 1
    torch.testing.assert_close(y, x**2)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown function 'sine'; did you mean 'sin'"):
        FunctionRegressionDataModule(function="sine")
    with pytest.raises(ValueError, match="need low < high"):
        FunctionRegressionDataModule(low=1.0, high=1.0)
    with pytest.raises(ValueError, match="at least one point"):
        FunctionRegressionDataModule(num_val=0)
    with pytest.raises(ValueError, match="noise_std .* >= 0"):
        FunctionRegressionDataModule(noise_std=-0.1)
    with pytest.raises(ValueError, match="batch_size >= 1"):
        FunctionRegressionDataModule(batch_size=0)
