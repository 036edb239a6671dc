"""Mean attention distance (Dosovitskiy et al. 2021, App. D.7) on hand-made attention maps and a real ViT's maps."""

import math

import pytest
import torch
from einops import rearrange

from research.models import create_model
from research.models.attention_distance import attention_maps, mean_attention_distance, patch_distances


def test_patch_distances_are_pixels_between_patch_centres():
    distances = patch_distances((2, 3), 4)  # patches 0 1 2 / 3 4 5, row-major
    assert distances.shape == (6, 6)
    assert distances[0, 1] == 4 and distances[0, 2] == 8 and distances[0, 3] == 4
    assert distances[0, 5] == pytest.approx(math.hypot(4, 8))
    assert torch.equal(distances, distances.T) and torch.all(distances.diagonal() == 0)
    assert patch_distances((1, 2), (3, 5))[0, 1] == 5  # (height, width) patches: a column step is the width


def test_attention_to_self_only_is_distance_zero():
    attn = torch.eye(16).expand(2, 3, 16, 16)  # (B, h, N, N)
    assert torch.equal(mean_attention_distance(attn, (4, 4), 4), torch.zeros(3))


def test_uniform_attention_is_the_mean_pairwise_patch_distance():
    grid, patch = (3, 4), 2
    attn = torch.full((5, 2, 12, 12), 1 / 12)
    # by brute force over every (query, key) pair of patch centres, self-pairs included
    centres = [(r * patch, c * patch) for r in range(grid[0]) for c in range(grid[1])]
    expected = sum(math.dist(a, b) for a in centres for b in centres) / len(centres) ** 2
    assert mean_attention_distance(attn, grid, patch) == pytest.approx(torch.full((2,), expected))


def test_attention_to_the_far_corner_is_its_distance_and_heads_stay_apart():
    attn = torch.zeros(1, 2, 4, 4)
    attn[0, 0, :, 3] = 1  # head 0: every query looks at patch 3 (bottom right of a 2x2 grid)
    attn[0, 1] = torch.eye(4)  # head 1: itself
    # queries 0, 1, 2, 3 are sqrt(2), 1, 1, 0 patches from patch 3; 10 pixels per patch
    expected = 10 * (math.sqrt(2) + 1 + 1 + 0) / 4
    assert mean_attention_distance(attn, (2, 2), 10) == pytest.approx(torch.tensor([expected, 0.0]))


def test_the_class_token_is_dropped_and_the_patch_weights_renormalised():
    patches = torch.full((1, 1, 4, 4), 1 / 4)
    with_cls = torch.zeros(1, 1, 5, 5)
    with_cls[..., 1:, 0] = 0.5  # half of every patch query's weight on the class token
    with_cls[..., 1:, 1:] = 0.5 * patches
    with_cls[..., 0, :] = 1 / 5
    assert mean_attention_distance(with_cls, (2, 2), 4, num_prefix_tokens=1) == pytest.approx(
        mean_attention_distance(patches, (2, 2), 4))


def test_a_stack_of_layers_gives_one_row_per_layer_and_a_misfit_says_so():
    attn = torch.stack([torch.eye(4).expand(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.25)])  # (L, B, h, N, N)
    distances = mean_attention_distance(attn, (2, 2), 1)
    assert distances.shape == (2, 3) and torch.all(distances[0] == 0) and torch.all(distances[1] > 0)
    with pytest.raises(ValueError, match=r"not fit a 2x2 grid with 1 prefix tokens: expected \(\.\.\., B, h, 5, 5\)"):
        mean_attention_distance(attn, (2, 2), 1, num_prefix_tokens=1)


def test_attention_maps_are_the_weights_the_vit_used():
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch4_32", img_size=16, in_chans=1, embed_dim=32, depth=2, num_heads=4,
                         num_classes=10).train()
    images = torch.rand(3, 1, 16, 16)
    outputs = []
    hooks = [block.attn.register_forward_hook(lambda m, args, out: outputs.append((m, args[0], out)))
             for block in model.blocks]
    maps = attention_maps(model, images)
    for hook in hooks:
        hook.remove()
    assert model.training  # the caller's mode comes back
    assert maps.shape == (2, 3, 4, 17, 17)  # (L, B, h, T, T): 16 patches and the class token
    assert torch.allclose(maps.sum(-1), torch.ones(()))
    for layer, (attn, x, out) in enumerate(outputs):  # weights @ values, projected, is what the module returned
        _, _, v = attn.split_heads(attn.qkv(x), 3)
        again = attn.proj(rearrange(maps[layer] @ v, "b h t d -> b t (h d)"))
        assert torch.allclose(again, out, atol=1e-5)
    distances = mean_attention_distance(maps, model.patch_embed.grid_size, 4, num_prefix_tokens=1)
    assert distances.shape == (2, 4) and torch.all((distances > 0) & (distances < patch_distances((4, 4), 4).max()))


def test_attention_maps_need_an_attention_module():
    with pytest.raises(ValueError, match="has no research.layers.Attention"):
        attention_maps(create_model("resnet20"), torch.rand(1, 3, 8, 8))
