import itertools

import pytest
import torch

from research.layers import (
    WindowAttention,
    cyclic_shift_mask,
    relative_position_index,
    window_partition,
    window_reverse,
)

DIM, HEADS = 8, 2


def loop_shift_mask(height, width, window, shift):
    """The SW-MSA mask from its definition, one token pair at a time (slow reference).

    After rolling the map by -shift, a window token at rolled position p came from p + shift (mod
    the side). Two tokens of one window were neighbours in the unrolled map iff the roll did not
    wrap either of them around differently: their rolled offset equals their original offset.
    """
    (mh, mw), (sh, sw) = window, shift
    n = mh * mw
    masks = []
    for wy, wx in itertools.product(range(height // mh), range(width // mw)):
        mask = torch.zeros(n, n)
        for i, j in itertools.product(range(n), range(n)):
            (yi, xi), (yj, xj) = (wy * mh + i // mw, wx * mw + i % mw), (wy * mh + j // mw, wx * mw + j % mw)
            src_i, src_j = ((yi + sh) % height, (xi + sw) % width), ((yj + sh) % height, (xj + sw) % width)
            if (src_i[0] - src_j[0], src_i[1] - src_j[1]) != (yi - yj, xi - xj):
                mask[i, j] = float("-inf")
        masks.append(mask)
    return torch.stack(masks)


@pytest.mark.parametrize("shape,window", [((2, 6, 8, 5), 2), ((1, 6, 8, 3), (3, 4)), ((3, 4, 4, 2), 4)])
def test_window_reverse_inverts_window_partition(shape, window):
    x = torch.randn(shape)
    windows = window_partition(x, window)
    mh, mw = (window, window) if isinstance(window, int) else window
    assert windows.shape == (shape[0] * (shape[1] // mh) * (shape[2] // mw), mh * mw, shape[3])
    assert torch.equal(window_reverse(windows, window, shape[1], shape[2]), x)


def test_window_partition_order():
    x = torch.arange(2 * 4 * 6).view(2, 4, 6, 1)
    windows = window_partition(x, (2, 3))  # 2 x 2 windows per image
    assert torch.equal(windows[1, :, 0], x[0, :2, 3:].flatten())  # image 0, top-right window, row-major
    assert torch.equal(windows[6, :, 0], x[1, 2:, :3].flatten())  # image 1, bottom-left window


def test_window_partition_refuses_untiled_maps():
    with pytest.raises(ValueError, match="multiples of the window 4x4.*pad the map first"):
        window_partition(torch.zeros(1, 6, 8, 2), 4)
    with pytest.raises(ValueError, match="window_reverse needs"):
        window_reverse(torch.zeros(4, 16, 2), 4, 6, 8)


@pytest.mark.parametrize(
    "height,width,window,shift",
    [
        (8, 8, (4, 4), (2, 2)),
        (14, 14, (7, 7), (3, 3)),
        (6, 12, (3, 4), (1, 2)),
        (8, 12, (4, 4), (0, 2)),
        (4, 4, (4, 4), (2, 2)),
    ],
)
def test_shift_mask_equals_the_loop_built_mask(height, width, window, shift):
    assert torch.equal(cyclic_shift_mask(height, width, window, shift), loop_shift_mask(height, width, window, shift))


def test_shift_mask_blocks_only_the_last_window_row_and_column():
    mask = cyclic_shift_mask(12, 12, 4, 2)  # 3 x 3 windows
    blocked = (mask == float("-inf")).flatten(1).any(1).view(3, 3)
    assert blocked.tolist() == [[False, False, True], [False, False, True], [True, True, True]]
    assert (mask.diagonal(dim1=1, dim2=2) == 0).all()  # every token may attend to itself
    assert torch.equal(cyclic_shift_mask(8, 8, 4, 0), torch.zeros(4, 16, 16))


def test_shift_mask_refuses_a_shift_as_large_as_the_window():
    with pytest.raises(ValueError, match=r"shifts in \[0, window\)"):
        cyclic_shift_mask(8, 8, 4, 4)


@pytest.mark.parametrize("window", [(2, 2), (3, 4), (7, 7)])
def test_relative_position_index_equals_timm(window):
    timm_swin = pytest.importorskip("timm.models.swin_transformer")
    assert torch.equal(relative_position_index(window), timm_swin.get_relative_position_index(*window))


def test_relative_position_index_is_one_row_per_offset():
    mh, mw = 3, 4
    index = relative_position_index((mh, mw))
    ys, xs = torch.arange(mh).repeat_interleave(mw), torch.arange(mw).repeat(mh)
    offsets = {}
    for i, j in itertools.product(range(mh * mw), repeat=2):
        offsets.setdefault(int(index[i, j]), set()).add((int(ys[i] - ys[j]), int(xs[i] - xs[j])))
    assert all(len(o) == 1 for o in offsets.values())  # a row means one offset ...
    assert len(offsets) == (2 * mh - 1) * (2 * mw - 1)  # ... and every offset has its own row


def test_a_smaller_window_reads_the_rows_of_its_offsets_in_a_larger_table():
    small, large = relative_position_index((2, 3), (4, 5)), relative_position_index((4, 5))
    # token (y, x) of the small window is token (y, x) of the large one: same offsets, same rows
    position = torch.tensor([y * 5 + x for y in range(2) for x in range(3)])
    assert torch.equal(small, large[position][:, position])
    with pytest.raises(ValueError, match="does not fit a bias table built for 4x5"):
        relative_position_index((5, 5), (4, 5))


def attention(window=4, shifted=True, seed=0):
    torch.manual_seed(seed)
    attn = WindowAttention(DIM, HEADS, window_size=window, shifted=shifted).eval()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()  # a visible bias
    return attn


def dependencies(attn, height, width):
    """Boolean (H*W, H*W): output token i changes when input token j is perturbed."""
    x = torch.randn(1, height, width, DIM, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = attn(x)
        deps = torch.zeros(height * width, height * width, dtype=torch.bool)
        for j in range(height * width):
            y = x.clone()
            y[0, j // width, j % width] += 1.0
            deps[:, j] = (attn(y) - base).abs().amax(-1).flatten() > 0
    return deps


def test_sw_msa_token_sees_its_own_sub_window_only():
    attn = attention()
    x = torch.randn(1, 8, 8, DIM)
    with torch.no_grad():
        base = attn(x)[0, 7, 7]  # the bottom-right token; rolled by -2 it shares a window with (0, 0)

        def out_after_perturbing(y, x_):
            z = x.clone()
            z[0, y, x_] += 1.0
            return attn(z)[0, 7, 7]

        torch.testing.assert_close(out_after_perturbing(0, 0), base, rtol=0, atol=0)  # other sub-window
        torch.testing.assert_close(out_after_perturbing(7, 0), base, rtol=0, atol=0)  # other sub-window
        torch.testing.assert_close(out_after_perturbing(3, 3), base, rtol=0, atol=0)  # other window
        assert not torch.allclose(out_after_perturbing(6, 6), base)  # own sub-window


def test_sw_msa_dependencies_are_shifted_window_and_same_region():
    height = width = 8
    deps = dependencies(attention(), height, width)
    mask = loop_shift_mask(height, width, (4, 4), (2, 2))
    expected = torch.zeros_like(deps)
    for i, j in itertools.product(range(64), repeat=2):
        (yi, xi), (yj, xj) = divmod(i, 8), divmod(j, 8)
        ri, rj = ((yi - 2) % 8, (xi - 2) % 8), ((yj - 2) % 8, (xj - 2) % 8)  # positions after the roll
        same_window = (ri[0] // 4, ri[1] // 4) == (rj[0] // 4, rj[1] // 4)
        if same_window:
            w = (ri[0] // 4) * 2 + ri[1] // 4
            a, b = (ri[0] % 4) * 4 + ri[1] % 4, (rj[0] % 4) * 4 + rj[1] % 4
            expected[i, j] = mask[w, a, b] == 0
    assert torch.equal(deps, expected)


def test_w_msa_on_a_padded_map_stays_in_its_window():
    # 6x10 with 4x4 windows: padded to 8x12, cropped back; token (5, 9) sits in rows 4-5, cols 8-9
    attn = attention(shifted=False)
    x = torch.randn(2, 6, 10, DIM)
    assert attn(x).shape == x.shape
    deps = dependencies(attn, 6, 10).view(6, 10, 6, 10)
    expected = torch.zeros(6, 10, dtype=torch.bool)
    expected[4:, 8:] = True
    assert torch.equal(deps[5, 9], expected)


def test_a_map_no_larger_than_the_window_is_one_window_without_shift():
    attn = attention(window=4, shifted=True)
    assert attn.window_and_shift(3, 3) == ((3, 3), (0, 0))
    assert attn.window_and_shift(4, 9) == ((4, 4), (0, 2))
    assert dependencies(attn, 3, 3).all()  # global attention over the 3x3 map


def test_matches_timm_window_attention_inside_one_window():
    timm_swin = pytest.importorskip("timm.models.swin_transformer")
    ours = attention(window=(3, 4), shifted=False)
    ref = timm_swin.WindowAttention(DIM, HEADS, window_size=(3, 4)).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(5, 3, 4, DIM)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).flatten(1, 2), ref(x.flatten(1, 2)), atol=1e-5, rtol=1e-5)


def test_buffers_are_cached_per_size_and_never_saved():
    attn = attention()
    saved = {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "relative_position_bias_table"}
    assert set(attn.state_dict()) == saved
    x8, x12 = torch.randn(1, 8, 8, DIM), torch.randn(1, 12, 12, DIM)
    with torch.no_grad():
        first = attn(x8)
        index, mask = attn.relative_position_index, attn.attn_mask
        attn(x8)
        assert attn.relative_position_index is index and attn.attn_mask is mask  # reused, not rebuilt
        attn(x12)
        assert attn.attn_mask.shape == (9, 16, 16)
        torch.testing.assert_close(attn(x8), first, rtol=0, atol=0)


def test_gradients_reach_the_bias_table_and_the_input():
    attn = attention().train()
    x = torch.randn(2, 8, 8, DIM, requires_grad=True)
    attn(x).square().sum().backward()
    assert attn.relative_position_bias_table.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
