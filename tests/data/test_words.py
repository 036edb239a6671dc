import pytest
import torch

from research.data import LanguageWordsDataModule
from research.data.words import PAD_ID, UNK_ID, CharVocabulary, labelled_words, words_of


@pytest.fixture(scope="module")
def bible():
    """The embedded English–Spanish words, read once for the module."""
    return LanguageWordsDataModule()


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def two_languages(tmp_path):
    english = " ".join(f"house{i} garden tree river mountain" for i in range(3)) + "\nthe dog and the cat\nred\n"
    german = "das Haus und der Garten\nder Hund und die Katze\nrot blau grün schön\nbaum fluss berg\n"
    return {"english": write(tmp_path / "en.txt", english), "german": write(tmp_path / "de.txt", german)}


def test_words_are_lowercased_runs_of_letters():
    assert words_of("Brother’s name: JUBAL, 12 años!") == ["brother", "s", "name", "jubal", "años"]


def test_words_of_both_languages_are_dropped():
    words = labelled_words([["The casa son", "the"], ["la casa son hijo"]])
    assert words == [("hijo", 1), ("la", 1), ("the", 0)]
    assert labelled_words([["a bb ccc"], ["dddd"]], min_length=3) == [("ccc", 0), ("dddd", 1)]


def test_no_word_is_in_two_splits(bible):
    splits = bible.words
    train, val, test = ({word for word, _ in split} for split in (splits.train, splits.val, splits.test))
    assert train and val and test
    assert not (train & val or train & test or val & test)
    assert len(train) + len(val) + len(test) == len(splits.train) + len(splits.val) + len(splits.test)  # deduplicated
    assert len(test) == pytest.approx(0.1 * (len(train) + len(val) + len(test)), abs=1)


def test_embedded_corpus_has_both_languages_and_no_shared_word(bible):
    assert bible.languages == ["english", "spanish"] and bible.num_classes == 2
    words = bible.words.train + bible.words.val + bible.words.test
    labels = {}
    for word, label in words:
        labels.setdefault(word, set()).add(label)
    assert all(len(v) == 1 for v in labels.values())
    by_word = dict(words)
    assert by_word["house"] == 0 and by_word["casa"] == 1
    assert "abraham" not in by_word and "a" not in by_word  # in both texts
    assert {label for _, label in words} == {0, 1}


def test_test_words_do_not_depend_on_the_seed(two_languages):
    a, b = LanguageWordsDataModule(files=two_languages, seed=0), LanguageWordsDataModule(files=two_languages, seed=1)
    assert a.words.test == b.words.test
    assert a.words.val != b.words.val or a.words.train != b.words.train


def test_character_vocabulary_has_pad_and_unknown_first():
    vocab = CharVocabulary.from_words(["bca", "añ"])
    assert vocab.itos == ["<pad>", "<unk>", "a", "b", "c", "ñ"] and len(vocab) == 6
    assert vocab.encode("cab") == [4, 2, 3]
    assert vocab.encode("xa") == [UNK_ID, 2]  # a character outside the alphabet is unknown, not an error


def test_batches_are_padded_character_ids_with_lengths_and_labels(two_languages):
    dm = LanguageWordsDataModule(files=two_languages, val_fraction=0.2, test_fraction=0.2, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"tokens", "lengths", "labels"}
    tokens, lengths = batch["tokens"], batch["lengths"]
    assert tokens.shape == (4, int(lengths.max())) and tokens.dtype == torch.long
    for row, length in zip(tokens, lengths):
        assert (row[:length] != PAD_ID).all() and (row[length:] == PAD_ID).all()
    assert set(batch["labels"].tolist()) <= {0, 1}
    words = {tuple(dm.vocab.encode(word)): label for word, label in dm.words.train}
    for row, length, label in zip(tokens, lengths, batch["labels"]):
        assert words[tuple(row[:length].tolist())] == label


def test_vocabulary_comes_from_the_training_words_only(two_languages):
    dm = LanguageWordsDataModule(files=two_languages, val_fraction=0.2, test_fraction=0.2)
    train_chars = {c for word, _ in dm.words.train for c in word}
    assert set(dm.vocab.itos[2:]) == train_chars and dm.vocab_size == len(train_chars) + 2
    assert dm.pad_id == PAD_ID


def test_encode_maps_unknown_characters_to_the_unknown_id(two_languages):
    dm = LanguageWordsDataModule(files=two_languages, val_fraction=0.2, test_fraction=0.2)
    batch = dm.encode(["Dog", "жук"])
    assert batch["lengths"].tolist() == [3, 3]
    assert batch["tokens"][0].tolist() == dm.vocab.encode("dog")
    assert batch["tokens"][1].tolist() == [UNK_ID] * 3
    with pytest.raises(ValueError, match="at least one character.*positions \\[1\\]"):
        dm.encode(["dog", ""])


def test_user_files_name_the_languages(two_languages, tmp_path):
    three = two_languages | {"spanish": write(tmp_path / "es.txt", "la casa y el perro\nrojo azul\n")}
    dm = LanguageWordsDataModule(files=three, val_fraction=0.2, test_fraction=0.2)
    assert dm.languages == ["english", "german", "spanish"] and dm.num_classes == 3
    assert ("perro", 2) in dm.words.train + dm.words.val + dm.words.test


def test_a_tsv_corpus_with_one_column_a_language(tmp_path):
    rows = ["the red house\tdie rote haus", "a green tree\tein grüner baum", "big dog\tgroßer hund"] * 2
    corpus = write(tmp_path / "c.tsv", "\n".join(rows))
    dm = LanguageWordsDataModule(corpus=corpus, languages=["en", "de"], val_fraction=0.2)
    assert dm.languages == ["en", "de"]
    assert ("baum", 1) in dm.words.train + dm.words.val + dm.words.test


def test_bad_input_is_a_clear_error(tmp_path, two_languages):
    empty = write(tmp_path / "digits.txt", "123 456\n!!! ...\n")
    with pytest.raises(ValueError, match="no word of at least 1 letters"):
        LanguageWordsDataModule(files={"a": empty, "b": empty}).setup("fit")
    same = write(tmp_path / "same.txt", "casa perro\n")
    with pytest.raises(ValueError, match=r"no word of \['b', 'c'\] is left"):
        LanguageWordsDataModule(files={"a": two_languages["english"], "b": same, "c": same}).setup("fit")
    with pytest.raises(ValueError, match="either files .* or corpus"):
        LanguageWordsDataModule(files=two_languages, corpus=two_languages["english"])
    with pytest.raises(ValueError, match="at least two distinct languages"):
        LanguageWordsDataModule(files={"english": two_languages["english"]})
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        LanguageWordsDataModule(files={"a": str(tmp_path / "nowhere.txt"), "b": same})
    three_columns = write(tmp_path / "three.tsv", "a\tb\tc\n")
    with pytest.raises(ValueError, match="expected 2 tab-separated columns, found 3"):
        LanguageWordsDataModule(corpus=three_columns).setup("fit")
