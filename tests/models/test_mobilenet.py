import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from research.models import create_model
from research.models.mobilenet import MobileNetV1

# Howard et al. 2017: Table 8 (1.0 MobileNet-224) and Table 6 (width multipliers), all at 224x224:
# (alpha, million parameters, million multiply-adds). The paper prints parameters to 0.1M.
PAPER = [(1.0, 4.2, 569), (0.75, 2.6, 325), (0.5, 1.3, 149), (0.25, 0.5, 41)]


@pytest.mark.parametrize("alpha,paper_params_m,paper_madds_m", PAPER)
def test_parameters_and_mult_adds_match_the_paper(alpha, paper_params_m, paper_madds_m):
    with torch.device("meta"):  # no memory, no arithmetic
        model = create_model("mobilenet_v1", width_multiplier=alpha, num_classes=1000).eval()
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, 224, 224, device="meta"))
    madds_m = counter.get_total_flops() / 2 / 1e6  # torch counts 2 FLOPs per multiply-add
    assert abs(params_m - paper_params_m) <= 0.05  # the paper's rounding to 0.1M
    if alpha == 1.0:
        assert params_m == pytest.approx(paper_params_m, rel=0.02)  # 4.23M
    assert madds_m == pytest.approx(paper_madds_m, rel=0.01)


@pytest.mark.parametrize("name,size,final_side", [("mobilenet_v1", 64, 2), ("mobilenet_v1_cifar", 32, 2),
                                                  ("mobilenet_v1_cifar", 28, 2)])
def test_any_resolution_and_channels(name, size, final_side):
    model = create_model(name, width_multiplier=0.25, in_chans=1, num_classes=3)
    x = torch.rand(2, 1, size, size)
    features = model.forward_features(x)
    assert features.shape == (2, 256, final_side, final_side)  # 0.25 x 1024 channels
    out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    torch.testing.assert_close(model.forward_head(features), out)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_width_multiplier_scales_every_layer():
    full, quarter = MobileNetV1(width_multiplier=1.0), MobileNetV1(width_multiplier=0.25)
    widths = [m.out_channels for m in full.modules() if isinstance(m, torch.nn.Conv2d)]
    quarter_widths = [m.out_channels for m in quarter.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [w // 4 for w in widths] == quarter_widths
    assert widths[0] == 32 and widths[-1] == 1024 and len(widths) == 1 + 2 * 13  # Table 1: stem + 13 dw/pw pairs
    depthwise = [m for m in full.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise) and len(depthwise) == 13


def test_num_classes_zero_gives_features():
    model = create_model("mobilenet_v1_cifar", width_multiplier=0.25, num_classes=0)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, model.num_features)


def test_user_errors_are_clear():
    with pytest.raises(ValueError, match="width_multiplier must be > 0"):
        create_model("mobilenet_v1", width_multiplier=0)
    with pytest.raises(ValueError, match=r"built for in_chans=1 .*got shape \(2, 3, 32, 32\)"):
        create_model("mobilenet_v1_cifar", in_chans=1, width_multiplier=0.25)(torch.rand(2, 3, 32, 32))
