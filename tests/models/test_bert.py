import pytest
import torch

from research.layers import Block
from research.models import create_model, import_weights, list_models
from research.models.bert import Bert, BertForMaskedLM

TINY = dict(vocab_size=50, embed_dim=16, depth=2, num_heads=2, max_positions=24)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (3, 12), generator=g)
    segments = torch.zeros_like(ids)
    segments[:, 6:] = 1
    padding = torch.zeros_like(ids, dtype=torch.bool)
    padding[1, 8:] = True
    return ids, segments, padding


@pytest.mark.parametrize(("name", "count"), [("bert_base", 109_482_240), ("bert_large", 335_141_888)])
def test_encoder_with_pooler_has_the_papers_parameter_count(name, count):
    with torch.device("meta"):  # no memory, no init time
        model = create_model(name, next_sentence_head=True)
    # Hugging Face's BertModel (embeddings, encoder, pooler) with the 30,522-token uncased vocabulary
    assert sum(p.numel() for p in model.bert.parameters()) == count


@pytest.mark.parametrize("name", [n for n in list_models("bert_*") if not n.endswith("_classifier")])  # MLM models
def test_every_bert_forwards_and_backwards(name):
    model = create_model(name, vocab_size=50, depth=1, max_positions=16, next_sentence_head=True)
    ids = torch.randint(0, 50, (2, 9))
    hidden = model.forward_features(ids)
    logits = model(ids)
    assert logits.shape == (2, 9, 50) and hidden.shape == (2, 9, model.bert.embed_dim)
    (logits.sum() + model.next_sentence_logits(hidden).sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_huggingface_mlm_weights_give_the_same_logits(batch):
    transformers = pytest.importorskip("transformers")
    ids, segments, padding = batch
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=24,
    )
    torch.manual_seed(1)
    reference = transformers.BertForMaskedLM(config).eval()
    ours = BertForMaskedLM(**TINY).eval()
    assert import_weights(ours, reference.state_dict()) == "huggingface"  # strict=True inside
    with torch.no_grad():
        expected = reference(input_ids=ids, token_type_ids=segments, attention_mask=(~padding).long()).logits
        got = ours(ids, segments, padding)
    real = ~padding
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=0)


def test_huggingface_pretraining_and_encoder_weights(batch):
    transformers = pytest.importorskip("transformers")
    ids, segments, padding = batch
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=24,
    )
    torch.manual_seed(2)
    reference = transformers.BertForPreTraining(config).eval()
    ours = BertForMaskedLM(**TINY, next_sentence_head=True).eval()
    import_weights(ours, reference.state_dict())
    with torch.no_grad():
        out = reference(input_ids=ids, token_type_ids=segments, attention_mask=(~padding).long())
        hidden = ours.forward_features(ids, segments, padding)
        torch.testing.assert_close(ours.next_sentence_logits(hidden), out.seq_relationship_logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(
            ours.mlm_logits(hidden)[~padding], out.prediction_logits[~padding], atol=1e-4, rtol=0
        )
    encoder = Bert(**TINY).eval()
    import_weights(encoder, reference.bert.state_dict())
    with torch.no_grad():
        expected = reference.bert(input_ids=ids, token_type_ids=segments, attention_mask=(~padding).long())
        torch.testing.assert_close(
            encoder.pool(encoder(ids, segments, padding)), expected.pooler_output, atol=1e-4, rtol=0
        )


def test_untied_or_mismatched_checkpoints_are_clear_errors():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=24,
    )
    state = transformers.BertForMaskedLM(config).state_dict()
    with pytest.raises(
        ValueError, match=r"shape mismatch .*word_embeddings.weight: checkpoint \(50, 16\) vs model \(60, 16\)"
    ):
        import_weights(BertForMaskedLM(**TINY | {"vocab_size": 60}), state)
    state["cls.predictions.decoder.weight"] = state["cls.predictions.decoder.weight"] + 1
    with pytest.raises(ValueError, match="not tied"):
        import_weights(BertForMaskedLM(**TINY), state)


