"""RobustEvaluation on token inputs: a text task's metric under embedding-space PGD (issue 17, item 3)."""

import re
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import trainer as quiet_trainer
from torch import nn

import research.callbacks.embedding_evaluation as embedding_evaluation
from research.callbacks import AdversarialTraining, RobustEvaluation
from research.data import LanguageWordsDataModule, MaskedLanguageModellingDataModule, TranslationDataModule
from research.data.text import EMBEDDED_BIBLE, read_tsv
from research.tasks import ImageClassification, MaskedLanguageModelling, SequenceClassification, Translation

trainer = partial(quiet_trainer, num_sanity_val_steps=0)


@pytest.fixture(scope="module")
def words():
    """Words of the shipped English-Spanish Bible labelled with their language (real text, no download)."""
    dm = LanguageWordsDataModule(batch_size=64)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def classifier(words):
    """A GRU classifier trained for a few hundred steps: well above chance, so attacks have something to break."""
    torch.manual_seed(0)
    task = SequenceClassification({"name": "gru_classifier_tiny"}, optim={"lr": 1e-2})
    trainer(max_epochs=1, limit_train_batches=150, limit_val_batches=0).fit(task, datamodule=words)
    return task


def validate(task, datamodule, callback, **kw) -> dict[str, float]:
    run = trainer(callbacks=[callback], **({"limit_val_batches": 2} | kw))
    run.validate(task, datamodule=datamodule, verbose=False)
    return {k: v.item() for k, v in run.callback_metrics.items()}


def test_classification_accuracy_under_attack(classifier, words):
    """The subset's clean accuracy is the task's own; attacked <= clean; radius -> 0 gives the clean figure."""
    whole = validate(classifier, words, RobustEvaluation(eps=1.0, num_samples=10_000, pgd_steps=3))
    assert whole["val/subset_clean_acc"] == pytest.approx(whole["val/acc"], abs=1e-6)  # the subset is the split
    assert whole["val/subset_clean_acc"] > 0.75  # trained: the attack has correct answers to break
    assert whole["val/robust_acc"] == whole["val/robust_acc_pgd"] < whole["val/subset_clean_acc"] - 0.2
    tiny = validate(classifier, words, RobustEvaluation(eps=1e-7, num_samples=10_000, pgd_steps=3))
    assert tiny["val/robust_acc"] == pytest.approx(tiny["val/subset_clean_acc"], abs=1e-6)
    radii = [validate(classifier, words, RobustEvaluation(eps=eps, num_samples=64, pgd_steps=3))["val/robust_acc"]
             for eps in (0.1, 0.3, 1.0)]
    assert radii == sorted(radii, reverse=True)  # a larger ball never helps the model (same subset, same seed)


def test_the_perturbation_never_touches_padding_or_special_tokens(classifier, words, monkeypatch):
    seen = []
    real = embedding_evaluation.embedding_perturbation

    def spy(point, delta):
        seen.append(delta)
        return real(point, delta)

    monkeypatch.setattr(embedding_evaluation, "embedding_perturbation", spy)
    real_attack = embedding_evaluation.EmbeddingRobustness.attack
    batches = []

    def attack(self, task, batch, point, *, random_start):
        batches.append(batch)
        return real_attack(self, task, batch, point, random_start=random_start)

    monkeypatch.setattr(embedding_evaluation.EmbeddingRobustness, "attack", attack)
    validate(classifier, words, RobustEvaluation(eps=0.5, num_samples=40, pgd_steps=2, batch_size=16))
    assert len(seen) == len(batches) >= 3
    padding = 0
    for delta, batch in zip(seen, batches):
        inside = torch.arange(batch["tokens"].shape[1]) < batch["lengths"][:, None]
        assert delta.shape[:2] == batch["tokens"].shape
        assert torch.all(delta[~inside] == 0)  # padding: exactly zero
        assert torch.all(delta[batch["tokens"] == 0] == 0)
        assert torch.linalg.vector_norm(delta[inside], dim=-1).min() > 0  # every real token is moved
        padding += int((~inside).sum())
    assert padding > 0  # the batches had padding to protect


