import inspect
from pathlib import Path

import pytest

import research.data.tokenizer as tokenizer_module
from research.data.text import EMBEDDED_BIBLE, read_tsv
from research.data.tokenizer import (
    SPECIAL_TOKENS,
    SpecialTokens,
    cached_wordpiece,
    load_tokenizer,
    train_wordpiece,
)

OFFICIAL_VOCAB = Path("/work/shared/data/bert-base-uncased-vocab.txt")


@pytest.fixture(scope="module")
def verses():
    return [english for english, _ in read_tsv(EMBEDDED_BIBLE)[:800]]


def test_trained_wordpiece_has_bert_specials_and_templates(verses):
    tok = train_wordpiece(verses, vocab_size=400)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert 100 < tok.get_vocab_size() <= 400
    single = tok.encode("In the beginning God created")
    assert single.tokens[0] == "[CLS]" and single.tokens[-1] == "[SEP]" and "in" in single.tokens
    pair = tok.encode("God said", "Let there be light")
    sep = pair.tokens.index("[SEP]")
    assert pair.tokens[-1] == "[SEP]" and set(pair.type_ids[: sep + 1]) == {0} and set(pair.type_ids[sep + 1 :]) == {1}
    assert any(t.startswith("##") for t in tok.get_vocab())  # word pieces, not whole words only
    assert tok.decode(tok.encode("the light").ids) == "the light"


def test_lowercase_and_accents_are_options():
    texts = ["Él dijo Sí, él dijo sí"] * 20
    assert "él" in train_wordpiece(texts, vocab_size=60, lowercase=True, strip_accents=False).get_vocab()
    assert "el" in train_wordpiece(texts, vocab_size=60, lowercase=True).get_vocab()  # uncased strips accents
    assert "Él" in train_wordpiece(texts, vocab_size=60, lowercase=False).get_vocab()


def test_cache_is_reused_and_keyed_by_corpus_and_size(verses, tmp_path, monkeypatch):
    first = cached_wordpiece(verses, vocab_size=300, cache_dir=tmp_path)
    files = list(tmp_path.glob("wordpiece-300-*.json"))
    assert len(files) == 1
    monkeypatch.setattr(tokenizer_module, "train_wordpiece", lambda *a, **k: pytest.fail("retrained despite cache"))
    again = cached_wordpiece(verses, vocab_size=300, cache_dir=tmp_path)
    assert again.get_vocab() == first.get_vocab()
    monkeypatch.undo()
    cached_wordpiece(verses, vocab_size=250, cache_dir=tmp_path)
    cached_wordpiece(verses[:-1], vocab_size=300, cache_dir=tmp_path)
    cached_wordpiece(verses, vocab_size=300, cache_dir=tmp_path, lowercase=False)
    assert len(list(tmp_path.glob("wordpiece-*.json"))) == 4
    assert not list(tmp_path.glob("*.tmp"))


def write_vocab(path: Path, tokens) -> Path:
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def test_vocab_txt_matches_hugging_face_bert_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    tokens = [*SPECIAL_TOKENS, "the", "light", "god", "said", "##s", "un", "##aff", "##able", ",", "!", "h", "##ello"]
    vocab = write_vocab(tmp_path / "vocab.txt", tokens)
    ours = load_tokenizer(vocab)
    cls = transformers.BertTokenizerFast
    key = "vocab" if "vocab" in inspect.signature(cls.__init__).parameters else "vocab_file"  # transformers 5 vs 4
    reference = cls(**{key: str(vocab)})
    for text, pair in [("The LIGHT, unaffable!", None), ("Héllo gods", "God said ?")]:
        expected = reference(text, pair) if pair else reference(text)
        got = ours.encode(text, pair) if pair else ours.encode(text)
        assert got.ids == expected["input_ids"]
        assert got.type_ids == expected["token_type_ids"]
    assert SpecialTokens.of(ours) == SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4)


@pytest.mark.skipif(
    not OFFICIAL_VOCAB.is_file(), reason="the shared bert-base-uncased vocab.txt is not on this machine"
)
def test_official_bert_base_uncased_vocab():
    tok = load_tokenizer(OFFICIAL_VOCAB)
    assert tok.get_vocab_size() == 30_522
    assert tok.encode("Hello, unaffable world!").ids == [101, 7592, 1010, 14477, 20961, 3468, 2088, 999, 102]
    assert SpecialTokens.of(tok) == SpecialTokens(pad=0, unk=100, cls=101, sep=102, mask=103)


def test_tokenizer_json_round_trip(verses, tmp_path):
    tok = train_wordpiece(verses, vocab_size=300)
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert loaded.encode("God said", "light").ids == tok.encode("God said", "light").ids


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt' does not exist"):
        load_tokenizer(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="is empty"):
        load_tokenizer(write_vocab(tmp_path / "empty.txt", []))
    with pytest.raises(ValueError, match=r"lacks the special tokens \['\[CLS\]', '\[MASK\]'\]"):
        load_tokenizer(write_vocab(tmp_path / "partial.txt", ["[PAD]", "[UNK]", "[SEP]", "the"]))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read tokenizer"):
        load_tokenizer(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="empty corpus"):
        train_wordpiece(["", "  "], vocab_size=100)
    with pytest.raises(ValueError, match="leaves no room"):
        train_wordpiece(["text"], vocab_size=5)
