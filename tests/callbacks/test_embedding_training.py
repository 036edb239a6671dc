"""AdversarialTraining on token inputs (research/callbacks/embedding_training.py): embedding PGD and FreeLB."""

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import trainer as quiet_trainer
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from research.attacks import embedding_perturbation, freelb_update
from research.callbacks import AdversarialTraining
from research.callbacks import embedding_training as token_side
from research.commands.fit import main
from research.data.text import EMBEDDED_BIBLE, read_tsv
from research.data.tokenizer import SpecialTokens
from research.tasks import ImageClassification, MaskedLanguageModelling, SequenceClassification, Translation

ROOT = Path(__file__).resolve().parents[2]
SPECIAL = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4)
VOCAB = 40


def mlm_batch(seed: int = 0) -> dict:
    """[CLS] tokens [SEP] [PAD]..., some tokens [MASK]ed with labels there: every kind of position."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (4, 9), generator=g)
    lengths = torch.tensor([9, 7, 5, 8])
    labels = torch.full_like(ids, -100)
    for row, n in enumerate(lengths.tolist()):
        ids[row, 0], ids[row, n - 1], ids[row, n:] = SPECIAL.cls, SPECIAL.sep, SPECIAL.pad
        labels[row, 2], labels[row, 3] = ids[row, 2], ids[row, 3]
        ids[row, 2] = SPECIAL.mask
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "padding_mask": ids == SPECIAL.pad,
            "labels": labels}


class TokenData(L.LightningDataModule):
    """A datamodule that knows its tokenizer's special tokens, as the text datamodules do."""

    special_tokens = SPECIAL
    vocab_size = VOCAB

    def __init__(self, batches: list[dict]) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self):
        return DataLoader(self.batches, batch_size=None)


def mlm_task(compile: bool | dict = False, **model) -> MaskedLanguageModelling:
    torch.manual_seed(0)
    spec = {"name": "bert_tiny", "vocab_size": VOCAB, "embed_dim": 32, "depth": 1, "num_heads": 2,
            "drop_rate": 0.0, "attn_drop_rate": 0.0} | model
    optim = {"name": "sgd", "lr": 0.1, "weight_decay": 0.0, "warmup_steps": 0}
    return MaskedLanguageModelling(spec, optim=optim, compile=compile)


def grads_of(module) -> dict:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