def test_padding_does_not_change_real_tokens(batch):
    ids, segments, _ = batch
    model = BertForMaskedLM(**TINY).eval()
    short = model.forward_features(ids[:, :7], segments[:, :7])
    padded_ids = torch.cat([ids[:, :7], torch.full((3, 5), 0)], dim=1)
    padding = torch.zeros_like(padded_ids, dtype=torch.bool)
    padding[:, 7:] = True
    padded = model.forward_features(padded_ids, segments, padding)
    torch.testing.assert_close(padded[:, :7], short, atol=1e-5, rtol=0)
    torch.testing.assert_close(model(padded_ids, segments, padding)[:, :7], model.mlm_logits(short))
    unmasked = model.forward_features(padded_ids, segments)  # without the mask the pad tokens leak in
    assert (unmasked[:, :7] - short).abs().max() > 1e-3  # 100x the tolerance above


def test_positions_and_segments_are_embedded():
    model = Bert(**TINY).eval()
    same_token = torch.full((1, 6), 7)
    x = model.embeddings(same_token)
    assert not torch.allclose(x[:, 0], x[:, 1])
    assert not torch.allclose(x, model.embeddings(same_token, torch.ones_like(same_token)))
    torch.testing.assert_close(x, model.embeddings(same_token, torch.zeros_like(same_token)))


def test_blocks_are_post_norm():
    block = Block(16, 2, norm_first=False).eval()
    x = torch.randn(2, 5, 16)
    h = block.norm1(x + block.attn(x))
    torch.testing.assert_close(block(x), block.norm2(h + block.mlp(h)))
    assert all(not b.norm_first for b in Bert(**TINY).blocks)


def test_decoder_is_tied_to_the_token_embeddings(batch):
    ids, segments, padding = batch
    model = BertForMaskedLM(**TINY)
    assert "head.decoder.weight" not in model.state_dict()
    model(ids, segments, padding).sum().backward()
    embedding = model.bert.embeddings.word_embeddings.weight
    assert embedding.grad[ids.unique()].abs().sum() > 0
    unused = torch.ones(50, dtype=torch.bool)
    unused[ids.unique()] = False
    assert embedding.grad[unused].abs().sum() > 0  # only the tied decoder reaches tokens absent from the input
    assert (
        sum(p.numel() for p in model.parameters())
        == sum(p.numel() for p in model.bert.parameters()) + 16 * 16 + 16 + 2 * 16 + 50
    )


def test_sequence_longer_than_max_positions_is_a_clear_error():
    model = BertForMaskedLM(**TINY)
    with pytest.raises(ValueError, match="sequence of 25 tokens: the model has 24 positions"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match="no next-sentence head"):
        model.next_sentence_logits(torch.zeros(1, 3, 16))
    with pytest.raises(ValueError, match="do not pass pooler"):
        BertForMaskedLM(**TINY, pooler=True)


def test_native_state_dict_round_trip():
    a, b = BertForMaskedLM(**TINY), BertForMaskedLM(**TINY)
    assert import_weights(b, a.state_dict()) == "research"
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)


def test_original_hub_layernorm_names_load():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=24,
    )
    state = transformers.BertForMaskedLM(config).state_dict()
    old_names = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in state.items()
    }
    a, b = BertForMaskedLM(**TINY), BertForMaskedLM(**TINY)
    import_weights(a, state)
    import_weights(b, old_names)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)


def test_fewer_positions_keep_the_checkpoints_first_rows_and_more_are_refused(batch):
    transformers = pytest.importorskip("transformers")
    ids, segments, padding = batch
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )  # max_position_embeddings=512
    torch.manual_seed(3)
    reference = transformers.BertForMaskedLM(config).eval()
    ours = BertForMaskedLM(**TINY).eval()  # 24 positions
    assert import_weights(ours, reference.state_dict()) == "huggingface"
    table = reference.bert.embeddings.position_embeddings.weight
    torch.testing.assert_close(ours.bert.embeddings.position_embeddings.weight, table[:24], rtol=0, atol=0)
    with torch.no_grad():  # position i keeps its meaning: sequences that fit give the same logits
        expected = reference(input_ids=ids, token_type_ids=segments, attention_mask=(~padding).long()).logits
        got = ours(ids, segments, padding)
    torch.testing.assert_close(got[~padding], expected[~padding], atol=1e-4, rtol=0)
    longer = BertForMaskedLM(**TINY | {"max_positions": 600})
    with pytest.raises(ValueError, match=r"max_position_embeddings=512\) but this model has max_positions=600"):
        import_weights(longer, reference.state_dict())
    with pytest.raises(ValueError, match="max_positions=600"):
        import_weights(longer, ours.state_dict())  # our own layout too
