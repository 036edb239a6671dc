import random
from types import SimpleNamespace

import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch

from research.data import LengthBucketSampler, TranslationDataModule
from research.data.translation import TranslationCollator, padding_fraction


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """400 unique pairs of 1 to 30 words; the 'translation' of a word is its mirror image."""
    rng = random.Random(0)
    words = [f"{a}{b}{c}" for a in "bcdfg" for b in "aeiou" for c in "lmnrst"][:80]
    lines = []
    for i in range(400):
        source = [f"n{i}"] + rng.choices(words, k=rng.randint(0, 29))
        lines.append(" ".join(source) + "\t" + " ".join(word[::-1] for word in source))
    path = tmp_path_factory.mktemp("corpus") / "pairs.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def datamodule(corpus, tmp_path, **kw):
    args = dict(
        corpus=str(corpus),
        vocab_size=500,
        cache_dir=str(corpus.parent / "cache"),  # shared: each corpus and size is trained once
        batch_size=8,
        val_fraction=0.1,
        test_fraction=0.1,
    )
    dm = TranslationDataModule(**(args | kw))
    dm.setup()
    return dm


def test_bucketed_batches_pad_far_less_than_random_batches(corpus, tmp_path):
    dm = datamodule(corpus, tmp_path, pool_size=160)
    data = dm.split("train")
    n = len(data)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    random_batches = [order[i : i + 8] for i in range(0, n, 8)]
    random_padding = padding_fraction(random_batches, src_lengths=data.src_lengths, tgt_lengths=data.tgt_lengths)
    bucketed = dm.padding_fraction("train")
    assert random_padding > 0.3 and bucketed < random_padding / 3
    # the figure is the real share of padding in the collated batches
    batches = list(dm.train_dataloader())
    pads = sum(int((b["src"] == 0).sum() + (b["tgt_in"] == 0).sum()) for b in batches)
    total = sum(b["src"].numel() + b["tgt_in"].numel() for b in batches)
    assert pads / total == pytest.approx(bucketed)


def test_sampler_covers_every_example_once_and_is_reproducible_per_epoch():
    lengths = [random.Random(i).randint(1, 50) for i in range(203)]
    sampler = LengthBucketSampler(lengths, batch_size=8, pool_size=40, seed=3)
    first = sampler.batches()
    assert sorted(i for batch in first for i in batch) == list(range(203))
    assert len(first) == len(sampler) and max(map(len, first)) == 8
    assert LengthBucketSampler(lengths, batch_size=8, pool_size=40, seed=3).batches() == first
    _set_sampler_epoch(torch.utils.data.DataLoader(range(203), batch_sampler=sampler), 1)  # what Lightning calls
    assert sampler.epoch == 1 and sampler.batches() != first
    sampler.set_epoch(0)
    assert sampler.batches() == first
    fixed = LengthBucketSampler(lengths, batch_size=8, pool_size=40, shuffle=False, seed=3)
    evaluation = fixed.batches()
    assert sorted(i for batch in evaluation for i in batch) == list(range(203)) and len(evaluation) == len(fixed)
    fixed.set_epoch(1)  # evaluation keeps its order, a random one: short and long sentences early on
    assert fixed.batches() == evaluation and evaluation == first
    assert len({lengths[batch[0]] for batch in evaluation[:5]}) > 1  # not sorted by length overall


@pytest.mark.parametrize("shuffle", [True, False])
def test_ddp_processes_share_the_batches(shuffle):
    lengths = [random.Random(i).randint(1, 50) for i in range(203)]  # 26 batches of 8
    whole = LengthBucketSampler(lengths, batch_size=8, pool_size=40, shuffle=shuffle, seed=3)
    shares = [
        LengthBucketSampler(lengths, batch_size=8, pool_size=40, shuffle=shuffle, seed=3, num_replicas=3, rank=r)
        for r in range(3)
    ]
    for share in shares:
        share.set_epoch(2)
    whole.set_epoch(2)
    batches = [share.batches() for share in shares]
    assert [len(b) for b in batches] == [len(share) for share in shares]
    # training: as many steps on every process (2 of 26 batches dropped); evaluation: every batch once
    assert [len(b) for b in batches] == ([8, 8, 8] if shuffle else [9, 9, 8])
    seen = sorted(map(tuple, sum(batches, [])))
    assert set(seen) <= set(map(tuple, whole.batches())) and len(seen) == len(set(seen)) == sum(map(len, batches))


def test_token_budget_batches():
    lengths = [random.Random(i).randint(1, 50) for i in range(300)] + [90]
    batches = LengthBucketSampler(lengths, max_tokens=120, pool_size=100).batches()
    assert sorted(i for batch in batches for i in batch) == list(range(301))
    for batch in batches:
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 120
    with pytest.raises(ValueError, match="exactly one of batch_size and max_tokens"):
        LengthBucketSampler(lengths, batch_size=8, max_tokens=100)


