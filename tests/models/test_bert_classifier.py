"""BertForSequenceClassification: Hugging Face's head and logits, initialised from our MLM checkpoints."""

import pytest
import torch

from research.models import create_model, import_weights
from research.models.bert import BertForMaskedLM
from research.models.bert_classifier import BertForSequenceClassification

TINY = dict(vocab_size=50, embed_dim=16, depth=2, num_heads=2, max_positions=24)


def tokens(pad_from: int = 8) -> torch.Tensor:
    ids = torch.randint(5, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    ids[1, pad_from:] = 0  # [PAD] of our trained vocabularies
    return ids


def mlm_checkpoint(path, *, next_sentence_head=False, **sizes):
    """A checkpoint as `research fit` writes it for MaskedLanguageModelling: the model's keys under model."""
    torch.manual_seed(3)
    mlm = BertForMaskedLM(**{**TINY, **sizes}, next_sentence_head=next_sentence_head)
    state = {f"model.{key}": value for key, value in mlm.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"model": {"name": "bert_tiny"}}}, path)
    return mlm


def test_huggingface_weights_give_the_same_logits():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=24, num_labels=4)
    torch.manual_seed(1)
    reference = transformers.BertForSequenceClassification(config).eval()
    ours = BertForSequenceClassification(**TINY, num_classes=4).eval()
    assert import_weights(ours, reference.state_dict()) == "huggingface"  # strict inside
    ids = tokens()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=(ids != 0).long()).logits
        got = ours(ids, (ids != 0).sum(1))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_padding_does_not_change_the_logits():
    model = create_model("bert_tiny_classifier", vocab_size=50, num_classes=3).eval()
    ids = tokens()
    with torch.no_grad():
        padded = model(ids)[1]
        alone = model(ids[1:2, :8])[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


def test_encoder_loads_strictly_from_an_mlm_checkpoint_and_the_head_is_new(tmp_path):
    mlm = mlm_checkpoint(tmp_path / "last.ckpt")
    torch.manual_seed(0)
    fresh = BertForSequenceClassification(**TINY, num_classes=3)
    torch.manual_seed(0)
    model = BertForSequenceClassification(**TINY, num_classes=3, pretrained=str(tmp_path / "last.ckpt"))
    state, encoder = model.state_dict(), mlm.bert.state_dict()
    assert all(torch.equal(state[f"bert.{key}"], value) for key, value in encoder.items())
    # the MLM head is dropped; no pooler in an MLM-only checkpoint: pooler and classifier keep their new init
    for key in ("bert.pooler.weight", "classifier.weight", "classifier.bias"):
        assert torch.equal(state[key], fresh.state_dict()[key])


def test_a_next_sentence_checkpoints_pooler_is_loaded(tmp_path):
    mlm = mlm_checkpoint(tmp_path / "nsp.ckpt", next_sentence_head=True)
    model = BertForSequenceClassification(**TINY, num_classes=3, pretrained=str(tmp_path / "nsp.ckpt"))
    assert torch.equal(model.bert.pooler.weight, mlm.bert.pooler.weight)


def test_a_checkpoint_of_another_vocabulary_or_shape_is_one_clear_message(tmp_path):
    mlm_checkpoint(tmp_path / "last.ckpt")
    with pytest.raises(ValueError, match="embeds 50 tokens but this model's vocabulary has 60: fine-tune with the "
                                         "tokenizer of its pre-training"):
        BertForSequenceClassification(**{**TINY, "vocab_size": 60}, num_classes=3,
                                      pretrained=str(tmp_path / "last.ckpt"))
    with pytest.raises(ValueError, match="cannot initialise BertForSequenceClassification from .*shape mismatch"):
        BertForSequenceClassification(**{**TINY, "embed_dim": 32}, num_classes=3,
                                      pretrained=str(tmp_path / "last.ckpt"))
    with pytest.raises(FileNotFoundError, match="no pretrained checkpoint at .*train it first with python -m research "
                                                "fit --config configs/bert/bible_bert_tiny.yaml"):
        BertForSequenceClassification(**TINY, num_classes=3, pretrained="checkpoints/bert/bible_bert_tiny/last.ckpt")
    torch.save({"state_dict": {"model.head.weight": torch.zeros(3)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="holds no BERT encoder"):
        BertForSequenceClassification(**TINY, num_classes=3, pretrained=str(tmp_path / "other.ckpt"))


def test_fewer_positions_take_the_checkpoints_first_rows(tmp_path):
    mlm = mlm_checkpoint(tmp_path / "last.ckpt")
    model = BertForSequenceClassification(**{**TINY, "max_positions": 16}, num_classes=3,
                                          pretrained=str(tmp_path / "last.ckpt"))
    table = mlm.bert.embeddings.position_embeddings.weight
    assert torch.equal(model.bert.embeddings.position_embeddings.weight, table[:16])


def test_the_embedding_interface_is_the_encoders():
    model = create_model("bert_tiny_classifier", vocab_size=50, num_classes=3)
    assert model.get_input_embeddings() is model.bert.embeddings.word_embeddings
    assert model.embedding_output() is model.bert.embedding_output()
    assert model.embedding_output(include_position=True) is model.bert.embedding_output(include_position=True)


def test_user_mistakes_are_clear():
    with pytest.raises(ValueError, match="num_classes >= 2"):
        create_model("bert_tiny_classifier", vocab_size=50, num_classes=1)
    with pytest.raises(ValueError, match="pad_id=50 is not a token id"):
        create_model("bert_tiny_classifier", vocab_size=50, num_classes=2, pad_id=50)
    with pytest.raises(ValueError, match="always has the pooler"):
        create_model("bert_tiny_classifier", vocab_size=50, num_classes=2, pooler=False)


def test_a_fine_tuned_checkpoint_reloads_without_the_mlm_checkpoint(tmp_path):
    from conftest import trainer
    from torch.utils.data import DataLoader

    from research.tasks import SequenceClassification

    mlm_checkpoint(tmp_path / "mlm.ckpt")
    spec = {"name": "bert_tiny_classifier", **TINY, "num_classes": 3, "pretrained": str(tmp_path / "mlm.ckpt")}
    task = SequenceClassification(spec)
    ids = tokens()
    batches = [{"tokens": ids, "lengths": (ids != 0).sum(1), "labels": torch.tensor([0, 1, 2])}]
    fit = trainer(max_steps=1, limit_val_batches=0)
    fit.fit(task, train_dataloaders=DataLoader(batches, batch_size=None))
    fit.save_checkpoint(tmp_path / "tuned.ckpt")
    assert task.hparams.model["pretrained"] == str(tmp_path / "mlm.ckpt")  # the live run's record is untouched
    (tmp_path / "mlm.ckpt").unlink()  # moved, or another machine
    saved = torch.load(tmp_path / "tuned.ckpt", weights_only=True)
    assert saved["model_pretrained_from"] == str(tmp_path / "mlm.ckpt")
    reloaded = SequenceClassification.load_from_checkpoint(tmp_path / "tuned.ckpt", weights_only=True)
    for key, value in task.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
