"""WordPiece tokenizers (Wu et al. 2016, arXiv 1609.08144; BERT, Devlin et al. 2019, Sec. 3) over HF ``tokenizers``.

Every function returns a plain ``tokenizers.Tokenizer`` with BERT's pipeline: BERT's normaliser
(clean-up, optional lower-casing and accent stripping), BERT's pre-tokeniser (whitespace and
punctuation), WordPiece with ``##`` continuations, and the post-processor that wraps a text as
``[CLS] A [SEP]`` and a pair as ``[CLS] A [SEP] B [SEP]`` with segment ids 0 and 1.

- :func:`cached_wordpiece` trains a vocabulary on a training split (seconds for the 4 MB
  embedded corpus) and caches it as ``<cache_dir>/wordpiece-<vocab_size>-<hash>.json``, the hash
  covering the texts and every option, so another corpus or size never reuses a stale file.
- :func:`load_tokenizer` reads a ``vocab.txt`` (such as bert-base-uncased's, 30,522 lines) or a
  ``tokenizer.json`` saved by ``tokenizers``.

A translation model shares one vocabulary between its languages by training on both sides,
``cached_wordpiece(sources + targets, ..., lowercase=False)``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

#: BERT's special tokens; trained vocabularies put them first, in this order (ids 0-4).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Bump when the pipeline below changes, so that old cache files are not reused.
_PIPELINE_VERSION = 1


@dataclass(frozen=True)
class SpecialTokens:
    """The ids of BERT's special tokens in one vocabulary."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> SpecialTokens:
        """Look the special tokens up in ``tokenizer``'s vocabulary.

        Raises:
            ValueError: a special token missing from the vocabulary.

        """
        ids = [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
        missing = [token for token, i in zip(SPECIAL_TOKENS, ids) if i is None]
        if missing:
            raise ValueError(
                f"the vocabulary lacks the special tokens {missing}; a BERT vocabulary needs all of "
                f"{list(SPECIAL_TOKENS)} (add them as lines of the vocab.txt)"
            )
        return cls(*ids)

    @property
    def ids(self) -> tuple[int, ...]:
        """All five ids: tokens that masking must never select."""
        return astuple(self)


def bert_pipeline(tokenizer: Tokenizer, *, lowercase: bool = True, strip_accents: bool | None = None) -> Tokenizer:
    """Give a WordPiece ``tokenizer`` BERT's normaliser, pre-tokeniser, decoder and post-processor.

    Args:
        tokenizer: a ``Tokenizer(models.WordPiece(...))``; changed in place and returned.
        lowercase: lower-case the text (BERT "uncased").
        strip_accents: remove accents; None follows ``lowercase``, as BERT does (keep accents,
            ``False``, for languages where they carry meaning, e.g. Spanish "el"/"él").

    Returns:
        ``tokenizer``.

    """
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=strip_accents)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    if tokenizer.get_vocab_size() > 0:  # an untrained tokenizer gets its post-processor after training
        special = SpecialTokens.of(tokenizer)
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", special.cls), ("[SEP]", special.sep)],
        )
    return tokenizer


def train_wordpiece(
    texts: Sequence[str],
    *,
    vocab_size: int,
    lowercase: bool = True,
    strip_accents: bool | None = None,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a WordPiece vocabulary of at most ``vocab_size`` tokens on ``texts``.

    Args:
        texts: the training split only, so that validation text never shapes the vocabulary.
        vocab_size: the most tokens, the five :data:`SPECIAL_TOKENS` included (a small corpus may
            yield fewer: read ``get_vocab_size()``).
        lowercase: see :func:`bert_pipeline`.
        strip_accents: see :func:`bert_pipeline`.
        min_frequency: the fewest occurrences a merged piece needs.

    Raises:
        ValueError: no text, or a vocabulary too small for the special tokens.

    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} leaves no room next to the {len(SPECIAL_TOKENS)} special tokens")
    if not any(text.strip() for text in texts):
        raise ValueError("cannot train a tokenizer on an empty corpus")
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    bert_pipeline(tokenizer, lowercase=lowercase, strip_accents=strip_accents)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return bert_pipeline(tokenizer, lowercase=lowercase, strip_accents=strip_accents)


