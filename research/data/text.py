"""Text corpora: plain text files, parallel TSV files and the embedded Bible, split with fixed seeds.

Every reader returns Python strings; tokenizers (:mod:`research.data.tokenizer`) and the
datamodules that batch them (:mod:`research.data.mlm`, a translation datamodule) build on these:

- :func:`text_corpus`: one text a line (a sentence, a verse, a paragraph), from text files or one
  column of TSV files; the English side of the embedded Bible by default (the MLM corpus).
- :func:`parallel_corpus`: ``source<TAB>target`` pairs, filtered by length and length ratio; the
  embedded English–Spanish Bible by default (the translation corpus).

Splits are drawn over line numbers *before* any filtering, so a split holds the same lines
whatever the filter settings, and the test split ignores ``seed``: it is the same in every run
(as for the image datamodules). Each split keeps the corpus order, so that neighbouring lines of a
split are mostly neighbours in the text (sequence packing and next-sentence pairs rely on it).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import torch

from research.errors import UserError

EMBEDDED_BIBLE = Path(__file__).parent / "embedded" / "bible_en_es.tsv.gz"
# The carved test split ignores ``seed``: it must be the same lines in every run.
TEST_SPLIT_SEED = 0

T = TypeVar("T")


@dataclass(frozen=True)
class Splits(Generic[T]):
    """Train, validation and test items of a corpus, each in corpus order."""

    train: list[T]
    val: list[T]
    test: list[T]

    def map(self, fn: Callable[[list[T]], list]) -> Splits:
        """Apply ``fn`` to each split's list, e.g. a filter or a tokenizer."""
        return Splits(fn(self.train), fn(self.val), fn(self.test))


def _open_text(path: Path):
    """Open a UTF-8 text file, gzip-compressed if its name ends in ``.gz``."""
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {str(path)!r} does not exist; check the path in the config")
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def check_utf8(*paths: str | Path | None) -> None:
    """Stop, naming the file and line, when a corpus file is not UTF-8 text (datamodules call it when built).

    Raises:
        UserError: a file whose bytes are not UTF-8 (e.g. Latin-1 or UTF-16).
    """
    for path in paths:
        if path is None or not Path(path).is_file():
            continue  # a missing file is reported when it is read
        path = Path(path)
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data.count(b"\n", 0, err.start) + 1
            raise UserError(
                f"corpus file {path} is not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); convert it to "
                "UTF-8, e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8"
            ) from None


def read_lines(path: str | Path) -> list[str]:
    """The non-blank lines of a text file (plain or ``.gz``), stripped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds no text.

    """
    path = Path(path)
    check_utf8(path)
    with _open_text(path) as f:
        lines = [line.strip() for line in f]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"corpus file {str(path)!r} is empty: it needs one text a line")
    return lines


def read_tsv(path: str | Path, *, num_columns: int = 2) -> list[tuple[str, ...]]:
    """Rows of a tab-separated file (plain or ``.gz``) without header; blank lines are skipped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line with another number of columns (the message names the line), or a
            file without rows.

    """
    path = Path(path)
    check_utf8(path)
    rows = []
    with _open_text(path) as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != num_columns:
                raise ValueError(
                    f"{path}:{number}: expected {num_columns} tab-separated columns, found {len(fields)} "
                    f"({line[:60]!r}); fix or remove that line"
                )
            rows.append(tuple(field.strip() for field in fields))
    if not rows:
        raise ValueError(f"corpus file {str(path)!r} is empty: it needs one {num_columns}-column row a line")
    return rows


