"""Adversarial training on token embeddings under 2-process gloo DDP, bf16 autocast and FSDP2 (issue 17, item 2)."""

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import trainer as quiet_trainer
from ddp_embedding_run import MODELS, RECIPES, text_task

from research.attacks import embedding_perturbation, embedding_pgd
from research.callbacks import AdversarialTraining, RobustEvaluation
from research.data import LanguageWordsDataModule
from research.data.text import EMBEDDED_BIBLE, read_tsv
from research.tasks import SequenceClassification

SCRIPT = Path(__file__).with_name("ddp_embedding_run.py")
ROOT = Path(__file__).resolve().parents[2]
RUNS = ("gru:pgd", "gru:freelb", "bert:pgd", "bert:freelb")
SHARDED = ("bert:pgd:fsdp", "bert:freelb:fsdp")  # FSDP2 (research.tasks.sharding.FSDP2Strategy)
TEXT_RUNS = ("mlm:pgd", "mlm:freelb", "translation:pgd", "translation:freelb")  # MaskedLanguageModelling, Translation


def write_words(folder: Path) -> Path:
    """The first 60 verses of the shipped Bible in each language, as the word classifier's two files;
    pairs.tsv, 120 distinct short English verses each paired with itself, for the translators; and
    verses.txt, 300 English verses, for the masked language model."""
    verses = read_tsv(EMBEDDED_BIBLE)
    for column, language in enumerate(("english", "spanish")):
        (folder / f"{language}.txt").write_text("\n".join(pair[column] for pair in verses[:60]), encoding="utf-8")
    sentences = list(dict.fromkeys(en for en, _ in verses if len(en.split()) <= 10))[:120]
    (folder / "pairs.tsv").write_text("".join(f"{en}\t{en}\n" for en in sentences), encoding="utf-8")
    (folder / "verses.txt").write_text("\n".join(en for en, _ in verses[:300]), encoding="utf-8")
    return folder


def words_data(folder: Path) -> LanguageWordsDataModule:
    """As the DDP script builds it."""
    return LanguageWordsDataModule(files={lang: str(folder / f"{lang}.txt") for lang in ("english", "spanish")},
                                   val_fraction=0.2, test_fraction=0.1, batch_size=8)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Every run of :data:`RUNS` in one pair of gloo processes (their start-up is most of the time)."""
    words = write_words(tmp_path_factory.mktemp("words"))
    out = tmp_path_factory.mktemp("ddp_embedding")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(SCRIPT.parent), str(ROOT / "tests" / "tasks"),
                                       os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",  # two processes on a small machine: no thread oversubscription
        "WANDB_MODE": "disabled",
    }
    done = subprocess.run([sys.executable, str(SCRIPT), str(words), str(out), *RUNS, *SHARDED, *TEXT_RUNS,
                           "echo"], env=env,
                          cwd=out, capture_output=True, text=True, timeout=240)  # a hang (a rank waiting) fails here
    assert done.returncode == 0, done.stderr[-3000:]  # e.g. DDP's "marked ready twice" or unused-parameter errors
    return words, out


def local_gradient(task: SequenceClassification, batch: dict, attack: str) -> dict[str, torch.Tensor]:
    """One process's gradient of the first step (:func:`recipe_gradient`) of the word classifier."""
    # the words have no special tokens: every character inside a word's length may move, no padding
    mask = torch.arange(batch["tokens"].shape[1]) < batch["lengths"][:, None]
    return recipe_gradient(task, lambda: F.cross_entropy(task(batch["tokens"], batch["lengths"]), batch["labels"]),
                           mask, attack)


def recipe_gradient(task, loss, mask: torch.Tensor, attack: str) -> dict[str, torch.Tensor]:
    """One process's gradient of the first step, derived here from the papers rather than the callback.

    pgd: one step from zero (Miyato et al.'s ``epsilon * g / ||g||`` per token), then the loss at the
    perturbed embeddings. freelb (run_glue_freelb.py with adv_init_mag 0): K passes, each adding the
    gradient of loss_k / K; between them delta += adv_lr * g / ||g||_F, rescaled to adv_max_norm.
    """
    params = dict(task.named_parameters())
    point = task.embedding_point()
    recipe = RECIPES[attack]
    if attack == "pgd":
        delta = embedding_pgd(loss, point, mask, radius=recipe["eps"], steps=1)
        with embedding_perturbation(point, delta):
            return dict(zip(params, torch.autograd.grad(loss(), list(params.values()))))
    k = recipe["steps"]
    width = task.model.get_input_embeddings().embedding_dim
    delta = torch.zeros(*mask.shape, width)
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for _ in range(k):
        delta.requires_grad_(True)
        with embedding_perturbation(point, delta):
            *grads, delta_grad = torch.autograd.grad(loss() / k, [*params.values(), delta])
        for name, g in zip(params, grads):
            total[name] += g
        delta_grad = delta_grad * mask[..., None]  # padding and special tokens never move
        norm = delta_grad.flatten(1).norm(dim=1).clamp_min(1e-8)[:, None, None]
        delta = (delta + recipe["step_size"] * delta_grad / norm).detach()
        delta_norm = delta.flatten(1).norm(dim=1)[:, None, None]
        delta = torch.where(delta_norm > recipe["eps"], delta * recipe["eps"] / delta_norm, delta)
    return total


