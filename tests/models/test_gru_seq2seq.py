import pytest
import torch

from research.models import build_model, create_model
from research.models.gru_seq2seq import GRUSeq2Seq

V, PAD = 30, 0


def tiny(**kwargs) -> GRUSeq2Seq:
    return build_model({"name": "gru_attention_tiny", "vocab_size": V, "pad_id": PAD, **kwargs})


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    src = torch.randint(1, V, (3, 7), generator=g)
    src[1, 4:] = PAD  # a shorter sentence, right-padded
    return src, torch.randint(1, V, (3, 6), generator=g)


def test_paper_widths():
    with torch.device("meta"):
        model = create_model("gru_attention", vocab_size=100)
    assert model.src_embed.embedding_dim == 620 and model.encoder.hidden_size == 1000
    assert model.encoder.bidirectional and model.attn_key.out_features == 1000 and model.output.in_features == 500
    assert model.max_positions is None and model.vocab_size == 100 and model.pad_id == 0


def test_forward_shape_and_every_parameter_gets_a_gradient(batch):
    model = tiny()
    logits = model(*batch)
    assert logits.shape == (3, 6, V)
    logits.logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"no gradient for {missing}"


def test_target_token_t_plus_1_does_not_change_outputs_up_to_t(batch):
    model = tiny().eval()
    src, tgt = batch
    changed = tgt.clone()
    changed[:, 3] = (changed[:, 3] + 1) % (V - 1) + 1
    before, after = model(src, tgt), model(src, changed)
    torch.testing.assert_close(before[:, :3], after[:, :3])
    assert not torch.allclose(before[:, 3], after[:, 3])


def test_padding_does_not_change_the_outputs_of_real_tokens(batch):
    model = tiny().eval()
    src, tgt = batch
    padded_src = torch.cat([src, torch.full((3, 4), PAD)], dim=1)
    padded_tgt = torch.cat([tgt, torch.full((3, 2), PAD)], dim=1)
    torch.testing.assert_close(model(padded_src, padded_tgt)[:, :6], model(src, tgt))
    # the padding really is removed: the same positions holding a real token change the outputs
    unmasked = padded_src.masked_fill(padded_src == PAD, 5)
    assert not torch.allclose(model(unmasked, tgt), model(src, tgt))


def test_attention_reads_the_source(batch):
    model = tiny().eval()
    src, tgt = batch
    other = src.clone()
    other[:, 1] = (other[:, 1] + 1) % (V - 1) + 1
    assert not torch.allclose(model(src, tgt)[:, -1], model(other, tgt)[:, -1])


@pytest.mark.parametrize("chunks", [[1] * 6, [2, 4]])
def test_cached_decoding_matches_full_decoding(batch, chunks):
    model = tiny().eval()
    src, tgt = batch
    memory = model.encode(src)
    full, final_state = model.decode(tgt, memory)
    cache, parts, start = None, [], 0
    for n in chunks:
        logits, cache = model.decode(tgt[:, start : start + n], memory, cache)
        parts.append(logits)
        start += n
    torch.testing.assert_close(torch.cat(parts, dim=1), full)
    torch.testing.assert_close(cache, final_state)


def test_reordered_state_and_memory_decode_like_a_reordered_batch(batch):
    model = tiny().eval()
    src, tgt = batch
    order = torch.tensor([1, 1, 0])
    memory = model.encode(src)
    _, cache = model.decode(tgt[:, :3], memory)
    logits, _ = model.decode(tgt[order, 3:], model.select_memory(memory, order), model.reorder_cache(cache, order))
    torch.testing.assert_close(logits, model(src[order], tgt[order])[:, 3:])


def test_no_length_limit():
    model = tiny().eval()
    assert model(torch.ones(1, 300, dtype=torch.long), torch.ones(1, 2, dtype=torch.long)).shape == (1, 2, V)


def test_bad_pad_id_raises():
    with pytest.raises(ValueError, match="pad_id=-1 is not a token id"):
        create_model("gru_attention_tiny", vocab_size=10, pad_id=-1)
