import pytest
import torch

from research.layers import DropPath, drop_path


def test_identity_in_eval_and_at_zero():
    x = torch.randn(8, 3, 4)
    assert drop_path(x, 0.5, training=False) is x
    assert drop_path(x, 0.0, training=True) is x
    module = DropPath(0.5).eval()
    assert module(x) is x


def test_statistics_in_training():
    torch.manual_seed(0)
    drop_prob = 0.3
    x = torch.ones(20_000, 3, 2)
    out = drop_path(x, drop_prob, training=True)
    per_sample = out.flatten(1)
    # one draw per sample: every element of a sample is dropped or kept together
    assert (per_sample == per_sample[:, :1]).all()
    kept = per_sample[:, 0] != 0
    torch.testing.assert_close(per_sample[kept], torch.full_like(per_sample[kept], 1 / (1 - drop_prob)))
    assert abs((~kept).float().mean().item() - drop_prob) < 0.015
    assert abs(out.mean().item() - 1.0) < 0.03  # 1/keep_prob scaling keeps the expectation


def test_module_in_training_and_drop_everything():
    module = DropPath(1.0).train()
    out = module(torch.randn(4, 5))
    assert torch.equal(out, torch.zeros(4, 5))  # no 0/0 NaNs


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_bad_probability(p):
    with pytest.raises(ValueError, match=r"drop_prob must be in \[0, 1\]"):
        DropPath(p)
    with pytest.raises(ValueError, match=r"drop_prob must be in \[0, 1\]"):
        drop_path(torch.ones(2), p, training=True)