def test_batches_shift_the_target_and_pad(corpus, tmp_path):
    dm = datamodule(corpus, tmp_path)
    special = dm.special_tokens
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"src", "tgt_in", "tgt_out", "index", "src_text", "tgt_text"}
    assert (batch["tgt_in"][:, 0] == special.cls).all() and (batch["src"][:, 0] == special.cls).all()
    real = batch["tgt_out"] != special.pad
    shifted = batch["tgt_in"][:, 1:] != special.pad  # every target but the final [SEP] is the next input
    assert torch.equal(batch["tgt_out"][:, :-1][shifted], batch["tgt_in"][:, 1:][shifted])
    assert torch.equal(real.sum(1), (batch["tgt_in"] != special.pad).sum(1))
    last = real.sum(1) - 1
    assert (batch["tgt_out"][torch.arange(len(last)), last] == special.sep).all()
    assert dm.decode(batch["tgt_out"][0].tolist()) == batch["tgt_text"][0]  # lossless round trip
    assert batch["tgt_text"][0] == " ".join(w[::-1] for w in batch["src_text"][0].split())


def test_split_is_fixed_by_the_seed_and_disjoint(corpus, tmp_path):
    a, b = datamodule(corpus, tmp_path), datamodule(corpus, tmp_path)
    other = datamodule(corpus, tmp_path, seed=1)
    assert a.pairs == b.pairs
    train, val, test = (set(split) for split in (a.pairs.train, a.pairs.val, a.pairs.test))
    assert not train & val and not train & test and not val & test
    assert len(train) + len(val) + len(test) == 400 and len(val) == len(test) == 40
    assert set(other.pairs.val) != val and set(other.pairs.test) == test  # the test split ignores the seed
    assert [len(x) for x in (a.train_set, a.val_set, a.test_set)] == [320, 40, 40]


def test_reverse_swaps_the_languages(corpus, tmp_path):
    forward, backward = datamodule(corpus, tmp_path), datamodule(corpus, tmp_path, reverse=True)
    assert backward.pairs.train == [(t, s) for s, t in forward.pairs.train]
    assert forward.vocab_size == backward.vocab_size  # one shared vocabulary, cached once


def test_length_limits_drop_pairs(corpus, tmp_path):
    short = datamodule(corpus, tmp_path, max_length=12)
    assert all(len(ids) <= 12 for ids in short.train_set.src + short.train_set.tgt)
    assert 0 < len(short.train_set) < 320


def test_tsv_line_with_the_wrong_number_of_columns_names_the_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("a b\tc d\ne f\tg h\ni j k\nl\tm\n", encoding="utf-8")
    dm = TranslationDataModule(corpus=str(path), cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"bad.tsv:3: expected 2 tab-separated columns, found 1"):
        dm.setup()


def test_missing_or_empty_corpus_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.tsv' does not exist"):
        TranslationDataModule(corpus=str(tmp_path / "nowhere.tsv"))
    with pytest.raises(FileNotFoundError, match="tokenizer file"):
        TranslationDataModule(tokenizer=str(tmp_path / "vocab.txt"))
    (tmp_path / "empty.tsv").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.tsv' is empty"):
        TranslationDataModule(corpus=str(tmp_path / "empty.tsv")).setup()


def test_argument_errors():
    with pytest.raises(ValueError, match="exactly one of batch_size and max_tokens"):
        TranslationDataModule(batch_size=None)
    with pytest.raises(ValueError, match="max_length=2"):
        TranslationDataModule(max_length=2)


def test_collator_pads_with_the_pad_id():
    examples = [
        {
            "index": 0,
            "src": torch.tensor([2, 7, 3]),
            "tgt": torch.tensor([2, 8, 9, 3]),
            "src_text": "a",
            "tgt_text": "b",
        },
        {"index": 5, "src": torch.tensor([2, 3]), "tgt": torch.tensor([2, 3]), "src_text": "", "tgt_text": ""},
    ]
    batch = TranslationCollator(pad_id=0)(examples)
    assert batch["src"].tolist() == [[2, 7, 3], [2, 3, 0]]
    assert batch["tgt_in"].tolist() == [[2, 8, 9], [2, 0, 0]]
    assert batch["tgt_out"].tolist() == [[8, 9, 3], [3, 0, 0]]
    assert batch["index"].tolist() == [0, 5]


def test_a_train_loader_built_in_a_resumed_epoch_starts_with_that_epoch(corpus, tmp_path):
    # Lightning creates the epoch's iterator before it calls set_epoch; the bucket sampler draws at once
    dm = datamodule(corpus, tmp_path)
    progress = SimpleNamespace(current=SimpleNamespace(processed=2))
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1, fit_loop=SimpleNamespace(epoch_progress=progress))
    expected = dm.batch_sampler("train")
    expected.set_epoch(2)
    src = next(iter(dm.train_dataloader()))["src"]
    assert torch.equal(src, TranslationCollator(pad_id=dm.special_tokens.pad)(
        [dm.split("train")[i] for i in expected.batches()[0]])["src"])


def test_evaluation_batches_come_in_a_fixed_order_of_mixed_lengths(corpus, tmp_path):
    dm, again = (datamodule(corpus, tmp_path, eval_batch_size=4) for _ in range(2))
    for split in ("val", "test"):
        batches = dm.batch_sampler(split).batches()
        assert batches == again.batch_sampler(split).batches()
        firsts = [dm.split(split).src_lengths[batch[0]] for batch in batches]
        assert firsts != sorted(firsts)  # not shortest first: a limit_val_batches sees every length
