import lightning as L
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch

from research.data import MaskedLanguageModellingCollator, MaskedLanguageModellingDataModule, mask_tokens_for_mlm
from research.data.mlm import IGNORE_INDEX, MaskedLanguageModellingExamples, pack_lines
from research.data.text import EMBEDDED_BIBLE, read_tsv
from research.data.tokenizer import SpecialTokens

SPECIAL = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4)
VOCAB = 1000


def test_masking_rates_over_50k_tokens():
    """BERT's rates: 15% of the non-special tokens selected; of those 80% [MASK], 10% random, 10% kept."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (200, 256), generator=g)
    ids[:, 0], ids[:, 100], ids[:, -1] = SPECIAL.cls, SPECIAL.sep, SPECIAL.sep
    ids[::3, -40:] = SPECIAL.pad
    ids[1::7, 50] = SPECIAL.unk
    special = torch.isin(ids, torch.tensor(SPECIAL.ids))
    inputs, labels = mask_tokens_for_mlm(
        ids, mask_token_id=SPECIAL.mask, vocab_size=VOCAB, special_ids=SPECIAL.ids, generator=g
    )
    selected = labels != IGNORE_INDEX
    n = int((~special).sum())
    assert n > 40_000
    # 5 standard deviations of a binomial proportion: a failure is a bug, not bad luck.
    assert abs(selected.sum() / n - 0.15) < 5 * (0.15 * 0.85 / n) ** 0.5
    assert not (selected & special).any(), "a special token was selected"
    assert torch.equal(labels[selected], ids[selected]) and (inputs[~selected] == ids[~selected]).all()
    m = int(selected.sum())
    became_mask = (inputs[selected] == SPECIAL.mask).float().mean()
    kept = (inputs[selected] == ids[selected]).float().mean()
    random = 1 - became_mask - kept
    for rate, expected in ((became_mask, 0.8), (random, 0.1 * (1 - 1 / VOCAB)), (kept, 0.1 + 0.1 / VOCAB)):
        assert abs(rate - expected) < 5 * (expected * (1 - expected) / m) ** 0.5
    replaced = selected & (inputs != SPECIAL.mask) & (inputs != ids)
    assert not torch.isin(inputs[replaced], torch.tensor(SPECIAL.ids)).any(), "a random replacement is special"


def test_collator_pads_and_masks_anew_for_every_batch():
    examples = [
        {"input_ids": torch.tensor([2, *range(10, 60), 3]), "token_type_ids": torch.zeros(52, dtype=torch.long)},
        {"input_ids": torch.tensor([2, 11, 12, 3]), "token_type_ids": torch.zeros(4, dtype=torch.long)},
    ]
    collate = MaskedLanguageModellingCollator(special=SPECIAL, vocab_size=VOCAB)
    first, second = collate(examples), collate(examples)
    assert first["input_ids"].shape == first["labels"].shape == first["padding_mask"].shape == (2, 52)
    assert first["padding_mask"][1].tolist() == [False] * 4 + [True] * 48
    assert (first["input_ids"][1, 4:] == SPECIAL.pad).all() and (first["labels"][1, 4:] == IGNORE_INDEX).all()
    assert not torch.equal(first["labels"], second["labels"])  # dynamic masking


def test_pack_lines_keeps_order_and_budget():
    lines = [[1] * 3, [2] * 4, [3] * 11, [4] * 2, [], [5] * 5]
    blocks = pack_lines(lines, budget=6)
    # [2]*4 does not fit after [1]*3 (a line is not split to fill a block); [3]*11 alone is too long: cut
    assert blocks == [[1] * 3, [2] * 4, [3] * 6, [3] * 5, [4] * 2, [5] * 5]
    assert pack_lines([[1], [2], [3], [4, 4]], budget=4) == [[1, 2, 3], [4, 4]]
    assert sum(pack_lines(lines, budget=1), []) == sum(lines, [])


def test_sentence_pairs_and_next_sentence_labels():
    blocks = [[10 + i] * (1 + i % 3) for i in range(40)]
    pairs = MaskedLanguageModellingExamples(blocks, special=SPECIAL, sentence_pairs=True, next_sentence_prediction=True)
    assert len(pairs) == 39
    labels = []
    for i in range(len(pairs)):
        ex = pairs[i]
        ids, segments = ex["input_ids"].tolist(), ex["token_type_ids"].tolist()
        a_end = ids.index(SPECIAL.sep)
        assert ids[0] == SPECIAL.cls and ids[-1] == SPECIAL.sep and ids[1:a_end] == blocks[i]
        assert segments == [0] * (a_end + 1) + [1] * (len(ids) - a_end - 1)
        b = ids[a_end + 1 : -1]
        label = int(ex["next_sentence_label"])
        assert (b == blocks[i + 1]) == (label == 0) and b != blocks[i]
        labels.append(label)
    assert 8 < sum(labels) < 31  # about half are random
    single = MaskedLanguageModellingExamples(blocks, special=SPECIAL)[0]
    assert single["input_ids"].tolist() == [SPECIAL.cls, 10, SPECIAL.sep]
    with pytest.raises(ValueError, match="needs sentence_pairs"):
        MaskedLanguageModellingExamples(blocks, special=SPECIAL, next_sentence_prediction=True)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "verses.txt"
    path.write_text("\n".join(english for english, _ in read_tsv(EMBEDDED_BIBLE)[:600]), encoding="utf-8")
    return path


def datamodule(corpus, tmp_path, **kw):
    args = dict(corpus=str(corpus), vocab_size=500, cache_dir=str(tmp_path / "cache"), max_length=32, batch_size=8)
    return MaskedLanguageModellingDataModule(**(args | kw))


def test_datamodule_describes_its_vocabulary_before_setup(corpus, tmp_path):
    dm = datamodule(corpus, tmp_path)
    assert dm.train_set is None
    assert 300 < dm.vocab_size <= 500 and dm.special_tokens == SPECIAL
    assert len(list((tmp_path / "cache").glob("bpe-500-*.json"))) == 1
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "token_type_ids", "padding_mask", "labels"}
    assert batch["input_ids"].shape[0] == 8 and batch["input_ids"].shape[1] <= 32
    assert (batch["input_ids"][:, 0] == SPECIAL.cls).all() and (batch["labels"] != IGNORE_INDEX).any()
    assert (batch["input_ids"] < dm.vocab_size).all()


def test_evaluation_masks_are_fixed_and_training_masks_are_not(corpus, tmp_path):
    dm = datamodule(corpus, tmp_path)
    dm.setup("fit")
    val = [next(iter(dm.val_dataloader())) for _ in range(2)]
    assert torch.equal(val[0]["input_ids"], val[1]["input_ids"]) and torch.equal(val[0]["labels"], val[1]["labels"])
    other = datamodule(corpus, tmp_path)
    other.setup("fit")
    assert torch.equal(next(iter(other.val_dataloader()))["labels"], val[0]["labels"])  # same in every run
    loader = torch.utils.data.DataLoader(dm.train_set, batch_size=8, collate_fn=dm.collate("train"))
    train = [next(iter(loader)) for _ in range(2)]
    assert not torch.equal(train[0]["labels"], train[1]["labels"])


def test_sentence_pair_batches_fit_max_length(corpus, tmp_path):
    dm = datamodule(corpus, tmp_path, sentence_pairs=True, next_sentence_prediction=True)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[1] <= 32 and batch["token_type_ids"].max() == 1
    assert batch["next_sentence_label"].shape == (8,)


def test_datamodule_reads_a_vocab_file(corpus, tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "and", "god", ",", "."]))
    dm = datamodule(corpus, tmp_path, tokenizer=str(vocab))
    assert dm.vocab_size == 10
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert (batch["input_ids"] < 10).all() and not (tmp_path / "cache").exists()


def test_datamodule_errors(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datamodule(tmp_path / "missing.txt", tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer file .*vocab.txt' does not exist"):
        datamodule(corpus, tmp_path, tokenizer=str(tmp_path / "vocab.txt"))
    with pytest.raises(ValueError, match="needs sentence_pairs"):
        datamodule(corpus, tmp_path, next_sentence_prediction=True)
    with pytest.raises(ValueError, match="max_length=2 leaves no room"):
        datamodule(corpus, tmp_path, max_length=2)
    with pytest.raises(ValueError, match="mask_prob must lie in"):
        datamodule(corpus, tmp_path, mask_prob=1.5)
    with pytest.raises(ValueError, match="exceeds 1"):
        mask_tokens_for_mlm(torch.arange(10), mask_token_id=4, vocab_size=10, special_ids=(0,), mask_token_prob=0.95)


def test_training_masks_and_pairs_are_a_function_of_seed_epoch_and_batch(corpus, tmp_path):
    # what makes a resumed run mask as the uninterrupted one did, whatever the workers
    def epoch_batches(loader, epoch):
        _set_sampler_epoch(loader, epoch)
        return [torch.cat([b["input_ids"].flatten(), b["labels"].flatten(), b["next_sentence_label"]]) for b in loader]

    L.seed_everything(0)
    dm = datamodule(corpus, tmp_path, sentence_pairs=True, next_sentence_prediction=True)
    dm.setup("fit")
    loader = dm.train_dataloader()
    first, second = epoch_batches(loader, 0), epoch_batches(loader, 1)
    fresh = dm.train_dataloader()
    torch.manual_seed(99)  # the global generator plays no part
    assert all(torch.equal(a, b) for a, b in zip(second, epoch_batches(fresh, 1), strict=True))
    assert not torch.equal(first[0], second[0])