@pytest.fixture(scope="module")
def verses(tmp_path_factory):
    path = tmp_path_factory.mktemp("verses") / "verses.txt"
    path.write_text("\n".join(english for english, _ in read_tsv(EMBEDDED_BIBLE)[:800]), encoding="utf-8")
    return path


def test_masked_token_accuracy_under_attack(verses):
    torch.manual_seed(0)
    dm = MaskedLanguageModellingDataModule(corpus=str(verses), vocab_size=300, cache_dir=str(verses.parent / "cache"),
                                           max_length=32, batch_size=16)
    task = MaskedLanguageModelling({"name": "bert_tiny", "embed_dim": 64, "depth": 1, "drop_rate": 0.0},
                                   optim={"lr": 3e-3, "warmup_steps": 0, "schedule": "constant"})
    trainer(max_epochs=1, limit_train_batches=40, limit_val_batches=0).fit(task, datamodule=dm)
    whole = validate(task, dm, RobustEvaluation(eps=2.0, num_samples=10_000, pgd_steps=3))
    assert whole["val/subset_clean_acc"] == pytest.approx(whole["val/acc"], abs=1e-6)  # per masked token, as the task
    assert whole["val/subset_clean_acc"] > 0.1
    assert whole["val/robust_acc"] < whole["val/subset_clean_acc"]
    tiny = validate(task, dm, RobustEvaluation(eps=1e-7, num_samples=10_000, pgd_steps=3))
    assert tiny["val/robust_acc"] == pytest.approx(tiny["val/subset_clean_acc"], abs=1e-6)
    position = validate(task, dm, RobustEvaluation(eps=2.0, num_samples=10_000, pgd_steps=3,
                                                   embeddings="token+position"))
    assert position["val/robust_acc"] < position["val/subset_clean_acc"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """200 distinct short English sentences of the shipped Bible, each paired with itself.

    Copying real sentences is a translation task that transformer_tiny learns in seconds well enough to score
    some BLEU on unseen sentences (English to Spanish would need minutes).
    """
    path = tmp_path_factory.mktemp("pairs") / "pairs.tsv"
    sentences = list(dict.fromkeys(en for en, _ in read_tsv(EMBEDDED_BIBLE) if len(en.split()) <= 8))[:200]
    path.write_text("".join(f"{en}\t{en}\n" for en in sentences), encoding="utf-8")
    return path


def translation_data(pairs):
    return TranslationDataModule(corpus=str(pairs), vocab_size=400, cache_dir=str(pairs.parent / "cache"),
                                 batch_size=16, val_fraction=0.2, test_fraction=0.1)


class ReferenceTranslation(Translation):
    """A perfect translator: the "translation" of a source row is its reference's ids (no BOS, up to EOS, padded)."""

    def validation_step(self, batch, batch_idx):
        self.references = getattr(self, "references", {}) | {
            tuple(src.tolist()): tgt for src, tgt in zip(batch["src"], batch["tgt_out"])}
        super().validation_step(batch, batch_idx)

    def translate(self, src, *, decoding="greedy"):
        return torch.stack([self.references[tuple(row.tolist())] for row in src])


def test_bleu_of_the_references_is_100_clean_and_under_a_tiny_radius(pairs):
    task = ReferenceTranslation({"name": "transformer_tiny", "dropout": 0.0}, val_bleu_samples=None,
                                num_logged_samples=0)
    out = validate(task, translation_data(pairs), RobustEvaluation(eps=1e-6, num_samples=16, pgd_steps=1),
                   limit_val_batches=1)
    assert out["val/bleu"] == pytest.approx(100.0, abs=1e-9)
    assert out["val/subset_clean_bleu"] == pytest.approx(100.0, abs=1e-9)
    assert out["val/robust_bleu"] == pytest.approx(100.0, abs=1e-9)


def test_bleu_of_greedy_translations_under_attack(pairs):
    """The subset's clean BLEU is the task's greedy BLEU of the same sentences; radius -> 0 gives it back."""
    torch.manual_seed(0)
    dm = translation_data(pairs)
    task = Translation({"name": "transformer_tiny", "dropout": 0.0}, val_bleu_samples=None, num_logged_samples=0,
                       optim={"lr": 3e-3, "schedule": "constant"})
    trainer(max_epochs=40, limit_val_batches=0).fit(task, datamodule=dm)
    tiny = validate(task, dm, RobustEvaluation(eps=1e-7, num_samples=10_000, pgd_steps=2), limit_val_batches=None)
    assert tiny["val/subset_clean_bleu"] == pytest.approx(tiny["val/bleu"], abs=1e-4)
    assert tiny["val/subset_clean_bleu"] > 3
    assert tiny["val/robust_bleu"] == pytest.approx(tiny["val/subset_clean_bleu"], abs=1e-4)
    large = validate(task, dm, RobustEvaluation(eps=1.0, num_samples=10_000, pgd_steps=3), limit_val_batches=None)
    assert large["val/robust_bleu"] < large["val/subset_clean_bleu"]


class PlainClassifier(nn.Module):
    """A sequence classifier without the embedding interface."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size, self.num_classes = vocab_size, 2
        self.embed, self.head = nn.Embedding(vocab_size, 8), nn.Linear(8, 2)

    def forward(self, tokens, lengths=None):
        return self.head(self.embed(tokens).mean(1))


@pytest.mark.parametrize(
    ("options", "task", "message"),
    [
        (dict(eps=0.0), None, "eps must be > 0"),
        (dict(eps=-0.1, inputs="tokens"), None, "relative to each token's embedding norm"),
        (dict(eps=0.1, inputs="words"), None, "unknown inputs 'words'"),
        (dict(eps=0.1, embeddings="position"), None, "unknown embeddings 'position'"),
        (dict(eps=0.1, inputs="tokens"), "image", "inputs='tokens' needs a text task with the hooks"),
        (dict(eps=0.1, attack="apgd"), "words", "only attack='pgd'"),
        (dict(eps=0.1), "plain", "PlainClassifier lacks ['get_input_embeddings', 'embedding_output']"),
        (dict(eps=0.1, embeddings="token+position"), "words", "RobustEvaluation: GRUClassifier"),
        # tokens are attacked in per-token L2: an explicit L-inf is refused, not silently ignored
        (dict(eps=0.1, inputs="tokens", norm="linf"), None, "RobustEvaluation: norm='linf' does not apply to token"),
        (dict(eps=0.1, norm="linf"), "words", "RobustEvaluation: norm='linf' does not apply to token inputs"),
    ],
)
def test_user_errors_are_one_line(options, task, message, words):
    if task is None:
        with pytest.raises(ValueError, match=re.escape(message)) as err:
            RobustEvaluation(**options)
    else:
        module = {
            "image": lambda: ImageClassification({"name": "madry_mnist_cnn", "in_chans": 1, "num_classes": 10}),
            "words": lambda: SequenceClassification({"name": "gru_classifier_tiny"}),
            "plain": lambda: SequenceClassification(PlainClassifier(words.vocab_size)),
        }[task]()
        with pytest.raises(ValueError, match=re.escape(message)) as err:
            validate(module, words, RobustEvaluation(**options), limit_val_batches=1)
    assert "\n" not in str(err.value)


def test_translation_refuses_restarts(pairs):
    task = Translation({"name": "transformer_tiny"}, num_logged_samples=0)
    with pytest.raises(ValueError, match="set restarts: 1"):
        validate(task, translation_data(pairs), RobustEvaluation(eps=0.1, restarts=2), limit_val_batches=1)


def test_options_from_the_command_line_and_yaml(tmp_path, monkeypatch):
    """The guide's line: a text config plus RobustEvaluation's token options on the command line."""
    from research.commands.fit import main

    monkeypatch.chdir(tmp_path)
    root = Path(__file__).resolve().parents[2]
    cli = main(["--config", str(root / "configs/text/bible_language_id_gru.yaml"),
                "--trainer.callbacks+=research.callbacks.RobustEvaluation", "--trainer.callbacks.eps=0.2",
                "--trainer.callbacks.inputs=tokens", "--trainer.callbacks.pgd_steps=2",
                "--trainer.callbacks.num_samples=64"], run=False)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, RobustEvaluation)]
    assert (callback.eps, callback.inputs, callback.num_samples) == (0.2, "tokens", 64)
    assert (callback.embedding.radius, callback.embedding.steps, callback.embedding.embeddings) == (0.2, 2, "token")


def test_robust_means_right_clean_and_under_every_restart(classifier, words, monkeypatch):
    """The worst case per element: the callback's counts are clean AND every restart's, whatever each one says."""
    calls = []

    def correct(task, batch):  # clean, then one verdict per restart, each another pattern over the rows
        rows = torch.arange(len(batch["labels"]))
        verdict = [rows % 2 == 0, rows % 3 != 0, rows % 5 != 0][len(calls) % 3]
        calls.append(verdict)
        return verdict

    monkeypatch.setattr(embedding_evaluation, "correct", correct)
    monkeypatch.setattr(embedding_evaluation.EmbeddingRobustness, "attack",
                        lambda self, task, batch, point, random_start: torch.zeros(*batch["tokens"].shape, 8))
    out = validate(classifier, words, RobustEvaluation(eps=0.1, num_samples=50, restarts=2, batch_size=16))
    assert len(calls) % 3 == 0 and len(calls) >= 6  # per batch: clean, restart 1, restart 2
    clean = torch.cat(calls[0::3])
    robust = clean & torch.cat(calls[1::3]) & torch.cat(calls[2::3])
    assert len(clean) == 50
    assert out["val/subset_clean_acc"] == pytest.approx(clean.float().mean().item())
    assert out["val/robust_acc"] == pytest.approx(robust.float().mean().item())
    assert 0 < out["val/robust_acc"] < min(torch.cat(calls[1::3]).float().mean(), out["val/subset_clean_acc"])


@pytest.mark.parametrize("kind", ["mlm", "translation"])
def test_evaluation_and_training_under_bf16_autocast(kind, verses, pairs):
    """precision: bf16-mixed: the attack, the masked-token accuracy and the greedy translations run under autocast."""
    torch.manual_seed(0)
    if kind == "mlm":
        dm = MaskedLanguageModellingDataModule(corpus=str(verses), vocab_size=300, max_length=32, batch_size=16,
                                               cache_dir=str(verses.parent / "cache"))
        task, metric, ceiling = MaskedLanguageModelling({"name": "bert_tiny", "embed_dim": 32, "depth": 1}), "acc", 1
    else:
        dm = translation_data(pairs)
        task = Translation({"name": "transformer_tiny"}, val_bleu_samples=None, num_logged_samples=0)
        metric, ceiling = "bleu", 100
    recipe = AdversarialTraining(attack="freelb" if kind == "mlm" else "pgd", eps=0.5, steps=2)
    run = trainer(precision="bf16-mixed", max_steps=2, limit_val_batches=2, val_check_interval=2,
                  callbacks=[recipe, RobustEvaluation(eps=0.5, num_samples=16, pgd_steps=2)])
    run.fit(task, datamodule=dm)
    metrics = {k: v.item() for k, v in run.callback_metrics.items()}
    assert metrics["train/delta_norm"] > 0
    assert 0 <= metrics[f"val/robust_{metric}"] <= ceiling and 0 <= metrics[f"val/subset_clean_{metric}"] <= ceiling
