import pytest
import torch
import torch.nn.functional as F
from torch import nn

from research.layers import Mlp


def test_matches_timm_mlp_with_copied_weights():
    timm_mlp = pytest.importorskip("timm.layers").Mlp
    torch.manual_seed(0)
    ours = Mlp(8, 32).eval()
    ref = timm_mlp(8, 32).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ours(x), ref(x))


def test_widths_and_activation():
    mlp = Mlp(8, 32, 4, act_layer=nn.ReLU)
    assert (mlp.fc1.in_features, mlp.fc1.out_features, mlp.fc2.out_features) == (8, 32, 4)
    x = torch.randn(3, 8)
    expected = mlp.fc2(torch.relu(mlp.fc1(x)))
    torch.testing.assert_close(mlp(x), expected)


def test_dropout_after_activation_and_after_fc2():
    mlp = Mlp(8, 32, drop=0.5)
    x = torch.randn(4, 8)
    torch.manual_seed(0)
    out = mlp(x)
    torch.manual_seed(0)  # same random draws, spent in the same order
    expected = F.dropout(mlp.fc2(F.dropout(mlp.act(mlp.fc1(x)), 0.5)), 0.5)
    torch.testing.assert_close(out, expected)
    mlp.eval()
    torch.testing.assert_close(mlp(x), mlp.fc2(mlp.act(mlp.fc1(x))))
