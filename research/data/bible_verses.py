"""English Bible verses labelled by the division (10 classes) or testament (2) of their book, as BERT token ids.

The texts are the English side of the embedded Bible (:data:`~research.data.text.EMBEDDED_BIBLE`,
the World English Bible, 31,077 verses); the labels are :data:`EMBEDDED_REFERENCES`, one row per
corpus line (``testament``, ``division``, ``book``, ``chapter``, ``verse``; provenance in
``research/data/embedded/README.md``). The ten divisions are the usual grouping of the 66 books
(:data:`DIVISIONS`, in canonical order); a verse's class is the division of its book.

Tokens: the fine-tuned model must see the ids it was pre-trained on, so the tokenizer is the one of
the masked-language-model pre-training (:class:`~research.data.MaskedLanguageModellingDataModule`
trains a lossless BPE vocabulary on its corpus's training split and caches it): with ``tokenizer_of``
it is rebuilt from that run's own ``config.yaml`` (written beside its checkpoints by ``research fit``),
otherwise from the same options as ``configs/bert/bible_bert_tiny.yaml``. A verse becomes
``[CLS] verse [SEP]``, as BERT's single-sentence classification inputs (Devlin et al. 2019,
arXiv 1810.04805, Fig. 4b), cut to ``max_length`` tokens (one verse of 31,077 is longer than 128:
the last, which carries a 3,045-word appendix).

Split: at the verse level, at random with fixed seeds (:func:`~research.data.text.split_items`: the
test verses are the same in every run, the validation verses drawn with ``seed``). Not at the book
level: a division is a set of whole books (``acts`` and ``revelation`` are one book each), so holding
out books would hold out whole classes, or leave the test set with a division that training never
saw. With the default fractions (5% + 5%) the validation and test verses are exactly the lines that
the MLM datamodule (same fractions and seed) holds out, so neither the pre-training nor its
vocabulary has seen a test verse. Neighbouring verses of one book are alike (names, refrains), so
verse-level accuracy is easier than classifying an unseen book would be.

A batch is a dict: ``tokens`` (B, L) ids padded with ``pad_id`` after each verse, ``lengths`` (B,)
tokens per verse (``[CLS]`` and ``[SEP]`` included) and ``labels`` (B,) class indices into
``class_names``; the format of :class:`~research.tasks.SequenceClassification`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
import yaml
from tokenizers import Tokenizer
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from research.data.mlm import MaskedLanguageModellingDataModule
from research.data.splits import SplitDataModule, check_loading
from research.data.text import EMBEDDED_BIBLE, Splits, read_tsv, split_items
from research.data.tokenizer import SpecialTokens

log = logging.getLogger(__name__)

EMBEDDED_REFERENCES = Path(__file__).parent / "embedded" / "bible_refs.tsv.gz"
REFERENCE_COLUMNS = ("testament", "division", "book", "chapter", "verse")
#: the divisions of the 66 books, in canonical order: the class indices of ``label="division"``
DIVISIONS = ("law", "history", "wisdom", "major_prophets", "minor_prophets", "gospels", "acts",
             "pauline_epistles", "general_epistles", "revelation")
TESTAMENTS = ("ot", "nt")
CLASSES = {"division": DIVISIONS, "testament": TESTAMENTS}
_ENCODED: dict[tuple, dict[str, Tensor]] = {}  # see BibleVersesDataModule._encoded


def read_references(path: str | Path) -> list[dict[str, str]]:
    """The rows of a verse-reference file: a header (:data:`REFERENCE_COLUMNS`), then one row per corpus line.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a header other than :data:`REFERENCE_COLUMNS`, or a malformed row (named).
    """
    rows = read_tsv(path, num_columns=len(REFERENCE_COLUMNS))
    if rows[0] != REFERENCE_COLUMNS:
        raise ValueError(f"{path}: the header must be {'<TAB>'.join(REFERENCE_COLUMNS)}, got {'<TAB>'.join(rows[0])}")
    return [dict(zip(REFERENCE_COLUMNS, row)) for row in rows[1:]]


def labelled_verses(corpus: str | Path, references: str | Path, label: str) -> list[tuple[str, int]]:
    """``(English verse, class index)`` pairs in corpus order, the label read from the aligned reference file.

    Args:
        corpus: ``english<TAB>spanish`` a line (the embedded Bible's format).
        references: one row per corpus line (:func:`read_references`).
        label: ``"division"`` or ``"testament"``.

    Raises:
        ValueError: the two files have different numbers of lines, or a label outside :data:`CLASSES`.
    """
    verses = [row[0] for row in read_tsv(corpus, num_columns=2)]
    rows = read_references(references)
    if len(verses) != len(rows):
        raise ValueError(f"{corpus} has {len(verses)} verses but {references} describes {len(rows)}: the reference "
                         "file must have one row per corpus line, in order (research/data/embedded/README.md)")
    names = CLASSES[label]
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({row[label] for row in rows} - set(names))
    if unknown:
        raise ValueError(f"{references}: {label} {unknown} is not one of {list(names)}")
    return [(verse, index[row[label]]) for verse, row in zip(verses, rows)]


def collate_verses(examples: Sequence[tuple[Tensor, int]], *, pad_id: int) -> dict[str, Tensor]:
    """Pad ``(token ids (L_i,), label)`` examples into a batch (see the module docstring)."""
    ids = [tokens for tokens, _ in examples]
    return {
        "tokens": pad_sequence(ids, batch_first=True, padding_value=pad_id),
        "lengths": torch.tensor([len(tokens) for tokens in ids]),
        "labels": torch.tensor([label for _, label in examples]),
    }


def pretraining_data(run: str | Path) -> MaskedLanguageModellingDataModule:
    """The datamodule of a masked-language-model run, rebuilt from the ``config.yaml`` beside its checkpoints.

    Args:
        run: the run's folder (``checkpoints/bert/bible_bert_tiny``), its ``config.yaml``, or a checkpoint in it.

    Raises:
        FileNotFoundError: no ``config.yaml`` there (the message says which command writes it).
        ValueError: the run's data is not a :class:`~research.data.MaskedLanguageModellingDataModule`.
    """
    path = Path(run)
    config = path if path.suffix in (".yaml", ".yml") else (path if path.is_dir() else path.parent) / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(
            f"no pre-training run at {run} ({config} is missing): pre-train first with python -m research fit "
            "--config configs/bert/bible_bert_tiny.yaml, which writes checkpoints/bert/bible_bert_tiny/config.yaml"
        )
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    if not str(data.get("class_path", "")).endswith("MaskedLanguageModellingDataModule"):
        raise ValueError(f"{config} is not a masked-language-model run (its data is {data.get('class_path')!r}); "
                         "give the run whose checkpoint the classifier starts from")
    return MaskedLanguageModellingDataModule(**(data.get("init_args") or {}))


class BibleVersesDataModule(SplitDataModule):
    """Verses of the embedded English Bible as BERT inputs, labelled by division or testament.

    ``num_classes``, ``class_names``, ``vocab_size``, ``pad_id`` and ``special_tokens`` are known
    before ``setup`` (reading the tokenizer trains it, or loads the cached one: seconds), so that a
    task builds its model from them.

    Args:
        label: ``"division"`` (10 classes, :data:`DIVISIONS`) or ``"testament"`` (``ot``, ``nt``).
        tokenizer_of: the masked-language-model run whose tokenizer to use (its folder, ``config.yaml``
            or a checkpoint in it, e.g. ``checkpoints/bert/bible_bert_tiny/last.ckpt``); None builds
            one from ``tokenizer``/``vocab_size``/``lowercase``/``cache_dir`` as that datamodule would.
        tokenizer: without ``tokenizer_of``, a ``vocab.txt`` or ``tokenizer.json``; None trains BPE
            on the corpus's MLM training split (cached).
        vocab_size: the size of the vocabulary to train (configs/bert/bible_bert_tiny.yaml's: 8,000).
        lowercase: lower-case the text (as that pre-training).
        cache_dir: where trained tokenizers are cached.
        max_length: the most tokens of an input, ``[CLS]`` and ``[SEP]`` included; longer verses are cut.
        corpus: ``english<TAB>spanish`` verses; None: the embedded Bible.
        references: the labels of ``corpus``, one row per line; None: the embedded ones (needs ``corpus`` None too).
        val_fraction: fraction of the verses held out for validation.
        test_fraction: fraction of the verses held out for testing (the same verses in every run).
        seed: seed of the validation split.
        batch_size: verses per batch.
        num_workers: DataLoader worker processes.

    Raises:
        ValueError: an unknown ``label``, ``max_length`` below 3, or ``references`` missing for a ``corpus``.
        FileNotFoundError: a corpus, reference or tokenizer file (or ``tokenizer_of`` run) that does not exist.
    """

    def __init__(
        self,
        *,
        label: Literal["division", "testament"] = "division",
        tokenizer_of: str | None = None,
        tokenizer: str | None = None,
        vocab_size: int = 8000,
        lowercase: bool = True,
        cache_dir: str = "data/tokenizers",
        max_length: int = 128,
        corpus: str | None = None,
        references: str | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if label not in CLASSES:
            raise ValueError(f"unknown label {label!r}; choose 'division' (10 classes) or 'testament' (2)")
        if max_length < 3:
            raise ValueError(f"max_length={max_length} leaves no room for a token between [CLS] and [SEP]; use 128")
        if (corpus is None) != (references is None):
            raise ValueError("give both corpus and references (its labels, one row per line), or neither "
                             "(the embedded Bible and its labels)")
        for path in (corpus, references):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"file {path!r} does not exist; check data.corpus and data.references")
        check_loading(batch_size, num_workers)
        self.label, self.class_names = label, CLASSES[label]
        self.max_length = max_length
        self.corpus = Path(corpus) if corpus is not None else EMBEDDED_BIBLE
        self.references = Path(references) if references is not None else EMBEDDED_REFERENCES
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.batch_size, self.num_workers = batch_size, num_workers
        if tokenizer_of is not None:
            self.pretraining = pretraining_data(tokenizer_of)
            self._check_held_out(tokenizer_of)
        else:
            self.pretraining = MaskedLanguageModellingDataModule(
                tokenizer=tokenizer, vocab_size=vocab_size, lowercase=lowercase, cache_dir=cache_dir
            )
        self.train_set: list[tuple[Tensor, int]] | None = None
        self.val_set: list[tuple[Tensor, int]] | None = None
        self.test_set: list[tuple[Tensor, int]] | None = None

    def _check_held_out(self, run: str) -> None:
        """Warn when the pre-training may have read this datamodule's test verses (another corpus or split)."""
        mlm = self.pretraining
        files = [EMBEDDED_BIBLE] if mlm.corpus is None else [mlm.corpus] if isinstance(mlm.corpus, str) else mlm.corpus
        same = ([Path(f).resolve() for f in files] == [self.corpus.resolve()] and mlm.tsv_column == 0
                and mlm.test_fraction == self.test_fraction)
        if not same:
            log.warning("the pre-training run %s held out other lines than this datamodule's test verses: it may have "
                        "read them (a test figure then measures less than generalisation to unseen verses)", run)

    @property
    def tokenizer(self) -> Tokenizer:
        """The pre-training's tokenizer (see the module docstring)."""
        return self.pretraining.tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of token ids: the model's embedding rows."""
        return self.pretraining.vocab_size

    @property
    def special_tokens(self) -> SpecialTokens:
        """Ids of ``[PAD]``, ``[CLS]``, ``[SEP]``, ``[MASK]`` and ``[UNK]``."""
        return self.pretraining.special_tokens

    @property
    def pad_id(self) -> int:
        """The padding id (``[PAD]``)."""
        return self.special_tokens.pad

    @property
    def num_classes(self) -> int:
        """10 divisions or 2 testaments."""
        return len(self.class_names)

    @cached_property
    def verses(self) -> Splits[tuple[str, int]]:
        """``(verse, class index)`` pairs of each split, in corpus order."""
        verses = labelled_verses(self.corpus, self.references, self.label)
        return split_items(verses, val_fraction=self.val_fraction, test_fraction=self.test_fraction, seed=self.seed)

    def _encoded(self) -> dict[str, Tensor]:
        """Every verse's ids, encoded once per process for a tokenizer and length (a table fine-tunes three times)."""
        key = (hashlib.sha1(self.tokenizer.to_str().encode()).hexdigest(), str(self.corpus), self.max_length)
        if key not in _ENCODED:
            splits = (self.verses.train, self.verses.val, self.verses.test)
            texts = sorted({text for split in splits for text, _ in split})
            _ENCODED.clear()  # one corpus at a time: the cache holds no more than one tokenized Bible
            _ENCODED[key] = dict(zip(texts, self.encode(texts)))
        return _ENCODED[key]

    def encode(self, texts: Sequence[str]) -> list[Tensor]:
        """``[CLS] text [SEP]`` token ids of each text, cut to ``max_length`` (the ``[SEP]`` kept)."""
        encoded = [torch.tensor(e.ids) for e in self.tokenizer.encode_batch(list(texts))]
        sep = self.special_tokens.sep
        return [ids if len(ids) <= self.max_length else torch.cat([ids[: self.max_length - 1], torch.tensor([sep])])
                for ids in encoded]

    def batch(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """A batch of arbitrary texts (``tokens`` and ``lengths``, no ``labels``), e.g. for ``task.predict_step``."""
        batch = collate_verses([(ids, 0) for ids in self.encode(texts)], pad_id=self.pad_id)
        del batch["labels"]
        return batch

    def _examples(self, verses: Sequence[tuple[str, int]]) -> list[tuple[Tensor, int]]:
        encoded = self._encoded()
        return [(encoded[text], label) for text, label in verses]

    def setup(self, stage: str | None = None) -> None:
        """Tokenize the three splits (once)."""
        if self.train_set is not None:
            return
        if not self.verses.val or not self.verses.test:
            raise ValueError("the validation or test split is empty; raise val_fraction/test_fraction")
        self.train_set = self._examples(self.verses.train)
        self.val_set = self._examples(self.verses.val)
        self.test_set = self._examples(self.verses.test)

    def collate(self, split: str) -> Callable:
        return functools.partial(collate_verses, pad_id=self.pad_id)