def split_items(items: Sequence[T], *, val_fraction: float, test_fraction: float, seed: int) -> Splits[T]:
    """Carve validation and test items from ``items`` at random, keeping corpus order in each split.

    The test items are drawn first with :data:`TEST_SPLIT_SEED`, so they do not depend on ``seed``;
    the validation items are then drawn from the rest with ``seed``.

    Raises:
        ValueError: fractions out of range, or too few items for three non-empty splits.

    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must lie in [0, 1) "
            "and leave lines for training"
        )
    n = len(items)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    if n - n_test - n_val < 1 or (val_fraction > 0 and n_val < 1) or (test_fraction > 0 and n_test < 1):
        raise ValueError(
            f"{n} lines are too few for val_fraction={val_fraction} and test_fraction={test_fraction}; "
            "use a larger corpus"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(TEST_SPLIT_SEED)).tolist()
    test, rest = order[:n_test], order[n_test:]
    shuffled = torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed)).tolist()
    val = [rest[i] for i in shuffled[:n_val]]
    train = [rest[i] for i in shuffled[n_val:]]
    return Splits(*([items[i] for i in sorted(ids)] for ids in (train, val, test)))


def filter_pairs(
    pairs: Sequence[tuple[str, str]], *, min_words: int = 1, max_words: int = 100, max_ratio: float = 3.0
) -> list[tuple[str, str]]:
    """Drop pairs with a side outside [min_words, max_words] words, or whose lengths differ too much.

    Words are whitespace-separated. The ratio test removes misaligned pairs (in the Bible a verse
    range printed in one language only), the length test appendices and empty lines.

    Args:
        pairs: (source, target) texts.
        min_words: the fewest words a side may have.
        max_words: the most words a side may have.
        max_ratio: the largest allowed max(len) / min(len) of the two sides, in words.

    """
    if not 1 <= min_words <= max_words or max_ratio < 1:
        raise ValueError(
            f"need 1 <= min_words <= max_words and max_ratio >= 1, got {min_words}, {max_words}, {max_ratio}"
        )
    kept = []
    for source, target in pairs:
        a, b = len(source.split()), len(target.split())
        if min_words <= min(a, b) and max(a, b) <= max_words and max(a, b) <= max_ratio * min(a, b):
            kept.append((source, target))
    return kept


def filter_lines(lines: Sequence[str], *, max_words: int | None) -> list[str]:
    """Drop lines longer than ``max_words`` whitespace-separated words (None keeps all)."""
    return list(lines) if max_words is None else [line for line in lines if len(line.split()) <= max_words]


def parallel_corpus(
    path: str | Path | None = None,
    *,
    min_words: int = 1,
    max_words: int = 100,
    max_ratio: float = 3.0,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
) -> Splits[tuple[str, str]]:
    """(source, target) pairs from a two-column TSV file, split, then filtered with :func:`filter_pairs`.

    Args:
        path: ``source<TAB>target`` a line (plain or ``.gz``); None reads the embedded
            English–Spanish Bible (31,077 verses).
        min_words: see :func:`filter_pairs`.
        max_words: see :func:`filter_pairs`.
        max_ratio: see :func:`filter_pairs`.
        val_fraction: fraction of the lines held out for validation.
        test_fraction: fraction of the lines held out for testing (the same lines in every run).
        seed: seed of the validation split.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed line (named), an empty file, or a split left empty by the filter.

    """
    pairs = read_tsv(EMBEDDED_BIBLE if path is None else path, num_columns=2)
    splits = split_items(pairs, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    splits = splits.map(lambda s: filter_pairs(s, min_words=min_words, max_words=max_words, max_ratio=max_ratio))
    if not splits.train:
        raise ValueError(
            f"no pair of {path or EMBEDDED_BIBLE} passes min_words={min_words}, max_words={max_words}, "
            f"max_ratio={max_ratio}; loosen the filter"
        )
    return splits


def text_corpus(
    paths: str | Path | Sequence[str | Path] | None = None,
    *,
    tsv_column: int = 0,
    max_words: int | None = 200,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
) -> Splits[str]:
    """Texts, one a line, from text files or one column of TSV files; split, then length-filtered.

    Args:
        paths: one or more files, read in order as one corpus. ``.tsv`` / ``.tsv.gz`` files are
            read as two-column TSV and contribute column ``tsv_column``; other files (plain or
            ``.gz``) one text per non-blank line. None reads the English side of the embedded
            Bible (31,077 verses, 4 MB).
        tsv_column: the TSV column to read (0 = source, 1 = target).
        max_words: drop lines longer than this many words (the Bible's last verse carries a
            3,045-word appendix); None keeps every line.
        val_fraction: fraction of the lines held out for validation.
        test_fraction: fraction of the lines held out for testing (the same lines in every run).
        seed: seed of the validation split.

    Raises:
        FileNotFoundError: a missing file.
        ValueError: an empty file, a malformed TSV line (named), or no line left after filtering.

    """
    if paths is None:
        paths = [EMBEDDED_BIBLE]
    elif isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise ValueError("no corpus file given; pass a path, a list of paths, or None for the embedded Bible")
    if tsv_column not in (0, 1):
        raise ValueError(f"tsv_column must be 0 or 1 (a two-column TSV), got {tsv_column}")
    lines: list[str] = []
    for path in map(Path, paths):
        if path.name.endswith((".tsv", ".tsv.gz")):
            lines += [row[tsv_column] for row in read_tsv(path, num_columns=2)]
        else:
            lines += read_lines(path)
    splits = split_items(lines, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    splits = splits.map(lambda s: filter_lines(s, max_words=max_words))
    if not splits.train:
        raise ValueError(f"no line of the corpus has at most max_words={max_words} words; raise max_words")
    return splits
