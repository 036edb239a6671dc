"""Masked-language-model data (BERT, Devlin et al. 2019, arXiv 1810.04805, Sec. 3.1 and App. A.1).

:func:`mask_tokens_for_mlm` selects 15% of the non-special tokens; of those (by default) 80% become
``[MASK]``, 10% a random token and 10% stay, and only they carry a label (-100 elsewhere, the
``ignore_index`` of the loss). :class:`MaskedLanguageModellingCollator` pads a batch and draws that masking anew for
every training batch (RoBERTa's dynamic masking, Liu et al. 2019, Sec. 4.1), while the validation
and test examples are masked once with a fixed seed, so their metrics are comparable across
epochs and runs.

:class:`MaskedLanguageModellingDataModule` reads a corpus (:mod:`research.data.text`), gets a subword tokenizer
(:mod:`research.data.tokenizer`), packs consecutive lines of each split into sequences of at most
``max_length`` tokens, ``[CLS] A [SEP]``, or with ``sentence_pairs`` ``[CLS] A [SEP] B [SEP]``
with segment ids, optionally for next-sentence prediction (off by default: RoBERTa, Sec. 4.2,
found it does not help).

A batch is a dict of (B, N) tensors: ``input_ids``, ``token_type_ids`` (segment ids),
``padding_mask`` (bool, True = padding, as the layers' ``key_padding_mask``) and ``labels``
(the original id at selected positions, -100 elsewhere); with next-sentence prediction also
``next_sentence_label`` (B,), 0 = B follows A, 1 = B is a random block (Hugging Face's convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch
from torch import Tensor
from torch.utils.data import Dataset

from research.data.splits import check_loading
from research.data.text import Splits, text_corpus
from research.data.tokenized import TokenizedCorpusDataModule
from research.data.tokenizer import SpecialTokens

IGNORE_INDEX = -100  # labels of unselected positions: F.cross_entropy's default ignore_index


def mask_tokens_for_mlm(
    input_ids: Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    mask_prob: float = 0.15,
    mask_token_prob: float = 0.8,
    random_token_prob: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking (Sec. 3.1, "Task #1"): select tokens to predict and corrupt the input there.

    Each non-special token is selected independently with probability ``mask_prob``. A selected
    token becomes ``mask_token_id`` with probability ``mask_token_prob``, a token drawn uniformly
    from the non-special vocabulary with probability ``random_token_prob`` (which may, with
    probability 1 / vocabulary, be the token itself), and stays otherwise. Keeping and replacing
    some selected tokens stops the model from learning that only ``[MASK]`` positions matter,
    since ``[MASK]`` never occurs at fine-tuning time.

    Args:
        input_ids: token ids of any shape, e.g. (B, N).
        mask_token_id: the ``[MASK]`` id.
        vocab_size: ids range over [0, vocab_size).
        special_ids: ids never selected nor drawn as random tokens ([PAD], [CLS], [SEP], ...).
        mask_prob: probability that a non-special token is selected.
        mask_token_prob: probability that a selected token becomes ``[MASK]``.
        random_token_prob: probability that a selected token becomes a random token.
        generator: random source; None uses torch's global generator.

    Returns:
        ``(inputs, labels)``, both shaped like ``input_ids``: the corrupted ids, and the original
        ids at selected positions with :data:`IGNORE_INDEX` elsewhere.

    """
    if not (0 <= mask_prob <= 1 and mask_token_prob >= 0 and random_token_prob >= 0):
        raise ValueError(
            f"mask_prob={mask_prob}, mask_token_prob={mask_token_prob} and random_token_prob={random_token_prob} "
            "must be probabilities"
        )
    if mask_token_prob + random_token_prob > 1:
        raise ValueError(
            f"mask_token_prob + random_token_prob = {mask_token_prob + random_token_prob} exceeds 1; "
            "BERT uses 0.8 and 0.1"
        )
    special = torch.as_tensor(list(special_ids), dtype=input_ids.dtype, device=input_ids.device)
    selectable = ~torch.isin(input_ids, special)
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    selected = selectable & (draw < mask_prob)
    labels = input_ids.masked_fill(~selected, IGNORE_INDEX)
    # One more uniform draw splits the selected tokens 80/10/10.
    how = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    to_mask = selected & (how < mask_token_prob)
    to_random = selected & (how >= mask_token_prob) & (how < mask_token_prob + random_token_prob)
    inputs = input_ids.masked_fill(to_mask, mask_token_id)
    vocabulary = torch.arange(vocab_size, device=input_ids.device)
    candidates = vocabulary[~torch.isin(vocabulary, special)]
    picks = torch.randint(len(candidates), (int(to_random.sum()),), generator=generator, device=input_ids.device)
    inputs[to_random] = candidates[picks].to(inputs.dtype)
    return inputs, labels


