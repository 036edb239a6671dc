"""ResNet: torchvision/timm parity, the paper's parameter counts and FLOPs, shortcuts, shapes, errors."""

import pytest
import torch
from torch import nn

from research.models import create_model, import_weights, list_models
from research.models.resnet import BasicBlock, ResNet, ZeroPadShortcut

IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
CIFAR = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(name: str, **kwargs) -> nn.Module:
    """Build without allocating or initialising weights: enough for counting parameters and FLOPs."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


def randomise_bn(model: nn.Module) -> nn.Module:
    """Move BN off its identity init, so a parity test fails if BN weights or running stats do not load."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model


def test_registered_names():
    assert set(IMAGENET + CIFAR) <= set(list_models("resnet*"))


# --- weight import and parity with the references ---------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_weights_give_torchvision_logits(name):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = randomise_bn(getattr(torchvision.models, name)(weights=None)).eval()
    model = create_model(name).eval()
    assert import_weights(model, reference.state_dict()) == "torchvision"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        assert expected.std() > 0.1  # logits large enough for atol=1e-4 to mean something
        torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-4)


def test_timm_resnet18_weights_give_timm_logits():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = randomise_bn(timm.create_model("resnet18", pretrained=False)).eval()
    model = create_model("resnet18").eval()
    import_weights(model, reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=1e-4)


def test_own_weights_round_trip():
    source, target = create_model("resnet20", shortcut="B"), create_model("resnet20", shortcut="B")
    assert import_weights(target, source.state_dict()) == "research"
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_vit_weights_are_rejected():
    vit_like = {
        "cls_token": torch.zeros(1, 1, 192),
        "pos_embed": torch.zeros(1, 197, 192),
        "patch_embed.proj.weight": torch.zeros(192, 3, 16, 16),
        "blocks.0.attn.qkv.weight": torch.zeros(576, 192),
        "head.weight": torch.zeros(1000, 192),
    }
    with pytest.raises(ValueError, match="match none of the layouts.*cls_token"):
        import_weights(create_model("resnet18"), vit_like)


def test_wrong_num_classes_is_reported():
    torchvision = pytest.importorskip("torchvision")
    state_dict = torchvision.models.resnet18(weights=None).state_dict()
    message = r"fc\.weight: checkpoint \(1000, 512\) vs model \(10, 512\).*num_classes"
    with pytest.raises(ValueError, match=message):
        import_weights(create_model("resnet18", num_classes=10), state_dict)


def test_other_depth_is_reported():
    with pytest.raises(ValueError, match=r"do not fit.*unexpected \['layer1\.0\.bn3"):
        import_weights(create_model("resnet18"), create_model("resnet50").state_dict())


# --- the paper's numbers -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "count"), [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_parameter_count_exact(name, count):
    assert n_params(on_meta(name)) == count


@pytest.mark.parametrize("name", IMAGENET)
def test_parameter_count_matches_torchvision(name):
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(weights=None)
    assert n_params(on_meta(name)) == n_params(reference)


# The paper's parameter counts (Table 6) and FLOPs (Table 1) are rows of research/reproduce/complexity.py,
# checked by tests/reproduce/test_complexity.py.


# --- shortcuts and blocks ----------------------------------------------------------------------


def test_zero_pad_shortcut_subsamples_and_appends_zero_channels():
    x = torch.randn(2, 16, 7, 7)
    y = ZeroPadShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2], atol=0, rtol=0)
    assert not y[:, 16:].any()
    assert list(ZeroPadShortcut(16, 32, stride=2).parameters()) == []


def test_zero_pad_shortcut_cannot_drop_channels():
    with pytest.raises(ValueError, match="only add channels"):
        ZeroPadShortcut(32, 16, stride=1)


