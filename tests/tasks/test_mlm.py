import math
from functools import partial

import pytest
import torch
from conftest import trainer as quiet_trainer

from research.data import MaskedLanguageModellingDataModule
from research.data.text import EMBEDDED_BIBLE, read_tsv
from research.metrics import MostFrequentAccuracy
from research.tasks import MaskedLanguageModelling
from research.tasks.optim import warmup_linear


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "verses.txt"
    path.write_text("\n".join(english for english, _ in read_tsv(EMBEDDED_BIBLE)[:600]), encoding="utf-8")
    return path


def datamodule(corpus, tmp_path, **kw):
    args = dict(corpus=str(corpus), vocab_size=500, cache_dir=str(tmp_path / "cache"), max_length=32, batch_size=8)
    return MaskedLanguageModellingDataModule(**(args | kw))


trainer = partial(quiet_trainer, max_epochs=1, limit_train_batches=4, limit_val_batches=2, limit_test_batches=2)


def test_warmup_then_linear_decay():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_linear(opt, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4:15] == pytest.approx([1.0 - 0.9 * i / 10 for i in range(11)])  # a straight line to 0.1
    assert lrs[15] == pytest.approx(0.1)


def test_unigram_baseline_is_the_most_frequent_targets_share():
    metric = MostFrequentAccuracy(10, ignore_index=-100)
    metric.update(torch.tensor([3, 3, 5, -100]))
    metric.update(torch.tensor([[3, 7], [-100, 3]]))
    assert metric.compute() == pytest.approx(4 / 6)


def test_overfits_one_batch(corpus, tmp_path):
    torch.manual_seed(0)
    dm = datamodule(corpus, tmp_path)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))  # masked once: a fixed batch
    spec = {"name": "bert_tiny", "vocab_size": dm.vocab_size, "embed_dim": 64, "depth": 1, "drop_rate": 0.0}
    task = MaskedLanguageModelling(spec)
    opt = torch.optim.AdamW(task.parameters(), lr=5e-3)
    losses = []
    for _ in range(40):
        loss = task._losses(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.9 * math.log(dm.vocab_size)  # chance level at the start
    assert losses[-1] < 0.1 * losses[0]


def test_fit_takes_the_vocabulary_from_the_tokenizer_and_logs_mlm_metrics(corpus, tmp_path):
    dm = datamodule(corpus, tmp_path)
    task = MaskedLanguageModelling({"name": "bert_tiny"}, optim={"lr": 1e-3, "warmup_steps": 2})
    assert task.model is None  # built when the Trainer starts, with the tokenizer's vocabulary
    fit = trainer(tmp_path)
    fit.fit(task, datamodule=dm)
    assert task.model.vocab_size == dm.vocab_size and task.hparams.model["vocab_size"] == dm.vocab_size
    metrics = fit.callback_metrics
    assert {"train/loss", "train/acc", "val/loss", "val/ppl", "val/acc", "val/unigram_acc"} <= set(metrics)
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-5)
    assert 0 <= metrics["val/acc"] <= 1 and 0 < metrics["val/unigram_acc"] < 1
    fit.test(task, datamodule=dm)
    assert {"test/loss", "test/acc", "test/ppl"} <= set(fit.callback_metrics)
    path = tmp_path / "mlm.ckpt"
    fit.save_checkpoint(path)
    restored = MaskedLanguageModelling.load_from_checkpoint(path)  # no datamodule needed: the size was saved
    assert restored.model.vocab_size == dm.vocab_size


def test_next_sentence_prediction(corpus, tmp_path):
    dm = datamodule(corpus, tmp_path, sentence_pairs=True, next_sentence_prediction=True)
    with pytest.raises(ValueError, match="add next_sentence_head: true"):
        trainer(tmp_path).fit(MaskedLanguageModelling({"name": "bert_tiny"}), datamodule=dm)
    task = MaskedLanguageModelling({"name": "bert_tiny", "next_sentence_head": True}, optim={"warmup_steps": 2})
    fit = trainer(tmp_path)
    fit.fit(task, datamodule=dm)
    assert {"train/nsp_loss", "val/nsp_loss", "val/nsp_acc"} <= set(fit.callback_metrics)


def test_checkpoint_of_another_vocabulary_is_a_clear_error(corpus, tmp_path):
    fit = trainer(tmp_path)
    fit.fit(MaskedLanguageModelling({"name": "bert_tiny"}, optim={"warmup_steps": 2}),
            datamodule=datamodule(corpus, tmp_path))
    fit.save_checkpoint(tmp_path / "mlm.ckpt")
    other = datamodule(corpus, tmp_path, vocab_size=450)
    with pytest.raises(ValueError, match=r"trained with a vocabulary of \d+ tokens but this run's model and tokenizer"):
        trainer(tmp_path, max_epochs=2).fit(
            MaskedLanguageModelling({"name": "bert_tiny"}), datamodule=other, ckpt_path=tmp_path / "mlm.ckpt"
        )


def test_model_that_does_not_fit_the_data_is_a_clear_error(corpus, tmp_path):
    dm = datamodule(corpus, tmp_path)
    with pytest.raises(ValueError, match=f"embeds 999 tokens but the datamodule's tokenizer has {dm.vocab_size}"):
        trainer(tmp_path).fit(MaskedLanguageModelling({"name": "bert_tiny", "vocab_size": 999}), datamodule=dm)
    with pytest.raises(ValueError, match="sequences of up to 32 tokens but the model has 16 positions"):
        trainer(tmp_path).fit(MaskedLanguageModelling({"name": "bert_tiny", "max_positions": 16}), datamodule=dm)
    with pytest.raises(ValueError, match="no vocab_size and there is no text datamodule"):
        MaskedLanguageModelling("bert_tiny").configure_model()
    with pytest.raises(ValueError, match="needs a BERT-style model"):
        MaskedLanguageModelling(torch.nn.Linear(2, 2))