@pytest.mark.parametrize("run", RUNS)
def test_token_recipes_under_ddp(ddp_runs, run):
    words, out = ddp_runs
    model, attack = run.split(":")
    ranks = [torch.load(out / f"{model}-{attack}" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["world_size"] == 2
    for name, value in ranks[0]["final"].items():
        assert torch.equal(value, ranks[1]["final"][name]), name  # the ranks end with identical weights
        assert not torch.equal(value, ranks[0]["initial"][name]) or "position" in name, name  # and trained
    names = {name for name, _ in ranks[0]["grads"].items()}
    for step in range(3):
        # each rank perturbs its own shard: other words, another perturbation
        assert not torch.equal(ranks[0]["batches"][step]["tokens"], ranks[1]["batches"][step]["tokens"])
        assert ranks[0]["delta_norm"][step] != ranks[1]["delta_norm"][step]
        for rank in ranks:
            assert rank["delta_norm"][step] > 0
            # the attack's passes produce no parameter gradient: each one is accumulated once a step, by the
            # training backward, and DDP all-reduces once a step (one bucket for these small models)
            assert rank["accumulated"][step] == dict.fromkeys(names, 1)
            assert rank["allreduces"][step] == 1
    # what DDP averaged is the mean of each rank's gradient of the recipe (FreeLB: the sum over its K passes / K)
    dm = words_data(words)
    dm.setup("fit")
    spec = MODELS[model] | {"vocab_size": dm.vocab_size, "num_classes": dm.num_classes, "pad_id": dm.pad_id}
    task = SequenceClassification(spec)
    task.load_state_dict(ranks[0]["initial"])
    expected = [local_gradient(task, rank["batches"][0], attack) for rank in ranks]
    for name, grad in ranks[0]["grads"].items():
        torch.testing.assert_close(grad, (expected[0][name] + expected[1][name]) / 2, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")
        assert torch.equal(grad, ranks[1]["grads"][name])
    # RobustEvaluation on tokens sums its counts over the ranks: both log the same figures
    assert ranks[0]["robust_acc"] == ranks[1]["robust_acc"] <= ranks[0]["clean_acc"] == ranks[1]["clean_acc"]


@pytest.mark.parametrize("run", TEXT_RUNS)
def test_token_recipes_of_the_text_tasks_under_ddp(ddp_runs, run):
    """MaskedLanguageModelling (1-block BERT) and Translation (1+1-layer Transformer), 3 steps each: what
    :func:`test_token_recipes_under_ddp` checks, the tokens to perturb taken from the tokenizer's special ids."""
    words, out = ddp_runs
    model, attack = run.split(":")
    ranks = [torch.load(out / run.replace(":", "-") / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["world_size"] == 2
    for name, value in ranks[0]["final"].items():
        assert torch.equal(value, ranks[1]["final"][name]), name  # the ranks end with identical weights
    trained = [name for name, value in ranks[0]["final"].items() if not torch.equal(value, ranks[0]["initial"][name])]
    assert len(trained) > len(ranks[0]["final"]) // 2, trained
    names = set(ranks[0]["grads"])
    assert names and names == set(ranks[1]["grads"])
    source = "input_ids" if model == "mlm" else "src"
    for step in range(3):
        # each rank perturbs its own shard: other sentences, another perturbation
        assert not torch.equal(ranks[0]["batches"][step][source], ranks[1]["batches"][step][source])
        assert ranks[0]["delta_norm"][step] != ranks[1]["delta_norm"][step]
        for rank in ranks:
            assert rank["delta_norm"][step] > 0
            # no parameter gradient from the attack's passes; one all-reduce a step (one bucket: < 1 MB of weights)
            assert rank["accumulated"][step] == dict.fromkeys(names, 1)
            assert rank["allreduces"][step] == 1
    # what DDP averaged is the mean of each rank's gradient of the recipe, the tokens to perturb derived here:
    # every one but padding, [PAD], [CLS], [SEP], [MASK] (BOS and EOS of the translator are [CLS] and [SEP])
    task, dm = text_task(words, model, {})
    task.fit_to_data(dm)
    task.load_state_dict(ranks[0]["initial"])
    special = torch.tensor([dm.special_tokens.pad, dm.special_tokens.cls, dm.special_tokens.sep,
                            dm.special_tokens.mask])
    expected = []
    for rank in ranks:
        batch = rank["batches"][0]
        mask = ~torch.isin(batch[source], special)
        if model == "mlm":
            mask &= ~batch["padding_mask"]
        expected.append(recipe_gradient(task, lambda batch=batch: task.adversarial_loss(batch), mask, attack))
    for name, grad in ranks[0]["grads"].items():
        torch.testing.assert_close(grad, (expected[0][name] + expected[1][name]) / 2, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")
        assert torch.equal(grad, ranks[1]["grads"][name]), name  # DDP's average, the same on both ranks


def test_pgd_on_tokens_under_fsdp2_ends_with_ddps_weights(ddp_runs):
    """FSDP2 (the BERT classifier: one unit per block, then the root) trains as DDP does, bit for bit here."""
    _, out = ddp_runs
    ddp, fsdp = ([torch.load(out / name / f"rank{r}.pt", weights_only=True) for r in range(2)]
                 for name in ("bert-pgd", "bert-pgd-fsdp"))
    for name, value in ddp[0]["final"].items():
        assert not torch.equal(value, ddp[0]["initial"][name]), name
        for rank in fsdp:
            torch.testing.assert_close(rank["final"][name], value, rtol=1e-5, atol=1e-7, msg=name)
    for rank in range(2):
        assert fsdp[rank]["delta_norm"] == pytest.approx(ddp[rank]["delta_norm"], rel=1e-5)  # the same attacks
    assert fsdp[0]["robust_acc"] == fsdp[1]["robust_acc"] == ddp[0]["robust_acc"]


def test_freelb_under_fsdp2_stops_with_one_line(ddp_runs):
    """FreeLB's ascent passes take parameter gradients of the sharded weights, which FSDP2 would not reduce."""
    _, out = ddp_runs
    for rank in range(2):
        error = torch.load(out / "bert-freelb-fsdp" / f"rank{rank}.pt", weights_only=True)["error"]
        assert error.startswith("AdversarialTraining: attack='freelb' cannot run on FSDP2")
        assert "\n" not in error


def test_translation_bleu_under_attack_is_one_corpus_bleu_over_the_ranks(ddp_runs):
    """Each rank attacks and decodes its own sentences; the BLEU is that of all of them (n-gram counts gathered).

    The echo translator drops a token of some sentences (tests/tasks/ddp_translation_run.py), so a per-rank
    BLEU would differ from the corpus BLEU, and it ignores its embeddings, so the attacked BLEU is the clean one.
    """
    _, out = ddp_runs
    ranks = [torch.load(out / "echo" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank logs the same figures
    assert 0 < ranks[0]["bleu"] < 100
    # the subset is the whole split (num_samples above its size), so its clean BLEU is the task's own
    assert ranks[0]["subset_clean_bleu"] == pytest.approx(ranks[0]["bleu"], abs=1e-4)
    assert ranks[0]["robust_bleu"] == pytest.approx(ranks[0]["subset_clean_bleu"], abs=1e-4)


trainer = partial(quiet_trainer, num_sanity_val_steps=0)


@pytest.mark.parametrize("attack", ["pgd", "freelb"])
@pytest.mark.parametrize("model", ["gru", "bert"])
def test_token_recipes_under_bf16_autocast(tmp_path, model, attack):
    """precision: bf16-mixed: the attack and the step run under CPU autocast; the loss stays finite, tokens move."""
    dm = words_data(write_words(tmp_path))
    task = SequenceClassification(dict(MODELS[model]), optim={"lr": 1e-2})
    recipe = AdversarialTraining(inputs="tokens", **(RECIPES[attack] | {"steps": 2}))
    seen = []
    task.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    run = trainer(precision="bf16-mixed", max_steps=3, limit_val_batches=2, val_check_interval=3,
                  callbacks=[recipe, RobustEvaluation(eps=0.5, num_samples=16, pgd_steps=2)])
    run.fit(task, datamodule=dm)
    assert torch.bfloat16 in seen  # autocast was on
    assert torch.isfinite(run.callback_metrics["train/loss"])
    assert run.callback_metrics["train/delta_norm"] > 0
    assert 0 <= run.callback_metrics["val/robust_acc"] <= run.callback_metrics["val/subset_clean_acc"]