def test_option_a_has_no_shortcut_parameters_and_option_b_has_projections():
    model_a, model_b = on_meta("resnet20"), on_meta("resnet20", shortcut="B")
    assert isinstance(model_a.layer2[0].downsample, ZeroPadShortcut)
    assert not [n for n, _ in model_a.named_parameters() if "downsample" in n]
    # Option B adds a 1x1 conv + BN at the two stage transitions, 16 -> 32 and 32 -> 64.
    projections = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert n_params(model_b) - n_params(model_a) == projections
    expected = {f"layer{s}.0.downsample.{p}" for s in (2, 3) for p in ("0.weight", "1.weight", "1.bias")}
    assert {n for n, _ in model_b.named_parameters() if "downsample" in n} == expected


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_zero_init_residual_makes_block_relu_of_shortcut(shortcut):
    model = create_model("resnet20", shortcut=shortcut, zero_init_residual=True).eval()
    block = model.layer2[0]
    assert isinstance(block, BasicBlock) and block.downsample is not None
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(block.downsample(x)))


def test_identity_shortcut_only_where_shape_is_kept():
    model = on_meta("resnet50")
    assert model.layer1[0].downsample is not None  # 64 -> 256 channels
    assert all(b.downsample is None for stage in (model.layer1, model.layer2) for b in stage[1:])


def test_stride_in_1x1_moves_the_stride_and_keeps_parameters():
    v15, paper = on_meta("resnet50"), on_meta("resnet50", stride_in_1x1=True)
    for stage in ("layer2", "layer3", "layer4"):
        first_v15, first_paper = getattr(v15, stage)[0], getattr(paper, stage)[0]
        assert (first_v15.conv1.stride, first_v15.conv2.stride) == ((1, 1), (2, 2))
        assert (first_paper.conv1.stride, first_paper.conv2.stride) == ((2, 2), (1, 1))
        assert first_paper.downsample[0].stride == (2, 2)
    assert n_params(v15) == n_params(paper)
    x = torch.empty(1, 3, 64, 64, device="meta")
    assert v15.forward_features(x).shape == paper.forward_features(x).shape == (1, 2048, 2, 2)


# --- shapes, gradients, options ----------------------------------------------------------------


def test_cifar_grey_28x28_shapes():
    model = create_model("resnet20", in_chans=1, num_classes=10)
    x = torch.randn(2, 1, 28, 28)
    assert model.num_features == 64
    assert model.forward_features(x).shape == (2, 64, 7, 7)
    assert model(x).shape == (2, 10)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 64)


@pytest.mark.parametrize(("name", "num_features"), [("resnet18", 512), ("resnet50", 2048)])
def test_imagenet_small_input_shapes(name, num_features):
    model = on_meta(name, in_chans=1, num_classes=10)
    x = torch.empty(2, 1, 32, 32, device="meta")
    assert model.num_features == num_features
    assert model.forward_features(x).shape == (2, num_features, 1, 1)
    assert model(x).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet18", "resnet20"])
def test_num_classes_zero_gives_features(name):
    model = create_model(name, num_classes=0)
    assert isinstance(model.fc, nn.Identity) and not any("fc" in n for n, _ in model.named_parameters())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, model.num_features)


@pytest.mark.parametrize(("name", "kwargs"), [("resnet18", {}), ("resnet20", {"shortcut": "B"})])
def test_every_parameter_gets_a_gradient(name, kwargs):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **kwargs).train()
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 3]))
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_kwargs_override_pinned_hyperparameters():
    model = on_meta("resnet20", layers=(1, 1, 1), widths=(8, 16, 32), num_classes=100)
    assert model.num_features == 32 and model.fc.out_features == 100 and len(model.layer3) == 1
    assert not hasattr(model, "layer4")


# --- user errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shortcut": "C"}, r"unknown shortcut 'C'; use one of \['A', 'B'\]"),
        ({"in_chans": 0}, "in_chans must be >= 1"),
        ({"num_classes": -1}, "num_classes must be >= 1, or 0"),
        ({"stride_in_1x1": True}, "only applies to bottleneck"),
        ({"stem": "tiny"}, "unknown stem"),
        ({"layers": (2, 2)}, "one entry per stage"),
    ],
)
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("resnet18", **kwargs)


def test_wrong_number_of_input_channels():
    model = create_model("resnet20")
    with pytest.raises(ValueError, match=r"built for in_chans=3.*got shape \(2, 1, 28, 28\).*in_chans=1"):
        model(torch.randn(2, 1, 28, 28))


def test_constructor_is_keyword_only():
    with pytest.raises(TypeError):
        ResNet((2, 2, 2, 2))