class Recorder(Callback):
    """Gradients after the step's one backward, and the parameters whose .grad the training step changed."""

    def __init__(self) -> None:
        self.grads, self.grads_before_backward, self._before = [], [], {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._before = grads_of(pl_module)  # the previous step's, until Lightning's zero_grad

    def on_before_zero_grad(self, trainer, pl_module, optimizer):  # after training_step, before backward
        now = grads_of(pl_module)
        changed = [n for n in now.keys() | self._before.keys()
                   if n not in now or n not in self._before or not torch.equal(now[n], self._before[n])]
        self.grads_before_backward.append(sorted(changed))

    def on_after_backward(self, trainer, pl_module):
        self.grads.append(grads_of(pl_module))


def record_deltas(monkeypatch, rng_states: list | None = None) -> list:
    """The perturbation of every pass of the callback (and, into ``rng_states``, the RNG state it starts from)."""
    deltas = []
    original = token_side.embedding_perturbation

    def recording(point, delta):
        deltas.append(delta.detach().clone())
        if rng_states is not None:
            rng_states.append(torch.get_rng_state())
        return original(point, delta)

    monkeypatch.setattr(token_side, "embedding_perturbation", recording)
    return deltas


def fit(task, callback, batches, **trainer_args):
    recorder = Recorder()
    trainer = quiet_trainer(max_steps=len(batches), callbacks=[callback, recorder], **trainer_args)
    trainer.fit(task, datamodule=TokenData(batches))
    return trainer, recorder


def test_freelb_gradient_equals_the_hand_written_loop(monkeypatch):
    states = []
    deltas = record_deltas(monkeypatch, states)
    task = mlm_task(drop_rate=0.1, attn_drop_rate=0.1)
    reference = copy.deepcopy(task)
    batch = mlm_batch()
    k, eps, lr = 3, 0.6, 0.25
    callback = AdversarialTraining(attack="freelb", eps=eps, steps=k, step_size=lr, init_eps=0.4)
    _, recorder = fit(task, callback, [batch])
    assert len(deltas) == k and recorder.grads_before_backward == [[]]
    assert all(torch.equal(state, states[0]) for state in states)  # one dropout draw for the K passes (Sec. 3.2)

    # FreeLB as run_glue_freelb.py writes it: K backward passes of loss / K into .grad, delta from delta.grad
    model = reference.model.train()
    point = model.embedding_output()
    mask = (batch["input_ids"] > SPECIAL.mask)  # neither [PAD], [CLS], [SEP] nor [MASK]
    delta = deltas[0]
    assert delta[~mask].abs().max() == 0 and delta[mask].abs().min() > 0
    for step in range(k):
        torch.testing.assert_close(delta, deltas[step], rtol=0, atol=1e-6)
        delta = delta.clone().requires_grad_(True)
        torch.set_rng_state(states[0])  # the reference reuses the first pass's dropout masks (dp_masks)
        with embedding_perturbation(point, delta):
            loss = reference._losses(batch)["loss"]
        (loss / k).backward()
        if step < k - 1:
            delta = freelb_update(delta, delta.grad, mask, step_size=lr, eps=eps)
            assert delta[~mask].abs().max() == 0
    grads = recorder.grads[0]
    assert set(grads) == {n for n, p in reference.named_parameters() if p.grad is not None}
    for name, p in reference.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, rtol=0, atol=1e-6, msg=name)


def test_pgd_never_perturbs_padding_or_special_tokens_and_leaves_no_grad(monkeypatch):
    deltas = record_deltas(monkeypatch)
    batches = [mlm_batch(0), mlm_batch(1)]
    callback = AdversarialTraining(attack="pgd", eps=0.2, steps=3, inputs="tokens")
    trainer, recorder = fit(mlm_task(), callback, batches)
    assert callback.tokens.perturbed_batches == 2
    assert recorder.grads_before_backward == [[], []]  # the attack wrote no .grad
    assert len(deltas) == 2  # the task's own step under the final delta, once per batch
    for delta, batch in zip(deltas, batches):
        special = batch["input_ids"] <= SPECIAL.mask
        assert delta[special].abs().max() == 0
        assert (delta[~special].norm(dim=-1) > 0).all()
    assert trainer.callback_metrics["train/attack_eps"] == pytest.approx(0.2)
    assert math.isfinite(trainer.callback_metrics["train/loss"])


def test_clean_plus_adversarial_objective_adds_the_adversarial_loss():
    callback = AdversarialTraining(attack="pgd", eps=0.3, steps=1, objective="clean+adversarial")
    trainer, _ = fit(mlm_task(), callback, [mlm_batch()])
    metrics = trainer.callback_metrics
    assert metrics["train/adversarial_loss"] > metrics["train/loss"]  # the clean loss, logged by the task


@pytest.mark.parametrize("attack", ["pgd", "freelb"])
def test_bf16_autocast(attack):
    callback = AdversarialTraining(attack=attack, eps=0.3, steps=2)
    trainer, recorder = fit(mlm_task(), callback, [mlm_batch()], precision="bf16-mixed")
    assert callback.tokens.perturbed_batches == 1
    assert math.isfinite(trainer.callback_metrics["train/loss"])
    assert all(torch.isfinite(g).all() for g in recorder.grads[0].values())


