import pytest
import torch
from torch import nn

from research.layers import Block, CrossAttention, DecoderBlock

B, N, NK, DIM, HEADS = 2, 6, 4, 16, 2


@pytest.fixture
def x():
    return torch.randn(B, N, DIM, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def context():
    return torch.randn(B, NK, DIM, generator=torch.Generator().manual_seed(1))


def test_matches_timm_block_with_copied_weights(x):
    timm_block = pytest.importorskip("timm.models.vision_transformer").Block
    torch.manual_seed(0)
    ours = Block(DIM, HEADS, mlp_ratio=2.0).eval()
    ref = timm_block(DIM, HEADS, mlp_ratio=2.0, qkv_bias=True, norm_layer=nn.LayerNorm).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)  # names are timm's
    torch.testing.assert_close(ours(x), ref(x))
    bias = torch.randn(HEADS, N, N)
    torch.testing.assert_close(ours(x, attn_mask=bias), ref(x, attn_mask=bias))


def test_cross_attention_block_is_self_then_cross_then_mlp(x, context):
    torch.manual_seed(0)
    block = DecoderBlock(DIM, HEADS).eval()
    pad = torch.zeros(B, NK, dtype=torch.bool)
    pad[1, -1] = True
    out = block(x, context, context_padding_mask=pad)
    h = x + block.attn(block.norm1(x))  # causal self-attention
    h = h + block.cross_attn(block.norm_cross(h), context, key_padding_mask=pad)
    torch.testing.assert_close(out, h + block.mlp(block.norm2(h)))


def test_decoder_block_is_causal_and_ignores_padded_context(x, context):
    torch.manual_seed(0)
    block = DecoderBlock(DIM, HEADS).eval()
    pad = torch.zeros(B, NK, dtype=torch.bool)
    pad[0, -2:] = True
    perturbed_x, perturbed_context = x.clone(), context.clone()
    perturbed_x[:, 3:] += 1.0
    perturbed_context[pad] += 5.0
    out = block(x, context, context_padding_mask=pad)
    out_perturbed = block(perturbed_x, perturbed_context, context_padding_mask=pad)
    torch.testing.assert_close(out[:, :3], out_perturbed[:, :3])
    assert not torch.allclose(out[:, 3:], out_perturbed[:, 3:])


def test_key_padding_mask_reaches_self_attention(x):
    block = Block(DIM, HEADS).eval()
    pad = torch.zeros(B, N, dtype=torch.bool)
    pad[:, -1] = True
    changed = x.clone()
    changed[:, -1] += 3.0
    out, out_changed = block(x, key_padding_mask=pad), block(changed, key_padding_mask=pad)
    torch.testing.assert_close(out[:, :-1], out_changed[:, :-1])


def test_drop_path_drops_whole_branches_in_training(x):
    block = DecoderBlock(DIM, HEADS, drop_path=1.0).train()
    torch.testing.assert_close(block(x, torch.randn(B, NK, DIM)), x)  # every branch dropped: identity
    assert not torch.allclose(block.eval()(x, torch.randn(B, NK, DIM)), x)


def test_every_parameter_gets_a_gradient(x, context):
    block = DecoderBlock(DIM, HEADS)
    block(x, context).sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"
    assert isinstance(block.cross_attn, CrossAttention)


def test_context_errors(x, context):
    # An encoder block takes no context and a decoder block needs one: their signatures say so.
    with pytest.raises(TypeError):
        Block(DIM, HEADS)(x, context)
    with pytest.raises(TypeError):
        DecoderBlock(DIM, HEADS)(x)
    with pytest.raises(ValueError, match="dim=16 must be divisible by num_heads=3"):
        Block(DIM, 3)
    with pytest.raises(ValueError, match="dim=16 must be divisible by num_heads=3"):
        DecoderBlock(DIM, 3)
