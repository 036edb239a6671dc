from functools import partial

import pytest
import torch
from conftest import trainer as quiet_trainer

from research.data import LanguageWordsDataModule
from research.tasks import SequenceClassification


@pytest.fixture
def words(tmp_path):
    english = "the house and the garden with a tree by the river under the mountain\nred green blue dog cat\n"
    spanish = "la casa y el jardín con un árbol junto al río bajo la montaña\nrojo verde azul perro gato\n"
    files = {}
    for language, text in (("english", english), ("spanish", spanish)):
        files[language] = str(tmp_path / f"{language}.txt")
        (tmp_path / f"{language}.txt").write_text(text, encoding="utf-8")
    return LanguageWordsDataModule(files=files, val_fraction=0.2, test_fraction=0.2, batch_size=4)


trainer = partial(quiet_trainer, max_epochs=1)


def test_loss_falls_when_overfitting_one_batch(words):
    words.setup("fit")
    batch = next(iter(words.train_dataloader()))
    torch.manual_seed(0)
    task = SequenceClassification({"name": "gru_classifier_tiny", "vocab_size": words.vocab_size, "num_classes": 2})
    opt = torch.optim.AdamW(task.parameters(), lr=3e-2)
    losses = []
    for _ in range(60):
        loss = task.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.5  # about log 2 at the start
    assert losses[-1] < 0.1 * losses[0]


def test_sizes_come_from_the_datamodule_and_fit_then_test_logs_accuracy_and_baseline(words, tmp_path):
    task = SequenceClassification({"name": "gru_classifier_tiny"}, optim={"lr": 1e-2})
    assert task.model is None  # built when the Trainer starts, from the data
    run = trainer(tmp_path)
    run.fit(task, datamodule=words)
    assert task.hparams.model == {
        "name": "gru_classifier_tiny",
        "vocab_size": words.vocab_size,
        "num_classes": 2,
        "pad_id": 0,
    }
    metrics = run.test(task, datamodule=words, verbose=False)[0]
    assert {"test/loss", "test/acc", "test/majority_acc"} <= set(metrics)
    labels = [label for _, label in words.words.test]
    majority = max(labels.count(0), labels.count(1)) / len(labels)
    assert metrics["test/majority_acc"] == pytest.approx(majority)
    assert 0 <= metrics["test/acc"] <= 1


def test_predict_gives_probabilities(words):
    task = SequenceClassification({"name": "gru_classifier_tiny", "vocab_size": words.vocab_size, "num_classes": 2})
    probs = task.predict_step(words.encode(["house", "casa", "xyzzy"]), 0)
    assert probs.shape == (3, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))


def test_a_checkpoint_loads_without_the_data(words, tmp_path):
    task = SequenceClassification({"name": "gru_classifier_tiny"})
    run = trainer(tmp_path, max_steps=2)
    run.fit(task, datamodule=words)
    run.save_checkpoint(tmp_path / "last.ckpt")
    loaded = SequenceClassification.load_from_checkpoint(tmp_path / "last.ckpt")
    batch = words.encode(["garden"])
    torch.testing.assert_close(loaded.eval()(**batch), task.eval()(**batch))


def test_a_model_that_does_not_fit_the_data_is_a_clear_error(words, tmp_path):
    task = SequenceClassification({"name": "gru_classifier_tiny", "vocab_size": 5, "num_classes": 2})
    with pytest.raises(ValueError, match="the model has vocab_size=5 but LanguageWordsDataModule has vocab_size="):
        trainer(tmp_path).fit(task, datamodule=words)
    task = SequenceClassification({"name": "gru_classifier_tiny", "num_classes": 3})
    with pytest.raises(ValueError, match="num_classes=3 but LanguageWordsDataModule has num_classes=2"):
        trainer(tmp_path).fit(task, datamodule=words)
    with pytest.raises(ValueError, match="lacks \\['vocab_size', 'num_classes'\\]"):
        SequenceClassification(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        SequenceClassification({"name": "gru_classifier_tiny"}, optim={"schedule": "step"})
    task = SequenceClassification({"name": "gru_classifier_tiny"})
    with pytest.raises(ValueError, match="has no vocab_size or num_classes and there is no datamodule"):
        task.configure_model()