def test_token_position_embeddings_and_the_gru_refusal():
    callback = AdversarialTraining(attack="pgd", eps=0.2, steps=2, embeddings="token+position")
    fit(mlm_task(), callback, [mlm_batch()])
    assert callback.tokens.perturbed_batches == 1
    gru = SequenceClassification({"name": "gru_classifier_tiny", "vocab_size": VOCAB, "num_classes": 2})
    words = {"tokens": torch.randint(1, VOCAB, (4, 5)), "lengths": torch.tensor([5, 4, 3, 5]),
             "labels": torch.tensor([0, 1, 0, 1])}
    with pytest.raises(ValueError, match="^AdversarialTraining: GRUClassifier has no position embeddings .*"
                                         "use embeddings='token'$"):
        fit(gru, AdversarialTraining(attack="freelb", eps=0.2, steps=2, embeddings="token+position"), [words])


@pytest.mark.parametrize("attack", ["pgd", "freelb"])
def test_a_compiled_model_trains_as_the_eager_one(attack):
    # the hooks sit on modules inside the compiled model: dynamo must trace them, not skip them
    losses = []
    for compile in (False, {"backend": "eager"}):
        callback = AdversarialTraining(attack=attack, eps=0.3, steps=2)
        trainer, _ = fit(mlm_task(compile), callback, [mlm_batch(0), mlm_batch(1)])
        losses.append(trainer.callback_metrics["train/loss"].item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_eps_warm_up_starts_clean():
    callback = AdversarialTraining(attack="pgd", eps=0.2, steps=2, warmup_epochs=1)
    trainer, _ = fit(mlm_task(), callback, [mlm_batch(0), mlm_batch(1)])
    assert callback.tokens.perturbed_batches == 1  # eps 0 at the first batch, 0.1 at the second
    assert trainer.callback_metrics["train/attack_eps"] == pytest.approx(0.1)


def test_task_hooks_mask_padding_and_special_tokens_and_give_the_training_loss():
    ids = torch.tensor([[2, 7, 8, 3, 0], [2, 9, 4, 3, 1]])  # [CLS] .. [SEP] [PAD]; [MASK] and [UNK] in row 2
    mlm = mlm_task()
    mlm.trainer = quiet_trainer()
    mlm.trainer.datamodule = TokenData([])
    batch = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "padding_mask": ids == 0,
             "labels": torch.where(ids == 4, 5, -100)}
    assert mlm.perturbable_tokens(batch).tolist() == [[False, True, True, False, False],
                                                      [False, True, False, False, True]]  # [UNK] is a word
    assert mlm.adversarial_loss(batch).dtype == torch.float32
    assert mlm.adversarial_loss(batch) == mlm._losses(batch)["loss"]

    words = SequenceClassification({"name": "gru_classifier_tiny", "vocab_size": VOCAB, "num_classes": 2})
    batch = {"tokens": torch.tensor([[5, 6, 7], [5, 6, 0]]), "lengths": torch.tensor([3, 2]),
             "labels": torch.tensor([0, 1])}
    with pytest.warns(UserWarning, match="runs without a datamodule, so its special tokens are unknown"):
        assert words.perturbable_tokens(batch).tolist() == [[True, True, True], [True, True, False]]
    before = words.train_acc.update_count
    assert words.adversarial_loss(batch) == F.cross_entropy(words(batch["tokens"], batch["lengths"]), batch["labels"])
    assert words.train_acc.update_count == before  # no metric moved

    translator = Translation({"name": "transformer_tiny", "vocab_size": VOCAB, "pad_id": 0}, bos_id=2, eos_id=3)
    src = torch.tensor([[7, 8, 3, 0], [2, 9, 3, 0]])
    with pytest.warns(UserWarning):
        assert translator.perturbable_tokens({"src": src}).tolist() == [[True, True, False, False],
                                                                         [False, True, False, False]]


class NoInterface(torch.nn.Module):
    vocab_size, num_classes = VOCAB, 2

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, tokens, lengths=None):
        return self.head(self.embed(tokens).mean(1))


