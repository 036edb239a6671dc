"""Subword tokenizers over HF ``tokenizers``: lossless byte-fallback BPE that we train, BERT WordPiece for a vocab.txt.

A vocabulary we train (:func:`train_bpe`, :func:`cached_bpe`) is reversible: for any text,
``decode(encode(text), skip_special_tokens=True) == normalise(text)``, where ``normalise`` is the
tokenizer's documented normaliser (``tokenizer.normalizer.normalize_str``): Unicode NFC, plus
lower-casing and accent stripping where a config asks for them (``lowercase``, ``strip_accents``).
So a perfect translation decodes to its reference exactly and scores 100 BLEU. It is the scheme of
SentencePiece (Kudo & Richardson 2018, arXiv 1808.06226) with BPE (Sennrich et al. 2016,
arXiv 1508.07909):

- a Metaspace pre-tokeniser marks each space as ``▁`` (U+2581) and prepends one to the text, so
  the pieces are joined back without guessing where spaces went (BERT's decoder puts spaces
  around ``¿ ’ “ ”``, which SacreBLEU does not undo); punctuation is then split off as pieces of
  its own, as BERT does (``"▁¿Por"`` -> ``"▁" "¿" "Por"``), so that no vocabulary entry is a word
  glued to a comma (without it, a fifth of an 8,000-token Bible vocabulary was such entries, and
  the seq2seq Transformer's test BLEU was 20.75 against 24.85 with WordPiece); splitting drops no
  character, so decoding is unchanged;
- BPE over every character of the training text (no alphabet limit), with byte fallback: a
  character outside that alphabet is encoded as its UTF-8 bytes, the tokens ``<0x00>`` ...
  ``<0xFF>`` (ids 5-260 of every trained vocabulary), never as ``[UNK]``, and decodes back to the
  same character. The one text that does not survive is a literal ``▁`` (it decodes to a space).

Both keep BERT's special tokens (ids 0-4) and its post-processor, which wraps a text as
``[CLS] A [SEP]`` and a pair as ``[CLS] A [SEP] B [SEP]`` with segment ids 0 and 1: ``[CLS]`` is
the decoder's BOS and ``[SEP]`` its EOS in translation, and MLM masks around them.

- :func:`cached_bpe` trains a vocabulary on a training split (seconds for the 4 MB embedded
  corpus) and caches it as ``<cache_dir>/bpe-<vocab_size>-<hash>.json``, the hash covering the
  texts, every option and the pipeline's version, so another corpus, size or pipeline never
  reuses a stale file.
- :func:`load_tokenizer` reads a ``vocab.txt`` (such as bert-base-uncased's, 30,522 lines) with
  BERT's own WordPiece pipeline, or a ``tokenizer.json`` saved by ``tokenizers``.

A translation model shares one vocabulary between its languages by training on both sides,
``cached_bpe(sources + targets, ..., lowercase=False)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

#: BERT's special tokens; trained vocabularies put them first, in this order (ids 0-4).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: The byte-fallback tokens of a trained vocabulary, one per byte value (ids 5-260), as in SentencePiece.
BYTE_TOKENS = tuple(f"<0x{byte:02X}>" for byte in range(256))
#: SentencePiece's word-boundary mark: a space, and the start of the text.
SPACE_MARK = "\u2581"
# Bump when the pipeline below changes, so that old cache files are not reused.
# 2: lossless Metaspace + byte-fallback BPE instead of BERT-style WordPiece (issue 13); 3: punctuation split off.
_PIPELINE_VERSION = 3


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


def _bert_post_processor(tokenizer: Tokenizer) -> None:
    special = SpecialTokens.of(tokenizer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", special.cls), ("[SEP]", special.sep)],
    )


def bert_pipeline(tokenizer: Tokenizer, *, lowercase: bool = True, strip_accents: bool | None = None) -> Tokenizer:
    """Give a WordPiece ``tokenizer`` BERT's normaliser, pre-tokeniser, decoder and post-processor.

    This is the pipeline of a BERT ``vocab.txt`` (:func:`load_tokenizer`), kept as BERT has it so
    that ids match Hugging Face's ``BertTokenizer``. It is lossy by design: decoding joins words
    with spaces wherever the pre-tokeniser split (``"¿Por"`` comes back as ``"¿ Por"``), drops
    control characters and, uncased, case and accents. Use :func:`train_bpe` for text that must
    come back as it went in (translation output, BLEU).

    Args:
        tokenizer: a ``Tokenizer(models.WordPiece(...))``; changed in place and returned.
        lowercase: lower-case the text (BERT "uncased").
        strip_accents: remove accents; None follows ``lowercase``, as BERT does.

    Returns:
        ``tokenizer``.

    """
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=strip_accents)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    _bert_post_processor(tokenizer)
    return tokenizer


def normaliser(*, lowercase: bool, strip_accents: bool | None = None) -> normalizers.Normalizer:
    """The only change a trained tokenizer makes to a text: NFC, then optional lower-casing and accent stripping.

    Args:
        lowercase: lower-case the text.
        strip_accents: remove accents (``"él"`` -> ``"el"``); None follows ``lowercase``, as BERT
            "uncased" does (keep them, ``False``, where they carry meaning, e.g. Spanish "el"/"él").

    """
    steps = [normalizers.NFC()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    if lowercase if strip_accents is None else strip_accents:
        steps += [normalizers.NFD(), normalizers.StripAccents(), normalizers.NFC()]
    return normalizers.Sequence(steps)


def lossless_pipeline(tokenizer: Tokenizer, *, lowercase: bool, strip_accents: bool | None = None) -> Tokenizer:
    """Give a byte-fallback BPE ``tokenizer`` the reversible pipeline of the module docstring.

    Args:
        tokenizer: a ``Tokenizer(models.BPE(..., byte_fallback=True))``; changed in place and returned.
        lowercase: see :func:`normaliser`.
        strip_accents: see :func:`normaliser`.

    Returns:
        ``tokenizer``.

    """
    tokenizer.normalizer = normaliser(lowercase=lowercase, strip_accents=strip_accents)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=SPACE_MARK, prepend_scheme="always", split=True),
            pre_tokenizers.Punctuation(behavior="isolated"),  # "▁said," -> "▁said" ","; loses no character
        ]
    )
    # SentencePiece's decoder (as in Llama's tokenizer.json): marks back to spaces, byte tokens back to
    # characters, one string, then drop the one space that the pre-tokeniser prepended.
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace(SPACE_MARK, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    if tokenizer.get_vocab_size() > 0:  # an untrained tokenizer gets its post-processor after training
        _bert_post_processor(tokenizer)
    return tokenizer


def train_bpe(
    texts: Sequence[str],
    *,
    vocab_size: int,
    lowercase: bool = True,
    strip_accents: bool | None = None,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a lossless byte-fallback BPE vocabulary of about ``vocab_size`` tokens on ``texts``.

    Args:
        texts: the training split only, so that validation text never shapes the vocabulary.
        vocab_size: the most tokens, the five :data:`SPECIAL_TOKENS` and the 256
            :data:`BYTE_TOKENS` included (a small corpus may yield fewer: read
            ``get_vocab_size()``; every character of ``texts`` gets a token, so an alphabet
            larger than the room left makes it more).
        lowercase: see :func:`normaliser`.
        strip_accents: see :func:`normaliser`.
        min_frequency: the fewest occurrences a merged piece needs.

    Raises:
        ValueError: no text, or a vocabulary too small for the special and byte tokens.

    """
    reserved = len(SPECIAL_TOKENS) + len(BYTE_TOKENS)
    if vocab_size <= reserved:
        raise ValueError(
            f"vocab_size={vocab_size} leaves no room next to the {len(SPECIAL_TOKENS)} special tokens and "
            f"{len(BYTE_TOKENS)} byte tokens; use at least {reserved + 100}"
        )
    if not any(text.strip() for text in texts):
        raise ValueError("cannot train a tokenizer on an empty corpus")
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]", byte_fallback=True))
    lossless_pipeline(tokenizer, lowercase=lowercase, strip_accents=strip_accents)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        # The byte tokens take ids 5-260 this way; they are made plain vocabulary below. The alphabet is
        # unlimited by default: every character of the texts gets a token.
        special_tokens=[*SPECIAL_TOKENS, *BYTE_TOKENS],
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    # Byte tokens must be ordinary tokens: decoding skips special tokens (skip_special_tokens=True),
    # and an added token would also match the literal text "<0x41>" in the input.
    state = json.loads(tokenizer.to_str())
    state["added_tokens"] = [token for token in state["added_tokens"] if token["content"] in SPECIAL_TOKENS]
    state["model"]["byte_fallback"] = True
    tokenizer = Tokenizer.from_str(json.dumps(state))
    return lossless_pipeline(tokenizer, lowercase=lowercase, strip_accents=strip_accents)


