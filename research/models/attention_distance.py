"""Mean attention distance of a ViT's heads (Dosovitskiy et al. 2021, arXiv 2010.11929, Figure 7 right, App. D.7).

"To understand how ViT uses self-attention to integrate information across the image, we analyzed the average
distance spanned by attention weights at different layers": for each head, the distance in image space between a
query patch and every key patch, weighted by the attention weight, averaged over the query patches and over
images (App. D.7: "averaging the distance between the query pixel and all other pixels, weighted by the attention
weight", 128 images). It is the analogue of a CNN's receptive field size: some heads of the first layers attend
locally, others already to most of the image; deeper, all heads attend widely.

Distances are between patch centres, in pixels (grid steps times the patch size), as in the paper's axis.
Class (prefix) tokens have no place in the image: their rows and columns are dropped and each query's weights on
the patches are renormalised to sum to 1, so the result is a weighted mean over image positions. (Unnormalised
sums, as some re-implementations take, shrink a head's distance by the weight it puts on the class token.)

:func:`attention_maps` recovers the weights that :class:`~research.layers.Attention` (one SDPA call, which never
materialises them) used, from each block's attention input.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from research.layers import Attention


def patch_distances(grid: tuple[int, int], patch_size: int | tuple[int, int]) -> Tensor:
    """Euclidean distance between the centres of every two patches of a ``grid`` (rows, cols), in pixels.

    Returns:
        (N, N) float, N = rows * cols, patches in row-major order (as :class:`~research.layers.PatchEmbed`
        flattens them).
    """
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    centres = torch.stack([rows.flatten() * ph, cols.flatten() * pw], dim=-1).float()  # (N, 2) pixels
    return torch.cdist(centres, centres)


def mean_attention_distance(
    attn: Tensor, grid: tuple[int, int], patch_size: int | tuple[int, int], *, num_prefix_tokens: int = 0
) -> Tensor:
    """Attention-weighted mean distance (pixels) from query to key patches, per head, averaged over queries and images.

    Args:
        attn: attention weights (..., B, h, T, T), rows summing to 1, T = num_prefix_tokens + rows * cols;
            e.g. (depth, B, h, T, T) from :func:`attention_maps`.
        grid: the patch grid (rows, cols).
        patch_size: pixels per patch, an int or (height, width).
        num_prefix_tokens: class (and other) tokens before the patches; dropped, see the module docstring.

    Returns:
        (..., h): one distance per head (per layer, for a stack of layers).

    Raises:
        ValueError: ``attn`` does not have ``num_prefix_tokens + rows * cols`` tokens on its last two axes.
    """
    tokens = num_prefix_tokens + grid[0] * grid[1]
    if attn.ndim < 4 or attn.shape[-1] != tokens or attn.shape[-2] != tokens:
        raise ValueError(f"attention of shape {tuple(attn.shape)} does not fit a {grid[0]}x{grid[1]} grid with "
                         f"{num_prefix_tokens} prefix tokens: expected (..., B, h, {tokens}, {tokens})")
    patches = attn[..., num_prefix_tokens:, num_prefix_tokens:].float()
    patches = patches / patches.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    per_query = (patches * patch_distances(grid, patch_size).to(patches.device)).sum(-1)  # (..., B, h, N)
    return per_query.mean(-1).mean(-2)  # over query patches, then over images


@torch.no_grad()
def attention_maps(model: nn.Module, images: Tensor) -> Tensor:
    """The attention weights softmax(q k^T / sqrt(d)) of every :class:`~research.layers.Attention` in ``model``.

    Runs ``model(images)`` once in eval mode (the caller's mode is restored), recomputing each attention's weights
    from its input with its own ``qkv`` projection: the weights that its SDPA call used (no masks: a ViT's
    self-attention).

    Args:
        model: e.g. a :class:`~research.models.vit.VisionTransformer`.
        images: (B, C, H, W), prepared as the model expects (normalised, if its task normalises).

    Returns:
        (L, B, h, T, T): one map per attention module, in the order they ran; T tokens, class token first.

    Raises:
        ValueError: ``model`` has no :class:`~research.layers.Attention` module.
    """
    inputs: list[tuple[Attention, Tensor]] = []
    modules = [m for m in model.modules() if isinstance(m, Attention)]
    if not modules:
        raise ValueError(f"{type(model).__name__} has no research.layers.Attention: attention maps need a ViT-like "
                         "model built from research.layers")
    hooks = [m.register_forward_pre_hook(lambda m, args: inputs.append((m, args[0]))) for m in modules]
    was_training = model.training
    try:
        model.eval()
        model(images)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    maps = []
    for module, x in inputs:
        q, k, _ = module.split_heads(module.qkv(x), 3)  # (B, h, T, d) each
        maps.append(torch.softmax(q @ rearrange(k, "b h t d -> b h d t") * q.shape[-1] ** -0.5, dim=-1))
    return torch.stack(maps)
