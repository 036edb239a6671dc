"""Position encodings: fixed sin-cos tables, and fitting position tables to another grid or window.

A *learned* absolute embedding is just an ``nn.Parameter`` of shape (1, N, C) in the model that owns
it (ViT's ``pos_embed``); this module holds what is computed rather than learned, and how a table
saved for one grid (patch grid, attention window) becomes the table of another. Every conversion is
by the table's grid, never by its row count: an 8x8 table is resampled for a 4x16 grid although
both have 64 rows. The interpolations are timm's own functions (``timm.layers``), so a checkpoint
converted here equals one converted by timm.

- :func:`resample_pos_embed`: a (1, prefix + H*W, C) table to another (H', W') grid.
- :func:`fit_pos_embed`: the same for a checkpoint's table whose grid must first be found.
- :func:`sincos_grid`: the grid of a 2D sin-cos table, read from its values.
- :func:`resize_rel_pos_bias_table`: Swin's relative position bias for another window.
"""

from __future__ import annotations

import math
import warnings

import torch
from einops import rearrange
from timm.layers import resample_abs_pos_embed, to_2tuple
from timm.layers import resize_rel_pos_bias_table as _timm_resize_rel_pos_bias_table
from torch import Tensor


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
    gh, gw = to_2tuple(grid_size)
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

    "We perform 2D interpolation of the pre-trained position embeddings, according to their location
    in the original image": the table is reshaped to its (H, W) grid and resized as an image, so an
    8x8 table becomes a 4x16 one by its layout even though both have 64 rows. This is timm's
    ``timm.layers.resample_abs_pos_embed`` (antialiased interpolation in float32), called with both
    grids explicit; prefix tokens (class/register) are kept as they are.

    Args:
        pos_embed: (1, num_prefix_tokens + H*W, C).
        new_grid: target grid (H', W'), or an int for a square grid.
        old_grid: grid (H, W) of ``pos_embed``; by default the square root of its H*W rows.
        num_prefix_tokens: leading tokens that have no grid position.
        mode: ``F.interpolate`` mode.

    Returns:
        (1, num_prefix_tokens + H'*W', C) in the dtype of ``pos_embed``; ``pos_embed`` itself when
        the grids are equal.

    Raises:
        ValueError: ``old_grid`` is omitted and H*W is not a square, or ``old_grid`` does not fit the table.

    """
    new_grid = to_2tuple(new_grid)
    num_old = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(num_old)
        if side * side != num_old:
            raise ValueError(
                f"pos_embed has {num_old} grid positions, not a square grid; pass old_grid=(rows, cols)"
            )
        old_grid = (side, side)
    old_grid = to_2tuple(old_grid)
    if old_grid[0] * old_grid[1] != num_old:
        raise ValueError(f"old_grid={old_grid} does not fit pos_embed's {num_old} grid positions")
    if old_grid == new_grid:
        return pos_embed
    # antialias only acts when shrinking; timm uses it to avoid aliasing the learned table.
    return resample_abs_pos_embed(
        pos_embed,
        list(new_grid),
        list(old_grid),
        num_prefix_tokens=num_prefix_tokens,
        interpolation=mode,
        antialias=mode in ("bilinear", "bicubic"),
    )


def sincos_grid(pos_embed: Tensor, num_prefix_tokens: int = 1) -> tuple[int, int] | None:
    """The grid whose fixed 2D sin-cos table (:func:`sincos_pos_embed_2d`) ``pos_embed`` is, if any.

    A sin-cos table spells out each row's column and row index, so its grid can be read from its
    values where a learned table's cannot (64 rows may be 8x8 or 4x16): MAE's encoder table is one.

    Args:
        pos_embed: (1, num_prefix_tokens + N, C) or (num_prefix_tokens + N, C).
        num_prefix_tokens: leading rows that have no grid position.

    Returns:
        (H, W) with H * W = N and ``pos_embed`` equal to that grid's table (to 1e-5), else None.

    """
    table = pos_embed.reshape(-1, pos_embed.shape[-1])[num_prefix_tokens:].detach().float().cpu()
    num, dim = table.shape
    if dim % 4 or num == 0:
        return None
    for rows in range(1, num + 1):
        if num % rows == 0 and torch.allclose(table, sincos_pos_embed_2d((rows, num // rows), dim), atol=1e-5):
            return rows, num // rows
    return None


def fit_pos_embed(
    pos_embed: Tensor,
    grid: int | tuple[int, int],
    *,
    num_prefix_tokens: int = 1,
    source_grid: int | tuple[int, int] | None = None,
) -> Tensor:
    """Fit a checkpoint's absolute position table to a model's patch grid, by grid (ViT Sec. 3.2).

    The checkpoint's grid is, in this order: ``source_grid`` if given; the grid a 2D sin-cos table
    (MAE's) spells out (:func:`sincos_grid`); a square grid when its row count is a square, as every
    timm, torchvision and official MAE checkpoint has (timm makes the same assumption); the model's
    grid when the count is not a square but equals the model's (a checkpoint of this architecture).
    Any other table is refused: its grid cannot be known. It is then resampled with
    :func:`resample_pos_embed` if the grids differ.

    Args:
        pos_embed: the checkpoint's (1, num_prefix_tokens + H*W, C).
        grid: the model's patch grid (H', W').
        num_prefix_tokens: leading class/register rows, kept as they are.
        source_grid: the checkpoint's grid (H, W), for a table whose grid the rules above cannot
            tell (a non-square grid of another count, or a 4x16 table read as square 8x8).

    Returns:
        (1, num_prefix_tokens + H'*W', C); ``pos_embed`` itself when the grids are equal.

    Raises:
        ValueError: ``source_grid`` does not fit the table, or the table's grid cannot be told.

    Warns:
        UserWarning: a square count read as a square grid is resampled into a model whose
            non-square grid has the same count (a 14x14 timm table at 112x448 is right; a 4x16
            checkpoint of this very model is not, and needs ``source_grid=(4, 16)``).

    """
    grid = to_2tuple(grid)
    num = pos_embed.shape[1] - num_prefix_tokens
    if source_grid is not None:
        source_grid = to_2tuple(source_grid)
        if source_grid[0] * source_grid[1] != num:
            raise ValueError(
                f"source_grid={source_grid} has {source_grid[0] * source_grid[1]} positions but the "
                f"checkpoint's pos_embed has {num} (after {num_prefix_tokens} class/prefix rows); "
                "pass the grid (rows, cols) of the checkpoint's patches"
            )
        return resample_pos_embed(pos_embed, grid, source_grid, num_prefix_tokens)
    side = math.isqrt(num)
    source = sincos_grid(pos_embed, num_prefix_tokens)
    if source is None and side * side == num:
        source = (side, side)
        if num == grid[0] * grid[1] and source != grid:
            warnings.warn(
                f"the checkpoint's pos_embed has {num} positions, read as a square {side}x{side} grid (as timm, "
                f"torchvision and MAE checkpoints are) and resampled to this model's {grid[0]}x{grid[1]}; if it "
                f"was saved from a {grid[0]}x{grid[1]} model, pass source_grid={grid} to load it as it is",
                stacklevel=3,
            )
    elif source is None and num == grid[0] * grid[1]:
        source = grid
    elif source is None:
        raise ValueError(
            f"the checkpoint's pos_embed has {num} grid positions, which is not a square grid, so its "
            f"layout is unknown; pass source_grid=(rows, cols), the checkpoint's patch grid, to resample it "
            f"to this model's {grid[0]}x{grid[1]}"
        )
    return resample_pos_embed(pos_embed, grid, source, num_prefix_tokens)


def resize_rel_pos_bias_table(
    table: Tensor, window: int | tuple[int, int], old_window: int | tuple[int, int] | None = None
) -> Tensor:
    """Fit a relative position bias table (Swin Sec. 3.2, Eq. 4) to another attention window.

    Row (dy + Mh - 1) * (2Mw - 1) + (dx + Mw - 1) holds the bias of offset (dy, dx), so a table
    is a (2Mh - 1) x (2Mw - 1) grid of offsets:

    - a smaller window keeps the centre of the grid, the offsets it can see. That is exactly what
      the larger-window model computes on a map no larger than the smaller window (a stage that
      shrinks its window), where timm's interpolation only approximates it.
    - a larger window interpolates, as the paper does for fine-tuning with another window ("through
      bi-cubic interpolation"); this is ``timm.layers.resize_rel_pos_bias_table`` (BEiT's
      geometric-progression resampling), which timm's Swin ``checkpoint_filter_fn`` applies.

    Args:
        table: ((2Mh - 1) * (2Mw - 1), heads).
        window: the new window (Mh', Mw'), or an int for a square one.
        old_window: the table's window; by default a square one read from its row count.

    Returns:
        ((2Mh' - 1) * (2Mw' - 1), heads); ``table`` itself when the windows are equal.

    Raises:
        ValueError: ``old_window`` is omitted and the rows are not (2M - 1)^2 for an integer M, or
            ``old_window`` does not fit the table.

    """
    window = to_2tuple(window)
    rows = table.shape[0]
    if old_window is None:
        side = math.isqrt(rows)
        if side * side != rows or side % 2 == 0:
            raise ValueError(
                f"a relative position bias table of {rows} rows is not the (2M-1)^2 offsets of a square "
                "M x M window, so its window is unknown; build the model with the checkpoint's "
                "img_size and window_size"
            )
        old_window = ((side + 1) // 2,) * 2
    old_window = to_2tuple(old_window)
    if (2 * old_window[0] - 1) * (2 * old_window[1] - 1) != rows:
        raise ValueError(f"old_window={old_window} does not fit a relative position bias table of {rows} rows")
    if old_window == window:
        return table
    (mh, mw), (th, tw) = old_window, window
    if th <= mh and tw <= mw:
        grid = rearrange(table, "(dy dx) h -> dy dx h", dy=2 * mh - 1)
        return rearrange(grid[mh - th : mh + th - 1, mw - tw : mw + tw - 1], "dy dx h -> (dy dx) h").clone()
    new_shape = ((2 * th - 1) * (2 * tw - 1), table.shape[1])
    with warnings.catch_warnings():
        # timm's interpolator trips two torch performance/deprecation notes that are not the user's to fix
        warnings.filterwarnings("ignore", category=UserWarning, module=r"timm\.layers\.interpolate")
        return _timm_resize_rel_pos_bias_table(table, window, new_shape, old_window_size=old_window)