def pack_lines(lines: Sequence[Sequence[int]], *, budget: int) -> list[list[int]]:
    """Greedily pack consecutive token lines into blocks of at most ``budget`` tokens.

    A line is never split between two blocks unless it alone exceeds ``budget``; then it is cut
    into ``budget``-sized pieces. Packing whole lines follows RoBERTa's FULL-SENTENCES inputs
    (Sec. 4.2) and wastes far fewer positions on padding than one verse a sequence would.

    Args:
        lines: token ids, one list per line, in corpus order; empty lines are skipped.
        budget: the most tokens of a block (the sequence length minus its special tokens).

    Returns:
        The blocks, in corpus order.

    """
    assert budget >= 1, budget  # the datamodule's max_length check leaves room for a token
    blocks: list[list[int]] = []
    current: list[int] = []
    for line in lines:
        pieces = [list(line[i : i + budget]) for i in range(0, len(line), budget)]
        for piece in pieces:
            if len(current) + len(piece) > budget:
                blocks.append(current)
                current = []
            current = current + piece
    if current:
        blocks.append(current)
    return blocks


class MaskedLanguageModellingExamples(Dataset):
    """Token blocks as unmasked BERT inputs: ``[CLS] A [SEP]``, or pairs ``[CLS] A [SEP] B [SEP]``.

    In pair mode example i has A = block i and B = block i + 1. With next-sentence prediction B
    is, with probability 1/2, a block drawn at random instead (never A's own successor nor A),
    drawn anew each time the example is read.

    Args:
        blocks: token ids without special tokens, from :func:`pack_lines`.
        special: the special-token ids of the vocabulary.
        sentence_pairs: build pairs with segment ids 0 (A) and 1 (B).
        next_sentence_prediction: replace B at random and label it (needs ``sentence_pairs``).
        generator: random source of the replacements; None uses torch's global generator.

    """

    def __init__(
        self,
        blocks: Sequence[Sequence[int]],
        *,
        special: SpecialTokens,
        sentence_pairs: bool = False,
        next_sentence_prediction: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if next_sentence_prediction and not sentence_pairs:
            raise ValueError("next_sentence_prediction needs sentence_pairs=True")
        needed = 3 if next_sentence_prediction else 2 if sentence_pairs else 1
        if len(blocks) < needed:
            raise ValueError(
                f"{len(blocks)} token blocks are too few for this mode (it needs {needed}); use a larger corpus"
            )
        self.blocks = [torch.tensor(block, dtype=torch.long) for block in blocks]
        self.special, self.generator = special, generator
        self.sentence_pairs, self.next_sentence_prediction = sentence_pairs, next_sentence_prediction

    def __len__(self) -> int:
        return len(self.blocks) - int(self.sentence_pairs)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        cls, sep = torch.tensor([self.special.cls]), torch.tensor([self.special.sep])
        first = self.blocks[index]
        if not self.sentence_pairs:
            ids = torch.cat([cls, first, sep])
            return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids)}
        follows = index + 1
        second, is_random = self.blocks[follows], False
        if self.next_sentence_prediction and torch.rand((), generator=self.generator) < 0.5:
            # a uniform draw over all blocks but A and its successor
            other = int(torch.randint(len(self.blocks) - 2, (), generator=self.generator))
            other += 2 * (other >= index)
            second, is_random = self.blocks[other], True
        ids = torch.cat([cls, first, sep, second, sep])
        segments = torch.cat(
            [torch.zeros(len(first) + 2, dtype=torch.long), torch.ones(len(second) + 1, dtype=torch.long)]
        )
        example = {"input_ids": ids, "token_type_ids": segments}
        if self.next_sentence_prediction:
            example["next_sentence_label"] = torch.tensor(int(is_random))
        return example


