import math

import pytest
import torch
from torch import nn

from research.layers import sincos_pos_embed_1d
from research.models import build_model, create_model, import_weights
from research.models.transformer import Transformer

V, PAD = 40, 0


def tiny(**kwargs) -> Transformer:
    return build_model({"name": "transformer_tiny", "vocab_size": V, "pad_id": PAD, "max_positions": 32, **kwargs})


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, V, (3, 7), generator=g), torch.randint(1, V, (3, 6), generator=g)


@pytest.mark.parametrize(
    ("name", "paper", "ours"), [("transformer_base", 65e6, 63_082_496), ("transformer_big", 213e6, 214_245_376)]
)
def test_parameter_count_with_the_papers_37k_vocabulary(name, paper, ours):
    with torch.device("meta"):
        model = create_model(name, vocab_size=37000)
    count = sum(p.numel() for p in model.parameters())
    assert count == ours and abs(count - paper) <= 0.05 * paper


@pytest.mark.parametrize(
    ("name", "dim", "depth", "heads", "ffn", "dropout"),
    [
        ("transformer_base", 512, 6, 8, 2048, 0.1),
        ("transformer_big", 1024, 6, 16, 4096, 0.3),
        ("transformer_small", 256, 3, 4, 1024, 0.1),
        ("transformer_tiny", 32, 1, 2, 64, 0.1),
    ],
)
def test_factories_pin_the_table_3_sizes(name, dim, depth, heads, ffn, dropout):
    with torch.device("meta"):
        model = create_model(name, vocab_size=100)
    block = model.decoder[0]
    assert (model.dim, len(model.encoder), len(model.decoder)) == (dim, depth, depth)
    assert block.attn.num_heads == heads and block.mlp.fc1.out_features == ffn and model.drop.p == dropout
    assert isinstance(block.mlp.act, nn.ReLU) and not block.norm_first


@pytest.mark.parametrize("norm_first", [False, True])
def test_forward_shape_and_every_parameter_gets_a_gradient(batch, norm_first):
    model = tiny(norm_first=norm_first)
    logits = model(*batch)
    assert logits.shape == (3, 6, V) and model.max_positions == 32
    logits.logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"no gradient for {missing}"


def test_source_target_and_output_embeddings_are_one_scaled_matrix(batch):
    model = tiny().eval()
    assert [n for n, p in model.named_parameters() if p.shape == (V, model.dim)] == ["embed.weight"]
    src, tgt = batch
    expected = model.embed(src) * math.sqrt(model.dim) + model.pos_embed[: src.shape[1]]
    torch.testing.assert_close(model._embed(src), expected)
    hidden = []
    model.decoder_norm.register_forward_hook(lambda module, args, out: hidden.append(out))
    logits = model(src, tgt)
    torch.testing.assert_close(logits, hidden[0] @ model.embed.weight.T)


@pytest.mark.parametrize("norm_first", [False, True])
def test_target_token_t_plus_1_does_not_change_outputs_up_to_t(batch, norm_first):
    model = tiny(norm_first=norm_first).eval()
    src, tgt = batch
    t = 2
    changed = tgt.clone()
    changed[:, t + 1] = (changed[:, t + 1] + 1) % (V - 1) + 1
    before, after = model(src, tgt), model(src, changed)
    torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1])
    assert not torch.allclose(before[:, t + 1], after[:, t + 1])


@pytest.mark.parametrize("norm_first", [False, True])
def test_padding_does_not_change_the_outputs_of_real_tokens(batch, norm_first):
    model = tiny(norm_first=norm_first).eval()
    src, tgt = batch
    src[1, 5:] = PAD  # a shorter sentence in the batch
    padded_src = torch.cat([src, torch.full((3, 4), PAD)], dim=1)
    padded_tgt = torch.cat([tgt, torch.full((3, 3), PAD)], dim=1)
    torch.testing.assert_close(model(padded_src, padded_tgt)[:, : tgt.shape[1]], model(src, tgt))
    # and the padding mask is really applied: the same tokens without the pad id do change the outputs
    unmasked = padded_src.masked_fill(padded_src == PAD, 5)
    assert not torch.allclose(model(unmasked, tgt), model(src, tgt))


def test_positional_encodings_differ_across_positions():
    model = tiny().eval()
    pe = model.pos_embed
    assert pe.shape == (32, model.dim)
    distances = torch.cdist(pe, pe) + torch.eye(32)
    assert distances.min() > 1e-3  # every pair of positions is told apart
    same_token = torch.full((1, 5), 7)
    states = model.encode(same_token).states[0]
    assert not torch.allclose(states[0], states[1])


def test_sequences_longer_than_max_positions_raise(batch):
    model = tiny()
    src, tgt = batch
    with pytest.raises(ValueError, match=r"source has 33 positions .* max_positions=32"):
        model.encode(torch.ones(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target has 33 positions .* max_positions=32"):
        model(src, torch.ones(1, 33, dtype=torch.long).expand(3, -1))
    memory = model.encode(src)
    _, cache = model.decode(torch.ones(3, 32, dtype=torch.long), memory)
    with pytest.raises(ValueError, match=r"target has 33 positions"):
        model.decode(torch.ones(3, 1, dtype=torch.long), memory, cache)


def test_bad_pad_id_raises():
    with pytest.raises(ValueError, match="pad_id=40 is not a token id"):
        create_model("transformer_tiny", vocab_size=40, pad_id=40)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("chunks", [[1, 1, 1, 1, 1, 1], [2, 3, 1], [6]])
def test_incremental_decoding_with_a_cache_matches_full_decoding(batch, norm_first, chunks):
    model = tiny(norm_first=norm_first).eval()
    src, tgt = batch
    memory = model.encode(src)
    full, _ = model.decode(tgt, memory)
    cache, parts, start = None, [], 0
    for n in chunks:
        logits, cache = model.decode(tgt[:, start : start + n], memory, cache)
        parts.append(logits)
        start += n
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 6 and len(cache.self_attn[0]) == 6 and len(cache.cross_attn[0]) == 7


def test_reordered_cache_and_memory_decode_like_a_reordered_batch(batch):
    model = tiny().eval()
    src, tgt = batch
    order = torch.tensor([2, 2, 0])
    memory = model.encode(src)
    _, cache = model.decode(tgt[:, :4], memory)
    cache = model.reorder_cache(cache, order)
    logits, _ = model.decode(tgt[order, 4:], model.select_memory(memory, order), cache)
    torch.testing.assert_close(logits, model(src[order], tgt[order])[:, 4:], rtol=1e-5, atol=1e-5)


def test_weights_load_at_another_max_length_with_the_sinusoids_recomputed():
    # The table is a fixed function of the position (Sec. 3.5), kept out of the state_dict.
    source = create_model("transformer_tiny", vocab_size=40, max_positions=64)
    target = create_model("transformer_tiny", vocab_size=40, max_positions=16)
    assert not any("pos_embed" in k for k in source.state_dict())
    assert import_weights(target, source.state_dict()) == "research"
    torch.testing.assert_close(target.pos_embed, sincos_pos_embed_1d(16, target.pos_embed.shape[1]), rtol=0, atol=0)
