import pytest
import torch
from torch import nn

from research.layers.separable import DepthwiseSeparableConv2d, separable_weight_ratio


def weights(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_notes_count_3x3_from_2_to_4_channels():
    standard = nn.Conv2d(2, 4, 3, bias=False)
    separable = DepthwiseSeparableConv2d(in_chans=2, out_chans=4, kernel_size=3)
    assert weights(standard) == 72
    assert weights(separable) == 26  # 3*3*2 depthwise + 2*4 pointwise
    assert weights(separable) / weights(standard) == pytest.approx(separable_weight_ratio(out_chans=4, kernel_size=3))
    assert separable_weight_ratio(out_chans=4, kernel_size=3) == pytest.approx(1 / 4 + 1 / 9)


@pytest.mark.parametrize("in_chans,out_chans,k", [(3, 16, 3), (8, 5, 5), (1, 1, 1)])
def test_ratio_formula_holds_for_any_shape(in_chans, out_chans, k):
    standard = weights(nn.Conv2d(in_chans, out_chans, k, bias=False))
    separable = weights(DepthwiseSeparableConv2d(in_chans=in_chans, out_chans=out_chans, kernel_size=k))
    assert separable / standard == pytest.approx(separable_weight_ratio(out_chans=out_chans, kernel_size=k))


def test_equals_a_depthwise_then_pointwise_reference():
    layer = DepthwiseSeparableConv2d(in_chans=3, out_chans=5, kernel_size=3, stride=2, bias=True)
    x = torch.randn(2, 3, 9, 9)
    # reference: each input channel convolved with its own filter, then a per-pixel linear map
    depth = torch.cat(
        [
            nn.functional.conv2d(x[:, c : c + 1], layer.depthwise.weight[c : c + 1], layer.depthwise.bias[c : c + 1],
                                 stride=2, padding=1)
            for c in range(3)
        ],
        dim=1,
    )
    expected = torch.einsum("oc,bchw->bohw", layer.pointwise.weight[:, :, 0, 0], depth)
    expected = expected + layer.pointwise.bias[None, :, None, None]
    out = layer(x)
    assert out.shape == (2, 5, 5, 5)
    torch.testing.assert_close(out, expected)


def test_mobilenet_block_has_norm_and_act_after_each_conv():
    block = DepthwiseSeparableConv2d(in_chans=4, out_chans=8, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU)
    kinds = [type(m) for m in block.children()]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert (block(torch.randn(2, 4, 6, 6)) >= 0).all()


def test_bad_channels_are_a_clear_error():
    with pytest.raises(ValueError, match="in_chans and out_chans must be >= 1"):
        DepthwiseSeparableConv2d(in_chans=0, out_chans=4)
