"""Single words labelled with their language, as character ids: our notes' language identification.

:class:`LanguageWordsDataModule` reads texts in two or more languages (by default the embedded
English–Spanish Bible, :data:`~research.data.text.EMBEDDED_BIBLE`, one column a language), cuts
them into lower-cased words (runs of letters: digits, punctuation and apostrophes end a word),
keeps each distinct word once and drops the words found in more than one language (names such as
"abraham", or "a", "real", "son"): their label would be a coin toss. The remaining words are split
at random at the word level (:func:`~research.data.text.split_items`: the test words are the same
in every run), so no word is in two splits.

A :class:`CharVocabulary` built from the training words maps characters to ids, with
:data:`PAD_ID` for padding and :data:`UNK_ID` for characters never seen in training (an accent or
letter of another script in a user's word gets that id, not an error). A batch is a dict:
``tokens`` (B, L) character ids padded with :data:`PAD_ID` after each word, ``lengths`` (B,)
characters per word, and ``labels`` (B,) language indices into ``LanguageWordsDataModule.languages``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from research.data.splits import SplitDataModule, check_loading
from research.data.text import EMBEDDED_BIBLE, Splits, check_utf8, read_lines, read_tsv, split_items

PAD_ID, UNK_ID = 0, 1
PAD, UNK = "<pad>", "<unk>"
# A word is a run of letters (\w minus digits and underscore): "brother’s" -> "brother", "s".
WORD_PATTERN = re.compile(r"[^\W\d_]+")
EMBEDDED_LANGUAGES = ("english", "spanish")  # the columns of the embedded Bible


def words_of(text: str) -> list[str]:
    """The lower-cased words of ``text``, in order."""
    return WORD_PATTERN.findall(text.lower())


def labelled_words(texts: Sequence[Iterable[str]], *, min_length: int = 1) -> list[tuple[str, int]]:
    """Distinct words with the index of their language; words of several languages are dropped.

    Args:
        texts: per language, its texts (lines, verses, ...).
        min_length: the fewest characters a kept word has.

    Returns:
        ``(word, language index)`` pairs sorted by word, so the list (and a seeded split of it)
        does not depend on the order of the texts or on Python's string hashing.

    """
    vocabularies = [{w for text in lines for w in words_of(text) if len(w) >= min_length} for lines in texts]
    seen_in = {}
    for language, words in enumerate(vocabularies):
        for word in words:
            seen_in[word] = language if word not in seen_in else -1  # -1: more than one language
    return sorted((word, language) for word, language in seen_in.items() if language >= 0)


class CharVocabulary:
    """Characters to ids: :data:`PAD_ID` and :data:`UNK_ID` first, then the given characters sorted.

    Args:
        chars: the known characters (e.g. every character of the training words).

    """

    def __init__(self, chars: Iterable[str]) -> None:
        known = sorted(set(chars) - {PAD, UNK})
        self.itos = [PAD, UNK, *known]
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    @classmethod
    def from_words(cls, words: Iterable[str]) -> CharVocabulary:
        """The vocabulary of every character of ``words``."""
        return cls(c for word in words for c in word)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, word: str) -> list[int]:
        """Character ids of ``word``; characters outside the vocabulary get :data:`UNK_ID`."""
        return [self.stoi.get(c, UNK_ID) for c in word]


def collate_words(examples: Sequence[tuple[Tensor, int]]) -> dict[str, Tensor]:
    """Pad ``(character ids (L_i,), label)`` examples into a batch (see the module docstring)."""
    chars = [ids for ids, _ in examples]
    return {
        "tokens": pad_sequence(chars, batch_first=True, padding_value=PAD_ID),
        "lengths": torch.tensor([len(ids) for ids in chars]),
        "labels": torch.tensor([label for _, label in examples]),
    }


class LanguageWordsDataModule(SplitDataModule):
    """Batches of single words as character ids, labelled with their language.

    ``languages``, ``num_classes``, ``vocab``, ``vocab_size`` and ``pad_id`` are known before
    ``setup`` (reading them reads the corpus, a few seconds for the embedded one), so that a task
    can build its model from them.

    Args:
        corpus: a TSV file (plain or ``.gz``) with one column per language, e.g. a parallel
            corpus; None reads the embedded English–Spanish Bible (31,077 verses).
        languages: the names of the corpus columns, in order: the class names. Default
            ``["english", "spanish"]``.
        files: instead of ``corpus``, a mapping from language name to one or more text files
            (plain or ``.gz``, one text a line), e.g. ``{english: en.txt, german: [de1.txt, de2.txt]}``.
        min_length: the fewest characters a word must have to be kept.
        val_fraction: fraction of the words held out for validation.
        test_fraction: fraction of the words held out for testing (the same words in every run).
        seed: seed of the validation split.
        batch_size: words per batch.
        num_workers: DataLoader worker processes.

    """

    def __init__(
        self,
        *,
        corpus: str | None = None,
        languages: list[str] | None = None,
        files: dict[str, str | list[str]] | None = None,
        min_length: int = 1,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if files is not None and (corpus is not None or languages is not None):
            raise ValueError(
                "give either files (language -> text files; the keys name the languages) or corpus/languages "
                "(a TSV with one column a language), not both"
            )
        if files is not None:
            languages = list(files)
            paths = {language: [p] if isinstance(p, str) else list(p) for language, p in files.items()}
            if any(not p for p in paths.values()):
                raise ValueError(f"every language needs at least one file, got {files}")
        else:
            languages = list(EMBEDDED_LANGUAGES if languages is None else languages)
            paths = {"corpus": [corpus]} if corpus is not None else {}
        if len(languages) < 2 or len(set(languages)) != len(languages):
            raise ValueError(f"need at least two distinct languages to tell apart, got {languages}")
        for path in (p for ps in paths.values() for p in ps):
            if not Path(path).is_file():  # stop at construction, before a Trainer starts
                raise FileNotFoundError(f"text file {path!r} does not exist; check data.corpus or data.files")
        if min_length < 1:
            raise ValueError(f"need min_length >= 1, got {min_length}")
        check_loading(batch_size, num_workers)
        self.corpus, self.files, self.languages = corpus, files, languages
        self.min_length, self.seed = min_length, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.paths = paths
        check_utf8(*(p for ps in paths.values() for p in ps))
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pad_id = PAD_ID
        self.train_set: list[tuple[Tensor, int]] | None = None
        self.val_set: list[tuple[Tensor, int]] | None = None
        self.test_set: list[tuple[Tensor, int]] | None = None

    @property
    def num_classes(self) -> int:
        """The number of languages."""
        return len(self.languages)

    def _texts(self) -> list[list[str]]:
        """Per language, its texts."""
        if self.files is not None:
            return [[line for path in self.paths[language] for line in read_lines(path)] for language in self.languages]
        rows = read_tsv(EMBEDDED_BIBLE if self.corpus is None else self.corpus, num_columns=len(self.languages))
        return [[row[column] for row in rows] for column in range(len(self.languages))]

    @cached_property
    def words(self) -> Splits[tuple[str, int]]:
        """``(word, language index)`` pairs of each split, sorted by word."""
        words = labelled_words(self._texts(), min_length=self.min_length)
        source = self.files if self.files is not None else self.corpus or EMBEDDED_BIBLE
        if not words:
            raise ValueError(
                f"no word of at least {self.min_length} letters belongs to one language only in {source}; "
                "give texts with letters in them, or lower min_length"
            )
        missing = sorted(set(range(self.num_classes)) - {label for _, label in words})
        if missing:
            raise ValueError(
                f"no word of {[self.languages[i] for i in missing]} is left (every one also occurs in another "
                f"language, or none has {self.min_length}+ letters) in {source}; give more text for them"
            )
        return split_items(words, val_fraction=self.val_fraction, test_fraction=self.test_fraction, seed=self.seed)

    @cached_property
    def vocab(self) -> CharVocabulary:
        """The characters of the training words, plus padding and unknown."""
        return CharVocabulary.from_words(word for word, _ in self.words.train)

    @property
    def vocab_size(self) -> int:
        """Number of character ids: the model's embedding rows."""
        return len(self.vocab)

    def encode(self, words: Sequence[str]) -> dict[str, Tensor]:
        """A batch of arbitrary words (lower-cased; characters outside the vocabulary -> :data:`UNK_ID`).

        The batch has ``tokens`` and ``lengths`` (no ``labels``), e.g. for
        ``task.predict_step(dm.encode(["house", "casa"]), 0)``.

        Raises:
            ValueError: an empty word (it has no characters to classify).

        """
        empty = [i for i, word in enumerate(words) if not word]
        if empty or not words:
            raise ValueError(f"every word needs at least one character; words at positions {empty} are empty")
        batch = collate_words([(torch.tensor(self.vocab.encode(word.lower())), 0) for word in words])
        del batch["labels"]
        return batch

    def _examples(self, words: Sequence[tuple[str, int]]) -> list[tuple[Tensor, int]]:
        return [(torch.tensor(self.vocab.encode(word)), label) for word, label in words]

    def setup(self, stage: str | None = None) -> None:
        """Encode the three splits (once)."""
        if self.train_set is not None:
            return
        if not self.words.val or not self.words.test:
            raise ValueError("the validation or test split is empty; raise val_fraction/test_fraction")
        self.train_set = self._examples(self.words.train)
        self.val_set = self._examples(self.words.val)
        self.test_set = self._examples(self.words.test)

    def collate(self, split: str) -> Callable:
        return collate_words
