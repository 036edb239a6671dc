import random
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from conftest import trainer as quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from research.data import TranslationDataModule
from research.tasks import Translation
from research.tasks.optim import inverse_sqrt
from research.tasks.translation import label_smoothed_loss

TINY = {"name": "transformer_tiny", "dropout": 0.0}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """300 unique pairs of 1 to 12 words; the 'translation' of a word is its mirror image."""
    rng = random.Random(0)
    words = [f"{a}{b}{c}" for a in "bcdfgkp" for b in "aeiou" for c in "lmnrst"]
    lines = []
    for i in range(300):
        source = [f"n{i}"] + rng.choices(words, k=rng.randint(0, 11))
        lines.append(" ".join(source) + "\t" + " ".join(word[::-1] for word in source))
    path = tmp_path_factory.mktemp("corpus") / "pairs.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def datamodule(corpus, **kw):
    args = dict(corpus=str(corpus), vocab_size=500, cache_dir=str(corpus.parent / "cache"), batch_size=8)
    return TranslationDataModule(**(args | dict(val_fraction=0.1, test_fraction=0.1)) | kw)


trainer = partial(quiet_trainer, max_steps=2, limit_val_batches=1, limit_test_batches=1,
                  num_sanity_val_steps=0)


def test_label_smoothed_loss_ignores_padding_and_matches_torch():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(3, 5, 11, generator=g), torch.randint(1, 11, (3, 5), generator=g)
    targets[1, 3:] = 0
    loss, nll = label_smoothed_loss(logits, targets, pad_id=0, smoothing=0.1)
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0, label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(nll, F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0))
    # more padding with arbitrary logits changes nothing
    padded_logits = torch.cat([logits, 100 * torch.randn(3, 4, 11, generator=g)], dim=1)
    padded_targets = torch.cat([targets, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    padded_loss, _ = label_smoothed_loss(padded_logits, padded_targets, pad_id=0, smoothing=0.1)
    torch.testing.assert_close(padded_loss, loss)
    assert loss > nll * 0.9  # smoothing adds the cross-entropy to the uniform distribution
    zero, _ = label_smoothed_loss(logits, torch.zeros(3, 5, dtype=torch.long), pad_id=0, smoothing=0.1)
    assert zero.item() == 0.0


def test_inverse_sqrt_schedule_peaks_at_the_warmup_step():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = inverse_sqrt(opt, d_model=512, warmup_steps=40, scale=2.0)
    lrs = []
    for _ in range(160):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    peak = max(range(160), key=lrs.__getitem__)
    assert peak == 39  # the 40th optimizer step, step = warmup_steps in Eq. 3
    assert lrs[peak] == pytest.approx(2.0 * (512 * 40) ** -0.5)
    assert lrs[0] == pytest.approx(lrs[peak] / 40)  # linear warm-up from step 1
    assert lrs[159] == pytest.approx(lrs[peak] / 2)  # 1/sqrt(step) decay: 4x the steps, half the rate
    with pytest.raises(ValueError, match="warmup_steps >= 1"):
        inverse_sqrt(opt, d_model=512, warmup_steps=0)


@pytest.mark.parametrize("name", ["transformer_tiny", "gru_attention_tiny"])
def test_overfitting_one_batch_then_greedy_and_beam_reproduce_it(name):
    torch.manual_seed(0)
    pad, bos, eos, vocab = 0, 2, 3, 40
    targets = [[7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19, 20], [21, 22]]
    sources = [[bos, *reversed(t), eos] for t in targets]

    def padded(rows):
        return torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for r in rows], batch_first=True, padding_value=pad)

    src, tgt = padded(sources), padded([[bos, *t, eos] for t in targets])
    tgt_in, tgt_out = tgt[:, :-1].masked_fill(tgt[:, :-1] == eos, pad), tgt[:, 1:]
    spec = {"name": name, "vocab_size": vocab, "pad_id": pad, "dropout": 0.0}
    task = Translation(spec, optim={"warmup_steps": 10, "lr": 0.5}, model_dim=32, bos_id=bos, eos_id=eos)
    optimizers = task.configure_optimizers()
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    losses = []
    for _ in range(60):
        loss, _ = label_smoothed_loss(task(src, tgt_in), tgt_out, pad_id=pad, smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    expected = padded([[*t, eos] for t in targets])
    for decoding in ("greedy", "beam"):
        assert torch.equal(task.translate(src, decoding=decoding), expected), decoding


def test_fit_takes_the_vocabulary_from_the_tokenizer_and_logs_bleu_and_samples(corpus, tmp_path):
    dm = datamodule(corpus)
    task = Translation({"name": "transformer_tiny"}, val_bleu_samples=5, num_logged_samples=3)
    assert task.model is None  # built when the Trainer starts, with the tokenizer's vocabulary
    fit = trainer(tmp_path, logger=CSVLogger(str(tmp_path / "logs")), val_check_interval=2)
    fit.fit(task, datamodule=dm)
    special = dm.special_tokens
    assert task.model.vocab_size == dm.vocab_size and task.model.pad_id == special.pad
    assert task.hparams.model["vocab_size"] == dm.vocab_size and task.hparams.model["pad_id"] == special.pad
    assert (task.hparams.bos_id, task.hparams.eos_id) == (special.cls, special.sep)
    assert {"val/loss", "val/ppl", "val/bleu"} <= set(fit.callback_metrics)
    assert task._decode_every["val"] == 6  # 30 validation pairs, 5 decoded
    fit.test(task, datamodule=dm)
    assert 0 <= fit.callback_metrics["test/bleu"] <= 100
    tables = sorted((tmp_path / "logs").rglob("*_translations_step*.csv"))
    assert [t.name.split("_")[0] for t in tables] == ["test", "val"]
    rows = tables[1].read_text(encoding="utf-8").splitlines()
    assert rows[0] == "source,reference,hypothesis" and 1 < len(rows) <= 4
    path = tmp_path / "translation.ckpt"
    fit.save_checkpoint(path)
    restored = Translation.load_from_checkpoint(path)  # no datamodule needed: vocabulary and ids were saved
    assert restored.model.vocab_size == dm.vocab_size and restored.hparams.eos_id == special.sep


class ReferenceTranslation(Translation):
    """A perfect translator: its "translations" are the batch's own target ids (no BOS, up to EOS, padded)."""

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._batch = batch
        super().test_step(batch, batch_idx)

    def translate(self, src, *, decoding="greedy"):
        assert torch.equal(src, self._batch["src"])  # every sentence is decoded (test_bleu_samples=None)
        return self._batch["tgt_out"]


@pytest.mark.parametrize("reverse", [False, True], ids=["en-es", "es-en"])
def test_a_perfect_translation_scores_100_bleu_on_the_shipped_corpus(reverse, tmp_path_factory, tmp_path):
    """BLEU(reference, reference) is 100 through the task's own detokenisation and SacreBLEU (issue 13).

    The reference ids go through the tokenizer's decoder and the task's BLEU metric exactly as a
    model's translations do; WordPiece decoding scored 98.10 (en->es) and 91.99 (es->en) here.
    """
    cache = tmp_path_factory.getbasetemp() / "bible_tokenizers"
    dm = TranslationDataModule(reverse=reverse, cache_dir=str(cache), eval_batch_size=256)  # the configs' data
    task = ReferenceTranslation(TINY, test_bleu_samples=None, num_logged_samples=0)
    fit = trainer(tmp_path, limit_test_batches=None)
    fit.test(task, datamodule=dm)
    assert sum(len(batch) for batch in dm.batch_sampler("test")) == len(dm.split("test")) == 1553
    assert fit.callback_metrics["test/bleu"].item() == pytest.approx(100.0, abs=1e-9)


def test_checkpoint_of_another_vocabulary_is_a_clear_error(corpus, tmp_path):
    dm = datamodule(corpus)
    fit = trainer(tmp_path)
    fit.fit(Translation({"name": "transformer_tiny"}), datamodule=dm)
    fit.save_checkpoint(tmp_path / "translation.ckpt")
    other = datamodule(corpus, vocab_size=450)
    assert other.vocab_size != dm.vocab_size
    with pytest.raises(ValueError, match=r"trained with a vocabulary of \d+ tokens but this run's model and tokenizer"):
        trainer(tmp_path, max_steps=4).fit(
            Translation({"name": "transformer_tiny"}), datamodule=other, ckpt_path=str(tmp_path / "translation.ckpt")
        )


def test_model_that_does_not_fit_the_data_is_a_clear_error(corpus, tmp_path):
    dm = datamodule(corpus)
    with pytest.raises(ValueError, match=f"embeds 999 tokens but the datamodule's tokenizer has {dm.vocab_size}"):
        trainer(tmp_path).fit(Translation(TINY | {"vocab_size": 999, "pad_id": 0}), datamodule=dm)
    with pytest.raises(ValueError, match="the model pads with id 5 but the tokenizer's"):
        trainer(tmp_path).fit(Translation(TINY | {"vocab_size": dm.vocab_size, "pad_id": 5}), datamodule=dm)
    with pytest.raises(ValueError, match="up to 128 tokens but the model has 64 positions"):
        trainer(tmp_path).fit(Translation(TINY | {"max_positions": 64}), datamodule=dm)


def test_argument_errors():
    with pytest.raises(ValueError, match="label_smoothing must lie in"):
        Translation(TINY, label_smoothing=1.0)
    with pytest.raises(ValueError, match="needs a seq2seq model"):
        Translation(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no vocab_size/pad_id and there is no translation datamodule"):
        Translation(TINY).configure_model()


def test_limited_validation_batches_still_measure_bleu(corpus, tmp_path):
    """The decoded subset is sized to the batches an epoch sees, so a monitored val/bleu is always there."""
    dm = datamodule(corpus, eval_batch_size=2)  # 30 validation pairs in 15 batches; one of them is seen
    task = Translation({"name": "transformer_tiny"}, val_bleu_samples=2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/bleu", mode="max")
    fit = trainer(tmp_path, enable_checkpointing=True, callbacks=[checkpoint], val_check_interval=2)
    fit.fit(task, datamodule=dm)
    assert task._decode_every["val"] == 1  # every sentence of the one batch seen, not every 15th
    assert "val/bleu" in fit.callback_metrics and checkpoint.best_model_path
