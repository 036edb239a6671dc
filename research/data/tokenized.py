"""The base of the datamodules that tokenize a text corpus with one subword vocabulary: MLM and translation."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer

from research.data.splits import SplitDataModule
from research.data.text import check_utf8
from research.data.tokenizer import SpecialTokens, text_tokenizer


class TokenizedCorpusDataModule(SplitDataModule):
    """A corpus and its tokenizer: a given one, or lossless BPE trained on the training split (cached).

    ``tokenizer``, ``vocab_size`` (the tokenizer's: a trained vocabulary may end below the requested
    size) and ``special_tokens`` are known before ``setup``, so that a task can build or check its
    model against them; reading them first reads the corpus and trains (or loads the cached)
    tokenizer, a few seconds for the embedded corpus. A subclass says which texts train the
    vocabulary (:meth:`tokenizer_texts`).

    Args:
        corpus_files: the corpus files given (none: the embedded corpus), checked here so that a
            wrong path stops the run before a Trainer starts.
        tokenizer: a ``vocab.txt`` or ``tokenizer.json`` with BERT's special tokens; None trains one.
        vocab_size: the size of the vocabulary to train (ignored with ``tokenizer``).
        lowercase: lower-case (and strip accents from) the text.
        cache_dir: where trained tokenizers are cached, keyed by the texts and the options.

    Raises:
        FileNotFoundError: a corpus or tokenizer file that does not exist.
        UserError: a corpus file that is not UTF-8.

    """

    def __init__(
        self, *, corpus_files: Sequence[str], tokenizer: str | None, vocab_size: int, lowercase: bool, cache_dir: str
    ) -> None:
        super().__init__()
        for path in corpus_files:
            if not Path(path).is_file():
                raise FileNotFoundError(f"corpus file {path!r} does not exist; check data.corpus in the config")
        check_utf8(*corpus_files)
        if tokenizer is not None and not Path(tokenizer).is_file():
            raise FileNotFoundError(f"tokenizer file {tokenizer!r} does not exist; pass a vocab.txt or tokenizer.json")
        self.tokenizer_file, self.trained_vocab_size = tokenizer, vocab_size
        self.lowercase, self.cache_dir = lowercase, Path(cache_dir)

    def tokenizer_texts(self) -> list[str]:
        """The texts a trained vocabulary is learnt from (the training split's)."""
        raise NotImplementedError(f"{type(self).__name__} must implement tokenizer_texts")

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The loaded tokenizer, or one trained on :meth:`tokenizer_texts` (cached in ``cache_dir``)."""
        return text_tokenizer(
            self.tokenizer_texts(),
            tokenizer_file=self.tokenizer_file,
            vocab_size=self.trained_vocab_size,
            cache_dir=self.cache_dir,
            lowercase=self.lowercase,
        )

    @property
    def vocab_size(self) -> int:
        """Number of tokens of the tokenizer's vocabulary: the model's embedding rows."""
        return self.tokenizer.get_vocab_size()

    @property
    def special_tokens(self) -> SpecialTokens:
        """Ids of ``[PAD]``, ``[CLS]``, ``[SEP]``, ``[MASK]`` and the others."""
        return SpecialTokens.of(self.tokenizer)
