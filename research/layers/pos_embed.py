"""Position encodings: fixed sin-cos tables and resampling of learned ones to a new patch grid.

A *learned* absolute embedding is just an ``nn.Parameter`` of shape (1, N, C) in the model that owns
it (ViT's ``pos_embed``); this module holds what is computed rather than learned.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _sin_cos(pos: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Sin and cos of pos * omega_i, omega_i = 10000^(-2i/dim), i < dim/2 (Vaswani et al., Sec. 3.5).

    Returns:
        Two (M, dim/2) float64 tensors for M positions.

    """
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = torch.outer(pos.to(torch.float64), omega)
    return angles.sin(), angles.cos()


def sincos_pos_embed_1d(length: int, dim: int) -> Tensor:
    """Compute the Transformer's sinusoidal encoding (Vaswani et al. 2017, arXiv 1706.03762, Sec. 3.5).

    PE[pos, 2i] = sin(pos / 10000^(2i/dim)), PE[pos, 2i+1] = cos(pos / 10000^(2i/dim)).

    Args:
        length: number of positions N.
        dim: encoding width C (even).

    Returns:
        (N, C) float32.

    """
    if dim % 2:
        raise ValueError(f"sin-cos encodings need an even dim, got dim={dim}")
    sin, cos = _sin_cos(torch.arange(length), dim)
    return rearrange([sin, cos], "two n f -> n (f two)").float()  # interleave: sin, cos, sin, cos, ...


def sincos_pos_embed_2d(grid_size: int | tuple[int, int], dim: int, *, num_prefix_tokens: int = 0) -> Tensor:
    """Compute a fixed 2D sin-cos encoding of a patch grid in MAE's ``get_2d_sincos_pos_embed`` layout.

    Half of the channels encode the column and half the row, each as 1D [sin..., cos...] blocks:
    [sin(w), cos(w), sin(h), cos(h)]. (MAE's code names the first half "h", but its
    ``np.meshgrid(grid_w, grid_h)`` puts the column coordinate first; we reproduce what it computes,
    so MAE checkpoints and ours agree.)

    Args:
        grid_size: patch grid, an int for square grids or (H/P, W/P).
        dim: encoding width C, a multiple of 4.
        num_prefix_tokens: zero rows prepended for class/register tokens (MAE's ``cls_token=True``).

    Returns:
        (num_prefix_tokens + N, C) float32, patches in row-major order.

    """
    if dim % 4:
        raise ValueError(f"2D sin-cos encodings need dim to be a multiple of 4, got dim={dim}")
    gh, gw = _pair(grid_size)
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    emb = torch.cat([*_sin_cos(cols.flatten(), dim // 2), *_sin_cos(rows.flatten(), dim // 2)], dim=1)
    return torch.cat([emb.new_zeros(num_prefix_tokens, dim), emb]).float()


def resample_pos_embed(
    pos_embed: Tensor,
    new_grid: int | tuple[int, int],
    old_grid: int | tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
) -> Tensor:
    """Interpolate a learned position embedding to another patch grid (ViT paper, Sec. 3.2).

    Used to fine-tune or evaluate at another resolution than the checkpoint's. Matches timm's
    ``resample_abs_pos_embed`` (antialiased interpolation in float32); prefix tokens
    (class/register) are kept as they are.

    Args:
        pos_embed: (1, num_prefix_tokens + N_old, C).
        new_grid: target grid (H'/P, W'/P), or an int for a square grid.
        old_grid: grid of ``pos_embed``; by default the square root of N_old.
        num_prefix_tokens: leading tokens that have no grid position.
        mode: ``F.interpolate`` mode.

    Returns:
        (1, num_prefix_tokens + N_new, C) in the dtype of ``pos_embed``.

    """
    new_grid = _pair(new_grid)
    num_old = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(num_old)
        if side * side != num_old:
            raise ValueError(
                f"pos_embed has {num_old} grid positions, not a square grid; pass old_grid=(rows, cols)"
            )
        old_grid = (side, side)
    old_grid = _pair(old_grid)
    if old_grid[0] * old_grid[1] != num_old:
        raise ValueError(f"old_grid={old_grid} does not fit pos_embed's {num_old} grid positions")
    if old_grid == new_grid:
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    grid = rearrange(grid.float(), "1 (h w) c -> 1 c h w", h=old_grid[0])
    # antialias only acts when shrinking; timm uses it to avoid aliasing the learned table.
    grid = F.interpolate(grid, size=new_grid, mode=mode, antialias=mode in ("bilinear", "bicubic"))
    grid = rearrange(grid, "1 c h w -> 1 (h w) c").to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