def test_errors_name_what_is_wrong():
    words = {"tokens": torch.randint(1, VOCAB, (4, 5)), "lengths": torch.tensor([5, 4, 3, 5]),
             "labels": torch.tensor([0, 1, 0, 1])}
    image_task = ImageClassification({"name": "resnet20", "num_classes": 4})
    cases = [
        (lambda: fit(image_task, AdversarialTraining(attack="pgd", eps=0.1, steps=1, inputs="tokens"), [words]),
         r"^AdversarialTraining: inputs='tokens' \(attack='pgd'\) needs a task with token inputs .*; "
         r"ImageClassification has none$"),
        (lambda: fit(image_task, AdversarialTraining(attack="freelb", eps=0.1, steps=2), [words]),
         r"^AdversarialTraining: attack='freelb' needs token inputs, but ImageClassification has none"),
        (lambda: AdversarialTraining(attack="freelb", eps=0.1, steps=2, inputs="images"),
         r"^AdversarialTraining: attack='freelb' perturbs token embeddings and has no image form"),
        (lambda: fit(SequenceClassification(NoInterface()), AdversarialTraining(attack="pgd", eps=0.1, steps=1),
                     [words]),
         r"^AdversarialTraining: SequenceClassification: embedding-space attacks need a model with the "
         r"EmbeddingInputs interface \(research.models.protocols\); NoInterface lacks "
         r"\['get_input_embeddings', 'embedding_output'\]$"),
        (lambda: AdversarialTraining(attack="freelb", eps=0.0, steps=2), r"^AdversarialTraining: eps must be > 0"),
        (lambda: AdversarialTraining(attack="pgd", eps=-0.1, steps=2, inputs="tokens"),
         r"^AdversarialTraining: eps must be > 0"),
        (lambda: AdversarialTraining(attack="trades", eps=0.1, steps=2, inputs="tokens"),
         r"^AdversarialTraining: attack='trades' is an image recipe; on tokens use attack='pgd' or 'freelb'$"),
        (lambda: fit(mlm_task(), AdversarialTraining(attack="mart", eps=0.1, steps=2), [mlm_batch()]),
         r"^AdversarialTraining: attack='mart' is an image recipe, but MaskedLanguageModelling has token inputs"),
        (lambda: fit(mlm_task(), AdversarialTraining(attack="free", eps=0.1, replays=2), [mlm_batch()]),
         r"^AdversarialTraining: attack='free' is an image recipe"),
        (lambda: fit(mlm_task(), AdversarialTraining(attack="fgsm_rs", eps=0.1), [mlm_batch()]),
         r"^AdversarialTraining: attack='fgsm_rs' is an image recipe"),
        (lambda: AdversarialTraining(attack="freelb", eps=0.1), r"attack='freelb' needs steps >= 1"),
        (lambda: AdversarialTraining(attack="pgd", eps=0.1, steps=1, init_eps=0.1),
         r"init_eps is an option of attack='freelb' only"),
        (lambda: AdversarialTraining(attack="freelb", eps=0.1, steps=2, objective="adversarial"),
         r"objective is an option of attack='pgd' on tokens only"),
        # token attacks are L2: an explicit L-inf is refused (told, at setup, or by attack='freelb')
        (lambda: AdversarialTraining(attack="pgd", eps=0.1, steps=1, inputs="tokens", norm="linf"),
         r"^AdversarialTraining: norm='linf' does not apply to token inputs: embedding-space attacks are L2 "
         r"\(per token for pgd, per sequence for freelb\); remove norm$"),
        (lambda: AdversarialTraining(attack="freelb", eps=0.1, steps=2, norm="linf"),
         r"^AdversarialTraining: norm='linf' does not apply to token inputs"),
        (lambda: fit(mlm_task(), AdversarialTraining(attack="pgd", eps=0.1, steps=1, norm="linf"), [mlm_batch()]),
         r"^AdversarialTraining: norm='linf' does not apply to token inputs"),
    ]
    for run, message in cases:
        with pytest.raises(ValueError, match=message):
            run()


# -- from YAML alone: the shipped text configs plus a callbacks snippet -------------------------------------