class MaskedLanguageModellingCollator:
    """Pad BERT examples into a batch and mask them (:func:`mask_tokens_for_mlm`), anew every call.

    Examples that already carry ``labels`` (evaluation sets masked once, see
    :meth:`MaskedLanguageModellingDataModule.setup`) are padded as they are.

    Args:
        special: the special-token ids of the vocabulary.
        vocab_size: size of the vocabulary (random replacements are drawn from it).
        mask_prob: probability that a non-special token is selected for prediction.
        mask_token_prob: probability that a selected token becomes ``[MASK]`` (BERT: 0.8).
        random_token_prob: probability that a selected token becomes a random token (BERT: 0.1); the rest
            stay as they are.
        generator: random source; None uses torch's global generator (seeded by the run's seed
            and saved in checkpoints by :class:`~research.callbacks.RNGState`).

    """

    def __init__(
        self,
        *,
        special: SpecialTokens,
        vocab_size: int,
        mask_prob: float = 0.15,
        mask_token_prob: float = 0.8,
        random_token_prob: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        self.special, self.vocab_size, self.mask_prob, self.generator = special, vocab_size, mask_prob, generator
        self.mask_token_prob, self.random_token_prob = mask_token_prob, random_token_prob

    def mask(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """:func:`mask_tokens_for_mlm` with this vocabulary; returns ``(inputs, labels)``."""
        return mask_tokens_for_mlm(
            input_ids,
            mask_token_id=self.special.mask,
            vocab_size=self.vocab_size,
            special_ids=self.special.ids,
            mask_prob=self.mask_prob,
            mask_token_prob=self.mask_token_prob,
            random_token_prob=self.random_token_prob,
            generator=self.generator,
        )

    def __call__(self, examples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Pad to the longest example and mask.

        Args:
            examples: dicts of (N_i,) ``input_ids`` and ``token_type_ids`` (and optionally
                ``labels``, (N_i,), and a scalar ``next_sentence_label``).

        Returns:
            The batch described in the module docstring; (B, N) tensors with N = max N_i.

        """

        def pad(key: str, value: int) -> Tensor:
            return torch.nn.utils.rnn.pad_sequence([e[key] for e in examples], batch_first=True, padding_value=value)

        input_ids = pad("input_ids", self.special.pad)
        lengths = torch.tensor([len(e["input_ids"]) for e in examples])
        batch = {
            "token_type_ids": pad("token_type_ids", 0),
            "padding_mask": torch.arange(input_ids.shape[1]) >= lengths[:, None],
        }
        if "labels" in examples[0]:
            batch["input_ids"], batch["labels"] = input_ids, pad("labels", IGNORE_INDEX)
        else:
            batch["input_ids"], batch["labels"] = self.mask(input_ids)
        if "next_sentence_label" in examples[0]:
            batch["next_sentence_label"] = torch.stack([e["next_sentence_label"] for e in examples])
        return batch


class MaskedLanguageModellingDataModule(TokenizedCorpusDataModule):
    """Masked-language-model batches from a text corpus and a subword tokenizer.

    ``tokenizer``, ``vocab_size``, ``special_tokens`` and ``max_length`` are known before ``setup``
    (see :class:`~research.data.tokenized.TokenizedCorpusDataModule`).

    Args:
        corpus: text file(s), one text a line, or ``.tsv``/``.tsv.gz`` files (see
            :func:`~research.data.text.text_corpus`); None uses the English side of the embedded
            Bible (31,077 verses).
        tsv_column: the column of TSV corpus files to read (0 or 1).
        tokenizer: a ``vocab.txt`` (e.g. bert-base-uncased's) or a ``tokenizer.json``; None trains
            a lossless BPE vocabulary on the training split (:func:`~research.data.tokenizer.train_bpe`).
        vocab_size: the size of the vocabulary to train (ignored with ``tokenizer``).
        lowercase: lower-case (and strip accents from) the text, as BERT "uncased".
        cache_dir: where trained tokenizers are cached, keyed by corpus and options.
        max_length: the most tokens of a sequence, special tokens included.
        max_words: drop corpus lines longer than this many words; None keeps all.
        sentence_pairs: sequences ``[CLS] A [SEP] B [SEP]`` of two consecutive blocks.
        next_sentence_prediction: half the B blocks are random, labelled in ``next_sentence_label``
            (needs ``sentence_pairs``).
        mask_prob: fraction of the non-special tokens selected for prediction.
        mask_token_prob: share of the selected tokens of a training batch that become ``[MASK]`` (BERT: 0.8).
        random_token_prob: share that become a random token (BERT: 0.1); the rest stay as they are. The two
            set the masking strategy of BERT's Table 8 (MASK/RND/SAME); the validation and test sets keep BERT's
            0.8/0.1, so runs with different strategies are measured on the same masked examples.
        batch_size: sequences per batch.
        num_workers: DataLoader worker processes.
        val_fraction: fraction of the corpus lines held out for validation.
        test_fraction: fraction of the lines held out for testing (the same in every run).
        seed: seed of the validation split and of the evaluation sets' fixed masking.

    """

    def __init__(
        self,
        *,
        corpus: str | list[str] | None = None,
        tsv_column: int = 0,
        tokenizer: str | None = None,
        vocab_size: int = 8000,
        lowercase: bool = True,
        cache_dir: str = "data/tokenizers",
        max_length: int = 128,
        max_words: int | None = 200,
        sentence_pairs: bool = False,
        next_sentence_prediction: bool = False,
        mask_prob: float = 0.15,
        mask_token_prob: float = 0.8,
        random_token_prob: float = 0.1,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        seed: int = 0,
    ) -> None:
        check_loading(batch_size, num_workers)
        if max_length < (5 if sentence_pairs else 3):
            raise ValueError(
                f"max_length={max_length} leaves no room for text next to [CLS] and [SEP]; use at least 16"
            )
        if next_sentence_prediction and not sentence_pairs:
            raise ValueError("next_sentence_prediction needs sentence_pairs: true")
        if not 0 < mask_prob < 1:
            raise ValueError(f"mask_prob must lie in (0, 1), got {mask_prob}; BERT uses 0.15")
        if not (0 <= mask_token_prob <= 1 and 0 <= random_token_prob <= 1 and mask_token_prob + random_token_prob <= 1):
            raise ValueError(
                f"mask_token_prob={mask_token_prob} and random_token_prob={random_token_prob} must be probabilities "
                "summing to at most 1 (the rest of the selected tokens stay unchanged); BERT uses 0.8 and 0.1"
            )
        super().__init__(
            corpus_files=[corpus] if isinstance(corpus, str) else corpus or [],
            tokenizer=tokenizer,
            vocab_size=vocab_size,
            lowercase=lowercase,
            cache_dir=cache_dir,
        )
        self.corpus, self.tsv_column = corpus, tsv_column
        self.max_length, self.max_words, self.mask_prob = max_length, max_words, mask_prob
        self.mask_token_prob, self.random_token_prob = mask_token_prob, random_token_prob
        self.sentence_pairs, self.next_sentence_prediction = sentence_pairs, next_sentence_prediction
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.train_set: Dataset | None = None
        self.val_set: list[dict[str, Tensor]] | None = None
        self.test_set: list[dict[str, Tensor]] | None = None

    @cached_property
    def texts(self) -> Splits[str]:
        """The corpus lines of each split."""
        return text_corpus(
            self.corpus,
            tsv_column=self.tsv_column,
            max_words=self.max_words,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            seed=self.seed,
        )

    def tokenizer_texts(self) -> list[str]:
        return self.texts.train

    def _examples(self, texts: list[str], generator: torch.Generator | None = None) -> MaskedLanguageModellingExamples:
        lines = [encoding.ids for encoding in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        # Room for [CLS] A [SEP], or [CLS] A [SEP] B [SEP] with A and B of at most half the rest each.
        budget = (self.max_length - 3) // 2 if self.sentence_pairs else self.max_length - 2
        return MaskedLanguageModellingExamples(
            pack_lines(lines, budget=budget),
            special=self.special_tokens,
            sentence_pairs=self.sentence_pairs,
            next_sentence_prediction=self.next_sentence_prediction,
            generator=generator,
        )

    def _fixed(self, texts: list[str], seed: int) -> list[dict[str, Tensor]]:
        """Evaluation examples with their pairs and masks drawn once, from ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        collator = MaskedLanguageModellingCollator(
            special=self.special_tokens, vocab_size=self.vocab_size, mask_prob=self.mask_prob, generator=generator
        )
        examples = list(self._examples(texts, generator))
        lengths = [len(example["input_ids"]) for example in examples]
        inputs, labels = collator.mask(torch.cat([example["input_ids"] for example in examples]))  # one draw for all
        for example, ids, targets in zip(examples, inputs.split(lengths), labels.split(lengths)):
            example["input_ids"], example["labels"] = ids, targets
        return examples

    def setup(self, stage: str | None = None) -> None:
        """Tokenize and pack the splits (once); the evaluation splits are masked here, for good."""
        if self.train_set is not None:
            return
        self.train_set = self._examples(self.texts.train)
        if not self.texts.val or not self.texts.test:
            raise ValueError(
                "the validation or test split is empty; raise val_fraction/test_fraction or use a larger corpus"
            )
        self.val_set = self._fixed(self.texts.val, self.seed)
        self.test_set = self._fixed(self.texts.test, self.seed + 1)

    def collate(self, split: str) -> MaskedLanguageModellingCollator:
        return MaskedLanguageModellingCollator(
            special=self.special_tokens, vocab_size=self.vocab_size, mask_prob=self.mask_prob,
            mask_token_prob=self.mask_token_prob, random_token_prob=self.random_token_prob,
        )
