import pytest
import torch
from einops import rearrange
from hypothesis import given, settings
from hypothesis import strategies as st

from research.layers import PatchEmbed, patchify, resample_patch_embed, unpatchify


def loop_patchify(imgs, p):
    """Slow reference: visit patches row by row, flatten each as (row-in-patch, col-in-patch, channel)."""
    b, c, h, w = imgs.shape
    patches = []
    for i in range(h // p):
        for j in range(w // p):
            patch = imgs[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p]  # (B, C, p, p)
            patches.append(patch.permute(0, 2, 3, 1).reshape(b, -1))
    return torch.stack(patches, dim=1)


@pytest.mark.parametrize("shape,p", [((2, 3, 8, 12), 4), ((1, 1, 6, 6), 2), ((2, 5, 4, 8), 4)])
def test_patchify_matches_loop(shape, p):
    imgs = torch.randn(shape)
    torch.testing.assert_close(patchify(imgs, p), loop_patchify(imgs, p), rtol=0, atol=0)


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 3),
    c=st.integers(1, 5),
    gh=st.integers(1, 4),
    gw=st.integers(1, 4),
    p=st.integers(1, 4),
)
def test_unpatchify_inverts_patchify(b, c, gh, gw, p):
    imgs = torch.randn(b, c, gh * p, gw * p)
    patches = patchify(imgs, p)
    assert patches.shape == (b, gh * gw, p * p * c)
    assert torch.equal(unpatchify(patches, p, gh, gw), imgs)


def test_patch_embed_is_a_linear_map_of_patchified_pixels():
    torch.manual_seed(0)
    embed = PatchEmbed((8, 12), patch_size=4, in_chans=2, embed_dim=6)
    assert embed.grid_size == (2, 3) and embed.num_patches == 6
    imgs = torch.randn(2, 2, 8, 12)
    # the conv kernel, flattened in patchify's (p, q, c) order, is the paper's patch projection E
    weight = rearrange(embed.proj.weight, "d c p q -> d (p q c)")
    expected = patchify(imgs, 4) @ weight.T + embed.proj.bias
    torch.testing.assert_close(embed(imgs), expected)


def test_patch_embed_matches_timm_with_copied_weights():
    timm_patch_embed = pytest.importorskip("timm.layers").PatchEmbed
    ours = PatchEmbed(32, 8, 3, 16)
    ref = timm_patch_embed(img_size=32, patch_size=8, in_chans=3, embed_dim=16)
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), ref(x))


def test_patch_embed_errors():
    with pytest.raises(ValueError, match=r"img_size=\(30, 30\) is not divisible by patch_size=16"):
        PatchEmbed(30, 16)
    embed = PatchEmbed(32, 8, in_chans=3, embed_dim=4)
    with pytest.raises(ValueError, match="input is 64x64 but this was built for 32x32; pass img_size=64"):
        embed(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"pass img_size=\(32, 48\)"):
        embed(torch.zeros(1, 3, 32, 48))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\).*pass in_chans=1"):
        embed(torch.zeros(1, 1, 32, 32))


def test_patchify_errors():
    with pytest.raises(ValueError, match="multiples of patch_size=4"):
        patchify(torch.zeros(1, 3, 6, 8), 4)
    with pytest.raises(ValueError, match=r"unpatchify needs \(B, h\*w, P\*P\*C\)"):
        unpatchify(torch.zeros(1, 5, 48), 4, 2, 3)


@pytest.mark.parametrize("old,new", [(16, 8), (4, 6), (14, (16, 8))])
def test_patch_kernel_resamples_like_timm(old, new):
    timm_resample = pytest.importorskip("timm.layers").resample_patch_embed
    kernel = torch.randn(5, 3, old, old)
    size = (new, new) if isinstance(new, int) else new
    ours = resample_patch_embed(kernel, new)
    assert ours.shape == (5, 3, *size)
    torch.testing.assert_close(ours, timm_resample(kernel, list(size)), rtol=0, atol=0)
    assert resample_patch_embed(kernel, old) is kernel


def test_pi_resize_keeps_the_token_of_an_upsampled_patch():
    # FlexiViT Sec. 3.4: <x, w> = <resize(x), PI-resize(w)> when the patch grows
    import torch.nn.functional as F

    kernel, patch = torch.randn(4, 1, 4, 4), torch.randn(1, 1, 4, 4)
    bigger = F.interpolate(patch, size=(8, 8), mode="bicubic", antialias=True)
    tokens = F.conv2d(patch, kernel), F.conv2d(bigger, resample_patch_embed(kernel, 8))
    torch.testing.assert_close(*tokens, atol=1e-4, rtol=1e-4)


def test_patch_kernel_that_is_not_a_conv_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(C, in_chans, P, P\), got shape \(5, 48\)"):
        resample_patch_embed(torch.randn(5, 48), 8)