def cache_key(texts: Sequence[str], **options) -> str:
    """A hex digest of ``texts``, the training ``options`` and the pipeline's version: the cache file's identity."""
    digest = hashlib.sha256(repr((_PIPELINE_VERSION, sorted(options.items()), len(texts))).encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def cached_bpe(
    texts: Sequence[str],
    *,
    vocab_size: int,
    cache_dir: str | Path,
    lowercase: bool = True,
    strip_accents: bool | None = None,
    min_frequency: int = 2,
) -> Tokenizer:
    """:func:`train_bpe`, or the tokenizer it trained before on the same texts and options.

    Args:
        texts: the training split.
        vocab_size: see :func:`train_bpe`.
        cache_dir: folder of the cached ``bpe-<vocab_size>-<hash>.json`` files (created).
        lowercase: see :func:`normaliser`.
        strip_accents: see :func:`normaliser`.
        min_frequency: see :func:`train_bpe`.

    """
    options = dict(vocab_size=vocab_size, lowercase=lowercase, strip_accents=strip_accents, min_frequency=min_frequency)
    path = Path(cache_dir) / f"bpe-{vocab_size}-{cache_key(texts, **options)}.json"
    if path.is_file():
        return load_tokenizer(path)
    tokenizer = train_bpe(texts, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: under DDP every rank may train at once, and a reader never sees half a file.
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tokenizer.save(str(partial))
    os.replace(partial, path)
    return tokenizer


def load_tokenizer(path: str | Path, *, lowercase: bool = True, strip_accents: bool | None = None) -> Tokenizer:
    """Read a WordPiece ``vocab.txt`` (one token a line) or a saved ``tokenizer.json``.

    A ``vocab.txt`` gets BERT's own uncased (or cased) WordPiece pipeline, :func:`bert_pipeline`,
    so that its ids are the pretrained model's; that pipeline is lossy (it does not give back the
    text's spacing around punctuation, nor case and accents when uncased), so BLEU on its decoded
    text is below 100 even for a perfect hypothesis. A ``tokenizer.json`` keeps its own pipeline.

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


def text_tokenizer(
    texts: Sequence[str], *, tokenizer_file: str | Path | None, vocab_size: int, cache_dir: str | Path, lowercase: bool
) -> Tokenizer:
    """The tokenizer a text datamodule uses: ``tokenizer_file`` loaded, or lossless BPE trained on ``texts`` (cached).

    Truncation and padding are switched off: sequence lengths are the datamodule's to manage
    (packing, length filters, bucketed padding), not the tokenizer's.
    """
    if tokenizer_file is not None:
        tokenizer = load_tokenizer(tokenizer_file, lowercase=lowercase)
    else:
        tokenizer = cached_bpe(texts, vocab_size=vocab_size, cache_dir=cache_dir, lowercase=lowercase)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer
