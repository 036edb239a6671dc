"""The small MNIST CNNs: the issue's layer lists, parameter counts, shapes, the BatchNorm option, errors."""

import pytest
import torch
from torch import nn

from research.models import create_model


def layer_kinds(model: nn.Module) -> list[str]:
    """The layers in forward order, e.g. ['conv5x5-32/p2', 'relu', 'pool2', ...]."""
    kinds = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kinds.append(f"conv{m.kernel_size[0]}x{m.kernel_size[1]}-{m.out_channels}/p{m.padding[0]}")
        elif isinstance(m, nn.BatchNorm2d):
            kinds.append("bn")
        elif isinstance(m, nn.ReLU):
            kinds.append("relu")
        elif isinstance(m, nn.MaxPool2d):
            kinds.append(f"pool{m.kernel_size}")
        elif isinstance(m, nn.Linear):
            kinds.append(f"fc{m.in_features}-{m.out_features}")
    return kinds


def test_madry_mnist_cnn_is_the_challenge_network():
    model = create_model("madry_mnist_cnn")
    # The ReLU module is shared by the hidden fc, so it appears once after the features.
    assert layer_kinds(model) == [
        "conv5x5-32/p2", "relu", "pool2", "conv5x5-64/p2", "relu", "pool2", "fc3136-1024", "relu", "fc1024-10",
    ]
    # mnist_challenge/model.py: 5*5*32+32 + 5*5*32*64+64 + 3136*1024+1024 + 1024*10+10
    assert sum(p.numel() for p in model.parameters()) == 3_274_634
    x = torch.rand(2, 1, 28, 28)
    assert model.forward_features(x).shape == (2, 64, 7, 7)
    assert model(x).shape == (2, 10)
    assert model.num_features == 1024


def test_five_layer_cnn_matches_the_notes():
    model = create_model("five_layer_cnn")
    assert layer_kinds(model) == [
        "conv3x3-16/p0", "bn", "relu", "conv3x3-32/p0", "bn", "relu", "pool2", "conv3x3-64/p0", "relu", "pool2",
        "fc1600-128", "relu", "fc128-10",
    ]
    x = torch.rand(3, 1, 28, 28)
    assert model.forward_features(x).shape == (3, 64, 5, 5)  # "a classifier on 64x5x5 features"
    assert model(x).shape == (3, 10)
    weight_layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(weight_layers) == 5


def test_five_layer_cnn_without_batch_norm():
    with_bn, without = create_model("five_layer_cnn"), create_model("five_layer_cnn", batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())
    assert layer_kinds(without) == [k for k in layer_kinds(with_bn) if k != "bn"]
    # The convs BatchNorm followed had no bias (BN's shift replaces it); without BN they get one back.
    first = [m for m in without.modules() if isinstance(m, nn.Conv2d)][:2]
    assert all(conv.bias is not None for conv in first)
    assert all(m.bias is None for m in with_bn.modules() if isinstance(m, nn.Conv2d) and m.out_channels in (16, 32))
    assert without(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", ["madry_mnist_cnn", "five_layer_cnn"])
def test_other_sizes_channels_and_headless(name):
    model = create_model(name, in_chans=3, num_classes=7, img_size=32)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    headless = create_model(name, num_classes=0)
    assert headless(torch.rand(2, 1, 28, 28)).shape == (2, headless.num_features)


@pytest.mark.parametrize("name", ["madry_mnist_cnn", "five_layer_cnn"])
def test_bad_arguments_are_clear_errors(name):
    with pytest.raises(ValueError, match="needs larger images: img_size="):
        create_model(name, img_size=6 if name == "five_layer_cnn" else 3)
    with pytest.raises(ValueError, match="in_chans must be >= 1"):
        create_model(name, in_chans=0)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        create_model(name, num_classes=-1)
    with pytest.raises(ValueError, match=r"in_chans=1 and takes \(B, 1, H, W\) images, got shape \(2, 3, 28, 28\)"):
        create_model(name)(torch.rand(2, 3, 28, 28))