def yaml_fit(tmp_path, monkeypatch, config: str, callback: dict, *data_args: str):
    """``python -m research fit --config <config> --config <snippet>``: 2 steps on 600 lines of the embedded Bible."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["research"])
    corpus = tmp_path / "bible.tsv"
    corpus.write_text("\n".join("\t".join(pair) for pair in read_tsv(EMBEDDED_BIBLE)[:600]) + "\n", encoding="utf-8")
    snippet = tmp_path / "adversarial.yaml"
    snippet.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "research.callbacks.AdversarialTraining", "init_args": callback}]}}))
    cli = main(["fit", "--config", str(ROOT / "configs" / config), "--config", str(snippet),
                "--trainer.max_steps", "2", "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "1",
                "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false",
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                "--test_after_fit", "false", "--experiment", "adv", "--data.init_args.corpus", str(corpus),
                *data_args])
    (adversarial,) = [c for c in cli.trainer.callbacks if isinstance(c, AdversarialTraining)]
    return cli.trainer, adversarial


@pytest.mark.parametrize(
    ("config", "callback", "data_args"),
    [
        ("bert/bible_bert_tiny.yaml", {"attack": "freelb", "eps": 0.5, "steps": 2},
         ["--data.init_args.vocab_size", "300", "--data.init_args.max_length", "32", "--data.init_args.batch_size", "8",
          "--data.init_args.cache_dir", "cache"]),
        ("seq2seq/bible_en_es_transformer_small.yaml", {"attack": "pgd", "eps": 0.1, "steps": 2},
         ["--data.init_args.vocab_size", "300", "--data.init_args.batch_size", "8", "--data.init_args.cache_dir",
          "cache", "--model.init_args.model", '{"name": "transformer_tiny"}', "--model.init_args.val_bleu_samples",
          "2", "--data.init_args.eval_batch_size", "2"]),
        ("seq2seq/bible_en_es_gru_attention.yaml",
         {"attack": "pgd", "eps": 0.1, "steps": 1, "objective": "clean+adversarial"},
         ["--data.init_args.vocab_size", "300", "--data.init_args.batch_size", "8", "--data.init_args.cache_dir",
          "cache", "--model.init_args.model", '{"name": "gru_attention_tiny"}', "--model.init_args.val_bleu_samples",
          "2", "--data.init_args.eval_batch_size", "2"]),
        ("text/bible_language_id_gru.yaml", {"attack": "freelb", "eps": 0.5, "steps": 3},
         ["--data.init_args.batch_size", "16"]),
    ],
    ids=["mlm-freelb", "transformer-pgd", "gru-seq2seq-pgd-miyato", "gru-classifier-freelb"],
)
def test_fit_from_yaml(tmp_path, monkeypatch, config, callback, data_args):
    trainer, adversarial = yaml_fit(tmp_path, monkeypatch, config, callback, *data_args)
    assert trainer.global_step == 2
    assert adversarial.tokens is not None and adversarial.tokens.perturbed_batches == 2
    metrics = trainer.callback_metrics
    assert metrics["train/attack_eps"] == pytest.approx(callback["eps"])
    assert math.isfinite(metrics["train/loss"]) and metrics["train/delta_norm"] > 0


FSDP2_FREELB = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/callbacks"]
from test_embedding_training import AdversarialTraining, TokenData, mlm_batch, mlm_task, quiet_trainer
from research.tasks.sharding import FSDP2Strategy
callback = AdversarialTraining(attack="freelb", eps=0.3, steps=2)
trainer = quiet_trainer(strategy=FSDP2Strategy(), max_steps=1, callbacks=[callback])
trainer.fit(mlm_task(), datamodule=TokenData([mlm_batch()]))
"""


def test_freelb_refuses_fsdp2_sharded_parameters():
    # one process with its own process group (gloo), so that this test session's stays clean
    run = subprocess.run([sys.executable, "-c", FSDP2_FREELB, str(ROOT / "tests")], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode != 0
    assert ("ValueError: AdversarialTraining: attack='freelb' cannot run on FSDP2-sharded parameters (its ascent "
            "passes' gradients would be lost); use strategy 'ddp', or attack='pgd'") in run.stderr
