import inspect
from pathlib import Path

import pytest

import research.data.tokenizer as tokenizer_module
from research.data import MaskedLanguageModellingDataModule, TranslationDataModule
from research.data.text import EMBEDDED_BIBLE, read_tsv
from research.data.tokenizer import (
    BYTE_TOKENS,
    SPECIAL_TOKENS,
    SpecialTokens,
    cache_key,
    cached_bpe,
    load_tokenizer,
    train_bpe,
)

OFFICIAL_VOCAB = Path("/work/shared/data/bert-base-uncased-vocab.txt")


@pytest.fixture(scope="module")
def verses():
    return [english for english, _ in read_tsv(EMBEDDED_BIBLE)[:800]]


def test_trained_bpe_has_bert_specials_bytes_and_templates(verses):
    tok = train_bpe(verses, vocab_size=600)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert [tok.token_to_id(t) for t in BYTE_TOKENS] == list(range(5, 261))
    assert 400 < tok.get_vocab_size() <= 600
    single = tok.encode("In the beginning God created")
    assert single.tokens[0] == "[CLS]" and single.tokens[-1] == "[SEP]" and "\u2581in" in single.tokens
    pair = tok.encode("God said", "Let there be light")
    sep = pair.tokens.index("[SEP]")
    assert pair.tokens[-1] == "[SEP]" and set(pair.type_ids[: sep + 1]) == {0} and set(pair.type_ids[sep + 1 :]) == {1}
    assert any(not t.startswith("\u2581") and t.isalpha() and len(t) > 1 for t in tok.get_vocab())  # word pieces
    assert tok.decode(tok.encode("the light").ids) == "the light"
    # punctuation is a piece of its own, never glued to a word (as BERT's pre-tokeniser has it)
    tokens = tok.encode("said, “God”.").tokens[1:-1]
    assert tokens[:4] == ["\u2581said", ",", "\u2581", "“"] and tokens[-2:] == ["”", "."]
    assert not [t for t in tok.get_vocab() if len(t) > 1 and any(c in ",.;:?!“”’" for c in t) and t[0] != "<"]
    # byte tokens are plain vocabulary: decoding keeps them, and their text in the input is just text
    assert tok.decode(tok.encode("<0x41> ☃").ids, skip_special_tokens=True) == "<0x41> ☃"


def test_lowercase_and_accents_are_options():
    texts = ["Él dijo Sí, él dijo sí"] * 20
    assert "\u2581él" in train_bpe(texts, vocab_size=300, lowercase=True, strip_accents=False).get_vocab()
    assert "\u2581el" in train_bpe(texts, vocab_size=300, lowercase=True).get_vocab()  # uncased strips accents
    assert "\u2581Él" in train_bpe(texts, vocab_size=300, lowercase=False).get_vocab()
    uncased = train_bpe(texts, vocab_size=300, lowercase=True)
    assert uncased.decode(uncased.encode("Él dijo: ¿Sí?").ids) == "el dijo: ¿si?"  # the documented normalisation
    assert uncased.normalizer.normalize_str("Él dijo: ¿Sí?") == "el dijo: ¿si?"


def test_every_line_of_the_shipped_corpus_round_trips(tmp_path):
    """decode(encode(line)) is the line, for both sides of every split of the embedded Bible (issue 13)."""
    rows = read_tsv(EMBEDDED_BIBLE)
    translation = TranslationDataModule(cache_dir=str(tmp_path))  # the seq2seq configs' tokenizer
    for side in (0, 1):
        lines = [row[side] for row in rows]
        encoded = translation.tokenizer.encode_batch(lines)
        assert not [line for line, e in zip(lines, encoded) if SpecialTokens.of(translation.tokenizer).unk in e.ids]
        decoded = [translation.decode(e.ids) for e in encoded]
        wrong = [(line, back) for line, back in zip(lines, decoded) if line != back]
        assert not wrong, f"{len(wrong)} of {len(lines)} lines change, e.g. {wrong[:3]}"
    # the MLM corpus (English side, uncased): the line as the documented normaliser leaves it
    mlm = MaskedLanguageModellingDataModule(cache_dir=str(tmp_path))
    lines = [english for english, _ in rows]
    decoded = mlm.tokenizer.decode_batch([e.ids for e in mlm.tokenizer.encode_batch(lines)], skip_special_tokens=True)
    assert decoded == [mlm.tokenizer.normalizer.normalize_str(line) for line in lines]
    assert decoded[0] == lines[0].lower()


def test_characters_outside_the_training_alphabet_round_trip_as_bytes(verses):
    """A character the training text never had becomes its UTF-8 byte tokens, never [UNK], and decodes back."""
    tok = train_bpe(verses, vocab_size=600, lowercase=False)
    text = "Señor, ¿qué? 日本語 — naïve ☃ 🙂 x²"
    assert "日" not in "".join(verses) and tok.token_to_id("日") is None
    encoding = tok.encode(text)
    assert SpecialTokens.of(tok).unk not in encoding.ids
    assert tok.encode("日").tokens[1:-1] == ["\u2581", "<0xE6>", "<0x97>", "<0xA5>"]  # its UTF-8 bytes
    assert tok.decode(encoding.ids) == text
    # documented limits: NFC, one leading space, and a literal U+2581 (it decodes as a space)
    assert tok.decode(tok.encode("cafe\u0301").ids) == "caf\u00e9"
    assert tok.decode(tok.encode(" x").ids) == "x"
    assert tok.decode(tok.encode("a\u2581b").ids) == "a b"


def test_cache_key_covers_the_pipeline_version(verses, monkeypatch):
    key = cache_key(verses, vocab_size=300)
    monkeypatch.setattr(tokenizer_module, "_PIPELINE_VERSION", tokenizer_module._PIPELINE_VERSION + 1)
    assert cache_key(verses, vocab_size=300) != key


def test_cache_is_reused_and_keyed_by_corpus_and_size(verses, tmp_path, monkeypatch):
    first = cached_bpe(verses, vocab_size=500, cache_dir=tmp_path)
    files = list(tmp_path.glob("bpe-500-*.json"))
    assert len(files) == 1
    monkeypatch.setattr(tokenizer_module, "train_bpe", lambda *a, **k: pytest.fail("retrained despite cache"))
    again = cached_bpe(verses, vocab_size=500, cache_dir=tmp_path)
    assert again.get_vocab() == first.get_vocab()
    assert again.decode(again.encode("¿Por qué?").ids) == "¿por que?"  # the saved file keeps the pipeline
    monkeypatch.undo()
    cached_bpe(verses, vocab_size=450, cache_dir=tmp_path)
    cached_bpe(verses[:-1], vocab_size=500, cache_dir=tmp_path)
    cached_bpe(verses, vocab_size=500, cache_dir=tmp_path, lowercase=False)
    assert len(list(tmp_path.glob("bpe-*.json"))) == 4
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
    tok = train_bpe(verses, vocab_size=500)
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert loaded.encode("God said", "light").ids == tok.encode("God said", "light").ids
    assert loaded.decode(loaded.encode("Yahweh’s “light”").ids) == "yahweh’s “light”"


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
        train_bpe(["", "  "], vocab_size=400)
    with pytest.raises(ValueError, match="leaves no room next to the 5 special tokens and 256 byte tokens"):
        train_bpe(["text"], vocab_size=261)
