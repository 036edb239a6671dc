"""He et al. 2016's plain nets (section 4.1, Fig. 3 middle; section 4.2, Fig. 6): ResNets' layers without shortcuts."""

import pytest
import torch

from research.models import create_model, list_models
from research.models.resnet import BasicBlock, Bottleneck

DEPTHS = {"plain20": 3, "plain32": 5, "plain44": 7, "plain56": 9}


@pytest.mark.parametrize(("name", "blocks"), list(DEPTHS.items()))
def test_plain_nets_are_the_cifar_resnets_without_shortcuts(name, blocks):
    plain, resnet = create_model(name), create_model(name.replace("plain", "resnet"))
    assert name in list_models("plain*")
    assert [len(stage) for stage in (plain.layer1, plain.layer2, plain.layer3)] == [blocks] * 3
    # Option A shortcuts have no parameters, so the plain net has exactly the ResNet's weights (Fig. 6 compares them)
    assert plain.state_dict().keys() == resnet.state_dict().keys()
    assert all(not b.residual and b.downsample is None for stage in (plain.layer1, plain.layer2, plain.layer3)
               for b in stage)
    assert all(b.residual for b in resnet.layer1)  # the registered ResNets keep their shortcuts


def test_a_plain_block_is_its_two_layers_without_the_addition():
    torch.manual_seed(0)
    plain = create_model("plain20").eval()
    resnet = create_model("resnet20").eval()
    resnet.load_state_dict(plain.state_dict())
    x = torch.randn(2, 16, 8, 8)
    for block in (plain.layer1[0], plain.layer2[0]):  # same shape, and where a ResNet would need a shortcut
        with torch.no_grad():
            expected = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))))
            torch.testing.assert_close(block(x), expected)
        x = expected
    with torch.no_grad():  # same weights, different function: the shortcut is what differs
        images = torch.randn(2, 3, 32, 32)
        assert not torch.allclose(plain(images), resnet(images))
        assert plain(images).shape == (2, 10)


def test_imagenet_plain_nets_of_table_2_build_from_the_option():
    model = create_model("resnet34", shortcut="none", num_classes=5)  # plain-34 of Table 2
    assert all(b.downsample is None and not b.residual for b in model.modules() if isinstance(b, BasicBlock))
    bottleneck = create_model("resnet50", shortcut="none", num_classes=5)
    assert all(b.downsample is None for b in bottleneck.modules() if isinstance(b, Bottleneck))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == bottleneck(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_plain_nets_refuse_zero_init_residual_and_unknown_shortcuts_list_none():
    with pytest.raises(ValueError, match="zero_init_residual=True needs shortcuts"):
        create_model("plain20", zero_init_residual=True)
    message = r"unknown shortcut 'C'; use one of \['A', 'B'\] \(or 'none': a plain net without shortcuts\)"
    with pytest.raises(ValueError, match=message):
        create_model("resnet20", shortcut="C")


def test_plain_nets_train():
    torch.manual_seed(0)
    model = create_model("plain20", in_chans=1, widths=(4, 8, 16))
    images, labels = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in model.parameters())
    assert losses[-1] < 0.6 * losses[0]  # 16 random images memorised, slowly: 2.3 -> 1.0 in 30 steps
