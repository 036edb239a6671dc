import pytest
import torch
from torch import nn

from research.models import create_model
from research.models.dcgan import upsampling_plan


@pytest.mark.parametrize("img_size,chans,plan", [(28, 1, (7, 2)), (32, 3, (4, 3)), (64, 3, (4, 4))])
def test_generator_and_discriminator_shapes(img_size, chans, plan):
    assert upsampling_plan(img_size) == plan
    g = create_model("dcgan_generator", latent_dim=8, img_size=img_size, out_chans=chans, base_width=4)
    d = create_model("dcgan_discriminator", img_size=img_size, in_chans=chans, base_width=4)
    images = g(torch.randn(3, 8))
    assert images.shape == (3, chans, img_size, img_size)
    assert images.min() >= -1 and images.max() <= 1  # tanh output
    logits = d(images)
    assert logits.shape == (3,)
    logits.sum().backward()
    assert all(p.grad is not None for p in [*g.parameters(), *d.parameters()])


def test_paper_layout_for_64x64():
    # Radford et al., Figure 1: z -> 4x4x1024 -> 8x8x512 -> 16x16x256 -> 32x32x128 -> 64x64x3
    g = create_model("dcgan_generator", img_size=64, out_chans=3, base_width=128)
    widths = [m.out_channels for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert widths == [1024, 512, 256, 128, 3]


def test_guidelines_norms_activations_and_init():
    g = create_model("dcgan_generator", base_width=32)
    d = create_model("dcgan_discriminator", base_width=32)
    g_layers, d_layers = list(g.net), list(d.net)
    # generator: BatchNorm + ReLU after every layer but the output, which is tanh without BatchNorm
    assert isinstance(g_layers[-1], nn.Tanh) and isinstance(g_layers[-2], nn.ConvTranspose2d)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in g_layers) == 2
    # discriminator: LeakyReLU(0.2) everywhere, no BatchNorm on the input layer
    assert isinstance(d_layers[1], nn.LeakyReLU) and d_layers[1].negative_slope == 0.2
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d_layers) == 1 and not isinstance(d_layers[1], nn.BatchNorm2d)
    assert not any(isinstance(m, nn.Linear | nn.MaxPool2d) for m in [*g_layers, *d_layers])  # all-convolutional
    convs = [m for m in [*g_layers, *d_layers] if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    weights = torch.cat([m.weight.detach().flatten() for m in convs])
    assert abs(weights.mean().item()) < 2e-3 and weights.std().item() == pytest.approx(0.02, rel=0.05)  # section 4


def test_user_errors_are_clear():
    with pytest.raises(ValueError, match="use an even size"):
        create_model("dcgan_generator", img_size=27)
    with pytest.raises(ValueError, match=r"takes \(B, 100\) latent vectors, got shape \(2, 10\)"):
        create_model("dcgan_generator")(torch.randn(2, 10))
    with pytest.raises(ValueError, match=r"built for \(B, 1, 28, 28\) images, got shape \(2, 1, 32, 32\)"):
        create_model("dcgan_discriminator")(torch.randn(2, 1, 32, 32))
