import math

import numpy as np
import pytest
import torch

from research.layers import (
    fit_pos_embed,
    resample_pos_embed,
    resize_rel_pos_bias_table,
    sincos_grid,
    sincos_pos_embed_1d,
    sincos_pos_embed_2d,
)


def mae_2d_sincos(embed_dim, grid_size, cls_token=False):
    """MAE's util/pos_embed.py get_2d_sincos_pos_embed (square grids), copied as the reference."""

    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb


def test_1d_matches_the_paper_formula():
    n, d = 7, 10
    pe = sincos_pos_embed_1d(n, d)
    assert pe.shape == (n, d) and pe.dtype == torch.float32
    for pos in range(n):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


@pytest.mark.parametrize("cls_token", [False, True])
def test_2d_matches_mae(cls_token):
    pe = sincos_pos_embed_2d(5, 16, num_prefix_tokens=int(cls_token))
    expected = torch.from_numpy(mae_2d_sincos(16, 5, cls_token)).float()
    torch.testing.assert_close(pe, expected)


def test_2d_non_square_grid_is_a_crop_of_the_square_one():
    gh, gw, d = 3, 5, 8
    pe = sincos_pos_embed_2d((gh, gw), d).view(gh, gw, d)
    square = torch.from_numpy(mae_2d_sincos(d, max(gh, gw))).float().view(max(gh, gw), max(gh, gw), d)
    torch.testing.assert_close(pe, square[:gh, :gw])
    # first half depends only on the column, second half only on the row (MAE's layout)
    assert torch.equal(pe[0, :, : d // 2], pe[2, :, : d // 2])
    assert torch.equal(pe[:, 0, d // 2 :], pe[:, 4, d // 2 :])


@pytest.mark.parametrize("pe", [sincos_pos_embed_1d(50, 32), sincos_pos_embed_2d((6, 7), 32)])
def test_encodings_differ_across_positions(pe):
    distances = torch.cdist(pe, pe)
    off_diagonal = distances[~torch.eye(len(pe), dtype=torch.bool)]
    assert off_diagonal.min() > 1e-3


def test_sincos_dim_errors():
    with pytest.raises(ValueError, match="even dim, got dim=7"):
        sincos_pos_embed_1d(4, 7)
    with pytest.raises(ValueError, match="multiple of 4, got dim=6"):
        sincos_pos_embed_2d(4, 6)


@pytest.mark.parametrize(
    "old_grid,new_grid,prefix,mode",
    [
        ((4, 4), (6, 6), 1, "bicubic"),
        ((6, 6), (3, 3), 1, "bicubic"),
        ((4, 4), (3, 5), 0, "bilinear"),
        ((2, 3), (4, 6), 1, "bicubic"),
        ((8, 8), (4, 16), 1, "bicubic"),  # same 64 rows, another layout: still resampled
        ((4, 16), (8, 8), 0, "bicubic"),
    ],
)
def test_resample_matches_timm(old_grid, new_grid, prefix, mode):
    resample_abs_pos_embed = pytest.importorskip("timm.layers").resample_abs_pos_embed
    pos_embed = torch.randn(1, prefix + old_grid[0] * old_grid[1], 8)
    ours = resample_pos_embed(pos_embed, new_grid, old_grid, num_prefix_tokens=prefix, mode=mode)
    ref = resample_abs_pos_embed(
        pos_embed, list(new_grid), list(old_grid), num_prefix_tokens=prefix, interpolation=mode
    )
    assert ours.shape == (1, prefix + new_grid[0] * new_grid[1], 8)
    torch.testing.assert_close(ours, ref)
    if prefix:
        assert torch.equal(ours[:, :prefix], pos_embed[:, :prefix])


def test_resample_same_grid_is_identity_and_square_default():
    pos_embed = torch.randn(1, 17, 4)
    assert resample_pos_embed(pos_embed, 4) is pos_embed
    assert resample_pos_embed(pos_embed, (2, 2)).shape == (1, 5, 4)


def test_resample_errors():
    with pytest.raises(ValueError, match=r"not a square grid; pass old_grid=\(rows, cols\)"):
        resample_pos_embed(torch.randn(1, 1 + 6, 4), 4)
    with pytest.raises(ValueError, match=r"old_grid=\(2, 2\) does not fit pos_embed's 6 grid positions"):
        resample_pos_embed(torch.randn(1, 1 + 6, 4), 4, old_grid=2)


def timm_resample(pos_embed, new_grid, old_grid, prefix=1):
    resample_abs_pos_embed = pytest.importorskip("timm.layers").resample_abs_pos_embed
    return resample_abs_pos_embed(pos_embed, list(new_grid), list(old_grid), num_prefix_tokens=prefix)


def test_fit_pos_embed_compares_grids_not_token_counts():
    learned = torch.randn(1, 1 + 64, 8)
    # 64 rows are read as 8x8 (timm/torchvision checkpoints are square), so a 4x16 model resamples
    # them, with a warning that a 4x16 checkpoint would need source_grid
    with pytest.warns(UserWarning, match=r"read as a square 8x8 grid.*source_grid=\(4, 16\)"):
        fitted = fit_pos_embed(learned, (4, 16))
    torch.testing.assert_close(fitted, timm_resample(learned, (4, 16), (8, 8)), rtol=0, atol=0)
    assert not torch.equal(fitted, learned)
    # stated grids are taken as they are
    torch.testing.assert_close(fit_pos_embed(learned, (4, 16), source_grid=(8, 8)), fitted, rtol=0, atol=0)
    assert fit_pos_embed(learned, (4, 16), source_grid=(4, 16)) is learned
    torch.testing.assert_close(
        fit_pos_embed(learned, 8, source_grid=(4, 16)), timm_resample(learned, (8, 8), (4, 16)), rtol=0, atol=0
    )
    assert fit_pos_embed(learned, 8) is learned


def test_fit_pos_embed_reads_a_sincos_tables_grid_from_its_values():
    table = sincos_pos_embed_2d((4, 16), 8, num_prefix_tokens=1)[None]
    assert sincos_grid(table) == (4, 16) and sincos_grid(table[:, 1:], num_prefix_tokens=0) == (4, 16)
    assert sincos_grid(torch.randn(1, 65, 8)) is None and sincos_grid(torch.randn(1, 65, 6)) is None
    assert fit_pos_embed(table, (4, 16)) is table  # no warning: the grid is known
    torch.testing.assert_close(fit_pos_embed(table, 8), timm_resample(table, (8, 8), (4, 16)), rtol=0, atol=0)
    odd = sincos_pos_embed_2d((3, 5), 8, num_prefix_tokens=1)[None]  # 15 rows: not a square
    torch.testing.assert_close(fit_pos_embed(odd, (6, 10)), timm_resample(odd, (6, 10), (3, 5)), rtol=0, atol=0)


def test_fit_pos_embed_refuses_a_grid_it_cannot_know():
    learned = torch.randn(1, 1 + 32, 8)
    assert fit_pos_embed(learned, (4, 8)) is learned  # the model's own count: its own grid
    with pytest.raises(ValueError, match=r"32 grid positions, which is not a square.*pass source_grid=\(rows, cols\)"):
        fit_pos_embed(learned, (8, 8))
    torch.testing.assert_close(
        fit_pos_embed(learned, 8, source_grid=(4, 8)), timm_resample(learned, (8, 8), (4, 8)), rtol=0, atol=0
    )
    with pytest.raises(ValueError, match=r"source_grid=\(5, 5\) has 25 positions but .* has 32"):
        fit_pos_embed(learned, 8, source_grid=5)


@pytest.mark.parametrize("old,new", [((7, 7), (12, 12)), ((3, 3), (5, 5)), ((4, 4), (7, 7)), ((7, 7), (7, 12))])
def test_rel_pos_bias_table_grows_like_timm(old, new):
    timm_resize = pytest.importorskip("timm.layers").resize_rel_pos_bias_table
    table = torch.randn((2 * old[0] - 1) * (2 * old[1] - 1), 3)
    shape = ((2 * new[0] - 1) * (2 * new[1] - 1), 3)
    ours = resize_rel_pos_bias_table(table, new, old if old[0] != old[1] else None)
    torch.testing.assert_close(ours, timm_resize(table, new, shape, old_window_size=old), rtol=0, atol=0)
    assert ours.shape == shape


def test_rel_pos_bias_table_shrinks_to_the_offsets_the_window_sees():
    table = torch.arange(13 * 13, dtype=torch.float32)[:, None]  # window 7: offsets -6..6 on each axis
    offsets = table.reshape(13, 13)
    small = resize_rel_pos_bias_table(table, (4, 3))  # offsets -3..3 and -2..2
    torch.testing.assert_close(small, offsets[3:10, 4:9].reshape(-1, 1), rtol=0, atol=0)
    assert resize_rel_pos_bias_table(table, 7) is table
    with pytest.raises(ValueError, match="91 rows is not the .* square M x M window"):
        resize_rel_pos_bias_table(torch.randn(91, 2), 7)  # a 7x4 window's table
    with pytest.raises(ValueError, match=r"old_window=\(7, 7\) does not fit .* 91 rows"):
        resize_rel_pos_bias_table(torch.randn(91, 2), 4, old_window=7)
    assert resize_rel_pos_bias_table(torch.randn(91, 2), (4, 4), old_window=(7, 4)).shape == (49, 2)