def cache_key(texts: Sequence[str], **options) -> str:
    """A hex digest of ``texts`` and the training ``options``: the cache file's identity."""
    digest = hashlib.sha256(repr((_PIPELINE_VERSION, sorted(options.items()), len(texts))).encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def cached_wordpiece(
    texts: Sequence[str],
    *,
    vocab_size: int,
    cache_dir: str | Path,
    lowercase: bool = True,
    strip_accents: bool | None = None,
    min_frequency: int = 2,
) -> Tokenizer:
    """:func:`train_wordpiece`, or the tokenizer it trained before on the same texts and options.

    Args:
        texts: the training split.
        vocab_size: see :func:`train_wordpiece`.
        cache_dir: folder of the cached ``wordpiece-<vocab_size>-<hash>.json`` files (created).
        lowercase: see :func:`bert_pipeline`.
        strip_accents: see :func:`bert_pipeline`.
        min_frequency: see :func:`train_wordpiece`.

    """
    options = dict(vocab_size=vocab_size, lowercase=lowercase, strip_accents=strip_accents, min_frequency=min_frequency)
    path = Path(cache_dir) / f"wordpiece-{vocab_size}-{cache_key(texts, **options)}.json"
    if path.is_file():
        return load_tokenizer(path)
    tokenizer = train_wordpiece(texts, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: under DDP every rank may train at once, and a reader never sees half a file.
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tokenizer.save(str(partial))
    os.replace(partial, path)
    return tokenizer


def load_tokenizer(path: str | Path, *, lowercase: bool = True, strip_accents: bool | None = None) -> Tokenizer:
    """Read a WordPiece ``vocab.txt`` (one token a line) or a saved ``tokenizer.json``.

    Args:
        path: a ``.json`` file saved by ``tokenizers`` (its own pipeline is kept), or any other
            file read as a ``vocab.txt`` (the token on line i gets id i - 1).
        lowercase: for a ``vocab.txt``, see :func:`bert_pipeline` (True for bert-base-uncased).
        strip_accents: for a ``vocab.txt``, see :func:`bert_pipeline`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an empty or unreadable file, or a vocabulary without BERT's special tokens.

    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {str(path)!r} does not exist; pass a vocab.txt or tokenizer.json")
    if path.suffix == ".json":
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises its Rust errors as a bare Exception
            raise ValueError(f"cannot read tokenizer {str(path)!r} ({err}); delete it if it is a stale cache") from err
        SpecialTokens.of(tokenizer)
        return tokenizer
    if not path.read_text(encoding="utf-8").strip():
        raise ValueError(f"vocabulary file {str(path)!r} is empty; it needs one token a line")
    tokenizer = Tokenizer(models.WordPiece.from_file(str(path), unk_token="[UNK]"))
    return bert_pipeline(tokenizer, lowercase=lowercase, strip_accents=strip_accents)


def wordpiece_tokenizer(
    texts: Sequence[str], *, tokenizer_file: str | Path | None, vocab_size: int, cache_dir: str | Path, lowercase: bool
) -> Tokenizer:
    """The tokenizer a text datamodule uses: ``tokenizer_file`` loaded, or WordPiece trained on ``texts`` (cached).

    Truncation and padding are switched off: sequence lengths are the datamodule's to manage
    (packing, length filters, bucketed padding), not the tokenizer's.
    """
    if tokenizer_file is not None:
        tokenizer = load_tokenizer(tokenizer_file, lowercase=lowercase)
    else:
        tokenizer = cached_wordpiece(texts, vocab_size=vocab_size, cache_dir=cache_dir, lowercase=lowercase)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer
