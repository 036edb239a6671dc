"""Translation data: parallel sentence pairs, one shared subword vocabulary, batches of similar lengths.

:class:`TranslationDataModule` reads ``source<TAB>target`` pairs (:func:`~research.data.text.parallel_corpus`;
the embedded English–Spanish Bible by default), trains one lossless BPE vocabulary on both sides of
the training split (Vaswani et al. 2017, Sec. 5.1: "a shared source-target vocabulary"), and hands
out batches of pairs of similar length (:class:`LengthBucketSampler`), so that little of a batch is
padding (:func:`padding_fraction`).

Both sides are encoded as ``[CLS] tokens [SEP]``: ``[CLS]`` is the decoder's BOS and ``[SEP]`` the
EOS of both sides. A batch is a dict:

- ``src``: (B, S) source ids, padded with ``[PAD]``.
- ``tgt_in``: (B, T) decoder input, ``[CLS] y_1 ... y_n`` (teacher forcing).
- ``tgt_out``: (B, T) targets, ``y_1 ... y_n [SEP]``: ``tgt_in`` shifted left by one.
- ``index``: (B,) position of each pair in its split (the task picks its BLEU subset by it).
- ``src_text``, ``tgt_text``: the raw texts, lists of B strings (``tgt_text`` is the BLEU reference).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from functools import cached_property

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from research.data.loaders import TEST_ORDER_SEED
from research.data.text import Splits, parallel_corpus
from research.data.tokenized import TokenizedCorpusDataModule


class TranslationPairs(Dataset):
    """Tokenized (source, target) pairs with their texts.

    Args:
        src_ids: source token ids of each pair, special tokens included.
        tgt_ids: target token ids of each pair, ``[CLS] ... [SEP]``.
        pairs: the (source, target) texts.

    """

    def __init__(self, src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]], pairs: Sequence[tuple]):
        if not len(src_ids) == len(tgt_ids) == len(pairs):
            raise ValueError(f"got {len(src_ids)} sources, {len(tgt_ids)} targets and {len(pairs)} texts")
        self.src = [torch.tensor(ids, dtype=torch.long) for ids in src_ids]
        self.tgt = [torch.tensor(ids, dtype=torch.long) for ids in tgt_ids]
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, index: int) -> dict:
        return {
            "index": index,
            "src": self.src[index],
            "tgt": self.tgt[index],
            "src_text": self.pairs[index][0],
            "tgt_text": self.pairs[index][1],
        }

    @property
    def src_lengths(self) -> list[int]:
        """Length of each padded source row: its tokens."""
        return [len(ids) for ids in self.src]

    @property
    def tgt_lengths(self) -> list[int]:
        """Length of each decoder row: the target's tokens minus one (``tgt_in`` drops the final EOS)."""
        return [len(ids) - 1 for ids in self.tgt]


