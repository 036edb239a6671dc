"""Swin's Table 4 ablations (Liu et al. 2021) as model options: no shifting, absolute / no position.

Each option is checked against the default model with the same weights, changed by hand the way the option
claims to change it; the defaults themselves are pinned to timm by tests/models/test_swin.py.
"""

import re

import pytest
import torch

from research.models.swin import SwinTransformer

TINY = dict(img_size=16, patch_size=2, in_chans=1, embed_dim=8, depths=(2, 2), num_heads=(1, 2), window_size=4,
            num_classes=5)


def images(size=16):
    return torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))


def build(**options) -> SwinTransformer:
    torch.manual_seed(0)
    return SwinTransformer(**TINY, **options).eval()


def test_without_shifting_every_block_is_w_msa():
    default, unshifted = build(), build(shift_windows=False)
    assert unshifted.state_dict().keys() == default.state_dict().keys()
    unshifted.load_state_dict(default.state_dict())
    assert [b.attn.shifted for s in unshifted.layers for b in s.blocks] == [False] * 4
    for block in default.layers[0].blocks:  # the one stage whose 8x8 map has several windows to shift
        block.attn.shifted = False
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(unshifted(x), default(x))
        assert not torch.allclose(unshifted(x), build()(x))


def test_without_the_relative_bias_the_model_is_the_default_with_zero_bias_tables():
    default, plain = build(), build(use_rel_pos_bias=False)
    tables = {k for k in default.state_dict() if k.endswith("relative_position_bias_table")}
    assert len(tables) == 4 and plain.state_dict().keys() == default.state_dict().keys() - tables
    plain.load_state_dict({k: v for k, v in default.state_dict().items() if k not in tables})
    with torch.no_grad():
        for key in tables:
            default.get_parameter(key).zero_()
        torch.testing.assert_close(plain(images()), default(images()))


def test_absolute_position_embedding_is_added_after_the_patch_norm_and_trains():
    default, ape = build(), build(ape=True)
    assert ape.absolute_pos_embed.shape == (1, 64, 8)  # (1, L, C) as the official code
    ape.load_state_dict({**default.state_dict(), "absolute_pos_embed": torch.zeros(1, 64, 8)})
    with torch.no_grad():
        torch.testing.assert_close(ape(images()), default(images()))  # a zero embedding changes nothing
    ape.train()
    ape(images()).sum().backward()
    assert ape.absolute_pos_embed.grad is not None and ape.absolute_pos_embed.grad.abs().sum() > 0
    assert re.match(ape.group_matcher()["stem"], "absolute_pos_embed")  # layer-wise lr decay: with the stem


def test_absolute_position_embedding_fixes_the_input_size():
    with pytest.raises(ValueError, match=r"ape=True\) takes 16x16 images, got 24x24"):
        build(ape=True)(images(24))
    assert build()(images(24)).shape == (2, 5)  # relative positions take any size
