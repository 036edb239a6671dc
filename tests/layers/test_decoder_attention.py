import torch

from research.layers import Attention, CausalSelfAttention, CrossAttention, KVCache


def test_attention_kv_cache_self_and_cross():
    attn = CausalSelfAttention(16, 2).eval()
    x, context = torch.randn(2, 5, 16), torch.randn(2, 4, 16)
    cache = KVCache()
    steps = [attn(x[:, i : i + 1], cache=cache) for i in range(5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), attn(x), rtol=1e-5, atol=1e-5)
    cross_attn = CrossAttention(16, 2).eval()
    cross = KVCache()
    first = cross_attn(x[:, :2], context, cache=cross)
    # a filled cross-attention cache is used instead of the context it was computed from
    torch.testing.assert_close(cross_attn(x[:, :2], torch.zeros_like(context), cache=cross), first)
    assert len(cross) == 4 and len(cross.index_select(torch.tensor([1]))) == 4


def test_causal_self_attention_is_attention_with_is_causal():
    torch.manual_seed(0)
    causal, x = CausalSelfAttention(16, 2).eval(), torch.randn(2, 5, 16)
    plain = Attention(16, 2).eval()
    plain.load_state_dict(causal.state_dict(), strict=True)  # the same parameters, qkv and proj
    torch.testing.assert_close(causal(x), plain(x, is_causal=True))


def test_chunks_after_a_cache_see_every_cached_token_and_the_earlier_new_ones():
    torch.manual_seed(0)
    attn, x = CausalSelfAttention(16, 2).eval(), torch.randn(2, 6, 16)
    cache = KVCache()
    parts = [attn(x[:, :2], cache=cache), attn(x[:, 2:5], cache=cache), attn(x[:, 5:], cache=cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), attn(x), rtol=1e-5, atol=1e-5)
    assert len(cache) == 6