class TranslationCollator:
    """Pad pairs into a batch (see the module docstring for its keys).

    Args:
        pad_id: the ``[PAD]`` id.

    """

    def __init__(self, *, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: Sequence[dict]) -> dict:
        def pad(tensors: list[Tensor]) -> Tensor:
            return torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=self.pad_id)

        return {
            "src": pad([e["src"] for e in examples]),
            "tgt_in": pad([e["tgt"][:-1] for e in examples]),
            "tgt_out": pad([e["tgt"][1:] for e in examples]),
            "index": torch.tensor([e["index"] for e in examples]),
            "src_text": [e["src_text"] for e in examples],
            "tgt_text": [e["tgt_text"] for e in examples],
        }


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of examples of similar length: shuffled pools, each sorted by length, cut into batches.

    An epoch shuffles the examples, splits them into pools of ``pool_size`` examples, sorts each
    pool by length and cuts it into batches of ``batch_size`` examples, or of as many examples as
    fit ``max_tokens`` padded tokens (a batch of n examples of longest length m costs n * m, as in
    fairseq's ``max_tokens``); the batches are then shuffled. Sorting within pools, not the whole
    set, keeps batches different from epoch to epoch (Vaswani et al. 2017, Sec. 5.1: "sentence
    pairs were batched together by approximate sequence length"). Without ``shuffle`` the order is
    fixed, whatever the epoch: epoch 0's pools and batches (evaluation sees sentences of every
    length and topic in its first batches, and the same ones in every run with the same ``seed``).

    The order depends only on ``seed`` and the epoch (:meth:`set_epoch`), so a run is reproducible
    and a resumed run sees the batches it would have seen. Under DDP every process draws the same
    batches and keeps every ``num_replicas``-th one from ``rank`` on (training drops the last few so
    that every process takes as many steps); Lightning cannot inject its own distributed sampler
    into this one, so set ``trainer.use_distributed_sampler: false``.

    Args:
        lengths: the length of each example (e.g. max(source, target) tokens).
        batch_size: examples per batch; exactly one of ``batch_size`` and ``max_tokens``.
        max_tokens: padded tokens per batch (an example longer than it gets a batch of its own).
        shuffle: a new order every epoch (training); False keeps epoch 0's (evaluation).
        pool_size: examples sorted together; None takes 100 batches' worth.
        seed: seed of the shuffling, combined with the epoch.
        num_replicas: processes sharing the batches (DDP world size).
        rank: this process's share.

    """

    def __init__(
        self,
        lengths: Sequence[int],
        *,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        shuffle: bool = True,
        pool_size: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if (batch_size is None) == (max_tokens is None):
            raise ValueError(
                f"give exactly one of batch_size and max_tokens, got batch_size={batch_size}, max_tokens={max_tokens}"
            )
        if (batch_size or max_tokens) < 1:
            raise ValueError(f"batch_size/max_tokens must be at least 1, got {batch_size or max_tokens}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        if not lengths:
            raise ValueError("cannot batch an empty split; check the corpus and its filters")
        self.lengths = list(lengths)
        self.batch_size, self.max_tokens, self.shuffle, self.seed = batch_size, max_tokens, shuffle, seed
        if pool_size is None:
            average = sum(self.lengths) / len(self.lengths)
            pool_size = 100 * (batch_size or max(1, int(max_tokens / average)))
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        self.pool_size, self.num_replicas, self.rank = pool_size, num_replicas, rank
        self.epoch = 0

    @property
    def sampler(self) -> LengthBucketSampler:
        # Lightning calls set_epoch on ``dataloader.sampler`` and ``dataloader.batch_sampler.sampler``
        # before each epoch; this makes it reach us.
        return self

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's order (Lightning calls it before each epoch)."""
        self.epoch = epoch

    def _cut(self, pool: list[int]) -> list[list[int]]:
        if self.batch_size is not None:
            return [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        batches, current, longest = [], [], 0
        for i in pool:
            longest_with_i = max(longest, self.lengths[i])
            if current and longest_with_i * (len(current) + 1) > self.max_tokens:
                batches.append(current)
                current, longest_with_i = [], self.lengths[i]
            current.append(i)
            longest = longest_with_i
        if current:
            batches.append(current)
        return batches

    def batches(self) -> list[list[int]]:
        """This epoch's batches of this process, as lists of example indices."""
        batches = self._all_batches()
        if self.num_replicas == 1:
            return batches
        if self.shuffle:  # as many batches on every process, or DDP's gradient all-reduce would wait forever
            batches = batches[: len(batches) - len(batches) % self.num_replicas]
        return batches[self.rank :: self.num_replicas]

    def _all_batches(self) -> list[list[int]]:
        epoch = self.epoch if self.shuffle else 0
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        batches = []
        for start in range(0, len(order), self.pool_size):
            pool = sorted(order[start : start + self.pool_size], key=lambda i: self.lengths[i])
            batches += self._cut(pool)
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        if self.batch_size is None:
            return len(self.batches())
        full, rest = divmod(len(self.lengths), self.pool_size)  # each pool is cut on its own
        total = full * math.ceil(self.pool_size / self.batch_size) + math.ceil(rest / self.batch_size)
        if not self.shuffle:
            return len(range(self.rank, total, self.num_replicas))
        return total // self.num_replicas


def padding_fraction(batches: Sequence[Sequence[int]], *, src_lengths: Sequence[int], tgt_lengths: Sequence[int]):
    """The fraction of the padded source and decoder tokens of ``batches`` that are padding.

    Args:
        batches: lists of example indices.
        src_lengths: tokens of each source row.
        tgt_lengths: tokens of each decoder row.

    Returns:
        padding / (padding + tokens), a float in [0, 1).

    """
    padded = tokens = 0
    for batch in batches:
        for lengths in (src_lengths, tgt_lengths):
            sizes = [lengths[i] for i in batch]
            padded += max(sizes) * len(sizes)
            tokens += sum(sizes)
    return (padded - tokens) / max(padded, 1)


class TranslationDataModule(TokenizedCorpusDataModule):
    """Sentence pairs for translation, with one subword vocabulary shared by both languages.

    ``tokenizer``, ``vocab_size``, ``special_tokens`` and ``max_length`` are known before ``setup``
    (see :class:`~research.data.tokenized.TokenizedCorpusDataModule`; about 2 s for the embedded corpus).

    Args:
        corpus: a two-column ``source<TAB>target`` file (plain or ``.gz``); None reads the
            embedded English–Spanish Bible (31,077 verses).
        reverse: translate the second column into the first (Spanish to English for the Bible).
        tokenizer: a ``vocab.txt`` or ``tokenizer.json`` with BERT's special tokens; None trains
            lossless BPE on both sides of the training split (cached in ``cache_dir``, keyed by the
            texts and the options).
        vocab_size: the size of the vocabulary to train (ignored with ``tokenizer``).
        lowercase: lower-case (and strip accents from) the text; False keeps Spanish accents.
        cache_dir: where trained tokenizers are cached.
        max_length: the most tokens of a side, ``[CLS]`` and ``[SEP]`` included; longer pairs are
            dropped from every split (none of the embedded Bible's with the default filters).
        min_words: drop pairs with a side of fewer words (see :func:`~research.data.text.filter_pairs`).
        max_words: drop pairs with a side of more words.
        max_ratio: drop pairs whose sides' word counts differ by more than this factor.
        batch_size: pairs per training batch; set it to None to batch by ``max_tokens``.
        max_tokens: padded tokens per side of a training batch, instead of ``batch_size``.
        eval_batch_size: pairs per validation/test batch (sorted by length, fixed order).
        pool_size: training pairs sorted by length together (see :class:`LengthBucketSampler`);
            None takes 100 batches' worth.
        num_workers: DataLoader worker processes.
        val_fraction: fraction of the corpus lines held out for validation.
        test_fraction: fraction held out for testing (the same lines in every run).
        seed: seed of the validation split and of the batch order.

    """

    def __init__(
        self,
        *,
        corpus: str | None = None,
        reverse: bool = False,
        tokenizer: str | None = None,
        vocab_size: int = 8000,
        lowercase: bool = False,
        cache_dir: str = "data/tokenizers",
        max_length: int = 128,
        min_words: int = 1,
        max_words: int = 100,
        max_ratio: float = 3.0,
        batch_size: int | None = 64,
        max_tokens: int | None = None,
        eval_batch_size: int = 64,
        pool_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        seed: int = 0,
    ) -> None:
        if (batch_size is None) == (max_tokens is None):
            raise ValueError(
                f"give exactly one of batch_size and max_tokens (set the other to null), got "
                f"batch_size={batch_size}, max_tokens={max_tokens}"
            )
        if eval_batch_size < 1 or num_workers < 0:
            raise ValueError(f"need eval_batch_size >= 1 and num_workers >= 0, got {eval_batch_size}, {num_workers}")
        if max_length < 3:
            raise ValueError(f"max_length={max_length} leaves no room for text next to [CLS] and [SEP]; use 128")
        super().__init__(
            corpus_files=[] if corpus is None else [corpus],
            tokenizer=tokenizer,
            vocab_size=vocab_size,
            lowercase=lowercase,
            cache_dir=cache_dir,
        )
        self.corpus, self.reverse = corpus, reverse
        self.max_length, self.min_words, self.max_words, self.max_ratio = max_length, min_words, max_words, max_ratio
        self.batch_size, self.max_tokens, self.eval_batch_size = batch_size, max_tokens, eval_batch_size
        self.pool_size, self.num_workers = pool_size, num_workers
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.train_set: TranslationPairs | None = None
        self.val_set: TranslationPairs | None = None
        self.test_set: TranslationPairs | None = None

    @cached_property
    def pairs(self) -> Splits[tuple[str, str]]:
        """The (source, target) texts of each split, in the translation direction."""
        splits = parallel_corpus(
            self.corpus,
            min_words=self.min_words,
            max_words=self.max_words,
            max_ratio=self.max_ratio,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            seed=self.seed,
        )
        return splits.map(lambda pairs: [(b, a) for a, b in pairs]) if self.reverse else splits

    def tokenizer_texts(self) -> list[str]:
        """Both sides of the training pairs: one vocabulary for both languages."""
        train = self.pairs.train
        return [source for source, _ in train] + [target for _, target in train]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens dropped: the text they encode, as the tokenizer normalised it."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _encode(self, pairs: list[tuple[str, str]]) -> TranslationPairs:
        encode = self.tokenizer.encode_batch  # the post-processor wraps each text as [CLS] ... [SEP]
        src = [e.ids for e in encode([source for source, _ in pairs])]
        tgt = [e.ids for e in encode([target for _, target in pairs])]
        kept = [i for i in range(len(pairs)) if max(len(src[i]), len(tgt[i])) <= self.max_length]
        return TranslationPairs([src[i] for i in kept], [tgt[i] for i in kept], [pairs[i] for i in kept])

    def setup(self, stage: str | None = None) -> None:
        """Tokenize the splits (once)."""
        if self.train_set is not None:
            return
        pairs = self.pairs
        self.train_set, self.val_set, self.test_set = map(self._encode, (pairs.train, pairs.val, pairs.test))
        for name, split in (("training", self.train_set), ("validation", self.val_set), ("test", self.test_set)):
            if not len(split):
                raise ValueError(
                    f"the {name} split is empty after filtering (max_length={self.max_length}); raise "
                    "val_fraction/test_fraction or max_length, or use a larger corpus"
                )

    def split(self, name: str) -> TranslationPairs:
        """The tokenized pairs of split ``name`` ("train", "val" or "test"); call :meth:`setup` first."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; choose 'train', 'val' or 'test'")
        if self.train_set is None:
            raise ValueError("the datamodule is not set up; call setup() first")
        return {"train": self.train_set, "val": self.val_set, "test": self.test_set}[name]

    def batch_sampler(self, split: str) -> LengthBucketSampler:
        """The batch sampler of ``split`` ("train", "val", "test"; "predict": test's); call :meth:`setup` first."""
        split = "test" if split == "predict" else split
        dataset = self.split(split)
        lengths = [max(s, t) for s, t in zip(dataset.src_lengths, dataset.tgt_lengths)]
        trainer = self.trainer  # under DDP each process takes its share of the batches
        shard = dict(num_replicas=trainer.world_size, rank=trainer.global_rank) if trainer is not None else {}
        if split == "train":
            return LengthBucketSampler(
                lengths,
                batch_size=self.batch_size,
                max_tokens=self.max_tokens,
                pool_size=self.pool_size,
                seed=self.seed,
                **shard,
            )
        seed = self.seed if split == "val" else TEST_ORDER_SEED
        return LengthBucketSampler(lengths, batch_size=self.eval_batch_size, shuffle=False, seed=seed, **shard)

    def collate(self, split: str) -> TranslationCollator:
        return TranslationCollator(pad_id=self.special_tokens.pad)  # draws nothing at random

    def padding_fraction(self, split: str = "train", *, epoch: int = 0) -> float:
        """Fraction of the padded tokens (source and decoder input) of one epoch of ``split`` that are padding."""
        sampler = self.batch_sampler(split)
        sampler.set_epoch(epoch)
        dataset = self.split(split)
        return padding_fraction(sampler.batches(), src_lengths=dataset.src_lengths, tgt_lengths=dataset.tgt_lengths)
