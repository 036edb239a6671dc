import math

import pytest
import torch

from research.layers import Attention, CrossAttention

B, N, NK, DIM, HEADS = 2, 5, 7, 16, 4


def naive_attention(q, k, v, bias):
    """softmax(QK^T / sqrt(d) + bias) V, the textbook formula (Vaswani et al., Eq. 1)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias
    return scores.softmax(dim=-1) @ v


def reference(attn, x, context=None, bias=0.0):
    """Our Attention or CrossAttention written out by hand: slice fused weights, split heads with view/transpose."""
    context = x if context is None else context
    if isinstance(attn, CrossAttention):
        w_q, b_q = attn.q.weight, attn.q.bias
        (w_k, w_v), (b_k, b_v) = attn.kv.weight.chunk(2), attn.kv.bias.chunk(2)
    else:
        w_q, w_k, w_v = attn.qkv.weight.chunk(3)
        b_q, b_k, b_v = attn.qkv.bias.chunk(3)

    def heads(t):  # (B, n, C) -> (B, h, n, d)
        return t.view(t.shape[0], t.shape[1], HEADS, DIM // HEADS).transpose(1, 2)

    q, k, v = heads(x @ w_q.T + b_q), heads(context @ w_k.T + b_k), heads(context @ w_v.T + b_v)
    out = naive_attention(q, k, v, bias).transpose(1, 2).reshape(x.shape[0], x.shape[1], DIM)
    return attn.proj(out)


def causal_bias(n, nk):
    return torch.full((n, nk), float("-inf")).triu(1)  # key j > query i is blocked (top-left aligned)


def padding_bias(pad):
    return torch.zeros(pad.shape).masked_fill(pad, float("-inf"))[:, None, None, :]  # (B, 1, 1, Nk)


@pytest.fixture
def attn():
    torch.manual_seed(0)
    return Attention(DIM, HEADS).eval()


@pytest.fixture
def cross():
    torch.manual_seed(0)
    return CrossAttention(DIM, HEADS).eval()


@pytest.fixture
def x():
    return torch.randn(B, N, DIM, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def context():
    return torch.randn(B, NK, DIM, generator=torch.Generator().manual_seed(2))


def pad_mask(nk):
    pad = torch.zeros(B, nk, dtype=torch.bool)
    pad[0, -2:] = True  # sample 0 has two padding tokens at the end, sample 1 none
    return pad


def test_matches_timm_attention_with_copied_weights(attn, x):
    timm_attention = pytest.importorskip("timm.layers").Attention
    ref = timm_attention(DIM, num_heads=HEADS, qkv_bias=True).eval()
    ref.load_state_dict(attn.state_dict(), strict=True)
    torch.testing.assert_close(attn(x), ref(x))


def test_self_attention(attn, x):
    torch.testing.assert_close(attn(x), reference(attn, x))


def test_cross_attention(cross, x, context):
    torch.testing.assert_close(cross(x, context), reference(cross, x, context))


def test_causal(attn, x):
    torch.testing.assert_close(attn(x, is_causal=True), reference(attn, x, bias=causal_bias(N, N)))


def test_causal_cross_attention_is_top_left_aligned(cross, x, context):
    out = cross(x, context, is_causal=True)
    torch.testing.assert_close(out, reference(cross, x, context, bias=causal_bias(N, NK)))


def test_key_padding_mask(cross, x, context):
    pad = pad_mask(NK)
    out = cross(x, context, key_padding_mask=pad)
    torch.testing.assert_close(out, reference(cross, x, context, bias=padding_bias(pad)))


@pytest.mark.parametrize("bias_shape", [(N, N), (HEADS, N, N), (B, HEADS, N, N), (B, 1, 1, N)])
def test_float_bias(attn, x, bias_shape):
    bias = torch.randn(bias_shape)
    torch.testing.assert_close(attn(x, attn_mask=bias), reference(attn, x, bias=bias))


def test_bool_attn_mask_true_means_attend(attn, x):
    allowed = torch.rand(B, 1, N, N) > 0.4
    allowed |= torch.eye(N, dtype=torch.bool)  # every query keeps at least one key
    bias = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    torch.testing.assert_close(attn(x, attn_mask=allowed), reference(attn, x, bias=bias))


@pytest.mark.parametrize("mask_kind", ["float", "bool"])
def test_all_masks_combined(attn, x, mask_kind):
    pad = torch.zeros(B, N, dtype=torch.bool)
    pad[0, 2] = True  # a middle key, so causality alone cannot explain the result
    if mask_kind == "float":
        attn_mask = extra = torch.randn(HEADS, N, N)
    else:
        attn_mask = torch.rand(HEADS, N, N) > 0.4
        attn_mask[..., 0] = True  # key 0 stays visible: no query loses every key
        extra = torch.zeros(HEADS, N, N).masked_fill(~attn_mask, float("-inf"))
    out = attn(x, attn_mask=attn_mask, key_padding_mask=pad, is_causal=True)
    torch.testing.assert_close(out, reference(attn, x, bias=extra + causal_bias(N, N) + padding_bias(pad)))


def test_causal_outputs_ignore_the_future(attn, x):
    t = 2
    perturbed = x.clone()
    perturbed[:, t + 1 :] += torch.randn_like(perturbed[:, t + 1 :])
    out, out_perturbed = attn(x, is_causal=True), attn(perturbed, is_causal=True)
    torch.testing.assert_close(out[:, : t + 1], out_perturbed[:, : t + 1])
    assert not torch.allclose(out[:, t + 1 :], out_perturbed[:, t + 1 :])


def test_padded_keys_do_not_affect_outputs(cross, x, context):
    pad = pad_mask(NK)
    changed = context.clone()
    changed[pad] = torch.randn_like(changed[pad]) * 10
    torch.testing.assert_close(cross(x, context, key_padding_mask=pad), cross(x, changed, key_padding_mask=pad))
    # ...and sample 0 sees exactly what it would see without the padding tokens at all.
    torch.testing.assert_close(cross(x, context, key_padding_mask=pad)[:1], cross(x[:1], context[:1, :-2]))


def test_cross_attention_trains_every_projection(cross, x, context):
    cross(x, context).sum().backward()
    grad_q, (grad_k, grad_v) = cross.q.weight.grad, cross.kv.weight.grad.chunk(2)
    assert all(g.abs().sum() > 0 for g in (grad_q, grad_k, grad_v))


def test_cross_attention_reads_a_checkpoint_with_one_fused_qkv(cross, x, context):
    # Translation checkpoints saved before q and kv were split hold one (3C, C) qkv: rows q, k, v.
    fused = {k: v for k, v in cross.state_dict().items() if not k.startswith(("q.", "kv."))}
    fused["qkv.weight"] = torch.cat([cross.q.weight, cross.kv.weight]).detach()
    fused["qkv.bias"] = torch.cat([cross.q.bias, cross.kv.bias]).detach()
    loaded = CrossAttention(DIM, HEADS).eval()
    loaded.load_state_dict(fused, strict=True)
    torch.testing.assert_close(loaded(x, context), cross(x, context))


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    attn = Attention(DIM, HEADS, attn_drop=0.5)
    x = torch.randn(B, N, DIM)
    assert not torch.allclose(attn(x), attn(x))
    attn.eval()
    torch.testing.assert_close(attn(x), attn(x))


@pytest.mark.parametrize("cls", [Attention, CrossAttention])
def test_dim_not_divisible_by_heads(cls):
    with pytest.raises(ValueError, match="dim=10 must be divisible by num_heads=4"):
        cls(10, 4)


@pytest.mark.parametrize("shape", [(N, N + 1), (3, HEADS, N, N), (1, 1, 1, N, N)])
def test_bad_attn_mask_shape(attn, x, shape):
    with pytest.raises(ValueError, match=r"does not broadcast to \(B, h, N, Nk\)"):
        attn(x, attn_mask=torch.zeros(shape))


@pytest.mark.parametrize("mask", [torch.zeros(B, N + 1, dtype=torch.bool), torch.zeros(B, N)])
def test_bad_key_padding_mask(attn, x, mask):
    with pytest.raises(ValueError, match=r"key_padding_mask must be bool of shape \(B, Nk\) = \(2, 5\)"):
        attn(x, key_padding_mask=mask)
