"""A few steps of adversarial training on token embeddings under DDP on CPU (2 gloo processes); run by
test_embedding_training_ddp.py.

    python tests/callbacks/ddp_embedding_run.py DATA_DIR OUT_DIR gru:pgd gru:freelb bert:pgd bert:freelb \
        bert:pgd:fsdp bert:freelb:fsdp mlm:pgd mlm:freelb translation:pgd translation:freelb echo

Lightning's "ddp" strategy starts rank 1 by re-running this very command, so it is a script of its own.
Each MODEL:ATTACK is one fit of 3 steps of SequenceClassification on words labelled with their
language (DATA_DIR/english.txt, spanish.txt), in the same two processes one after the other, under
DDP or (MODEL:ATTACK:fsdp) FSDP2 (:class:`~research.tasks.sharding.FSDP2Strategy`). For each, each
rank writes ``OUT_DIR/<model>-<attack>[-fsdp]/rank<r>.pt``: the weights before the first step and
after the last, its batches, ``train/delta_norm`` of every step, the gradients after the first
backward (DDP's all-reduced ones), how often each parameter's gradient was accumulated in each step
(AccumulateGrad), how often DDP's communication hook ran in each step, and the robust accuracy that
RobustEvaluation logged; or, for a fit that stopped with a ValueError before training, its message.
``mlm:ATTACK`` and ``translation:ATTACK`` record the same for 3 steps of MaskedLanguageModelling (a
1-block BERT on DATA_DIR/verses.txt) and Translation (a 1+1-layer Transformer on DATA_DIR/pairs.tsv),
without validation (no RobustEvaluation figures).
``echo`` validates Translation's BLEU under RobustEvaluation instead (:func:`echo`).
"""

import os
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.tensor import DTensor

from research.callbacks import AdversarialTraining, RobustEvaluation
from research.data import LanguageWordsDataModule, MaskedLanguageModellingDataModule, TranslationDataModule
from research.tasks import MaskedLanguageModelling, SequenceClassification, Translation
from research.tasks.sharding import FSDP2Strategy

MODELS = {  # no dropout: the test recomputes the first step's gradient in one process
    "gru": {"name": "gru_classifier_tiny", "dropout": 0.0},
    "bert": {"name": "bert_tiny_classifier", "embed_dim": 32, "depth": 1, "num_heads": 2, "drop_rate": 0.0,
             "attn_drop_rate": 0.0},
}
TEXT_TASKS = {  # tasks beyond SequenceClassification: model spec (no dropout), as for MODELS
    "mlm": {"name": "bert_tiny", "embed_dim": 32, "depth": 1, "num_heads": 2, "drop_rate": 0.0,
            "attn_drop_rate": 0.0},
    "translation": {"name": "transformer_tiny", "dropout": 0.0},
}
RECIPES = {  # one PGD step from zero and FreeLB from zero: deterministic, so the test can recompute them
    "pgd": dict(attack="pgd", eps=0.5, steps=1),
    "freelb": dict(attack="freelb", eps=1.0, step_size=0.5, init_eps=0.0, steps=2),
}


def full(state: dict) -> dict[str, torch.Tensor]:
    """Detached copies, FSDP2's shards gathered into whole tensors (a collective: every rank calls it)."""
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone() for k, v in state.items()}


class CommCount:
    """State of a DDP communication hook that counts its calls (one per gradient bucket all-reduced)."""

    def __init__(self):
        self.calls = 0


def counting_allreduce(state: CommCount, bucket):
    state.calls += 1
    return default_hooks.allreduce_hook(None, bucket)


class Probe(Callback):
    """Records what the test checks (see the module docstring)."""

    def __init__(self, comm: CommCount):
        self.comm, self.record = comm, {"batches": [], "delta_norm": [], "accumulated": [], "allreduces": []}
        self._accumulated: dict[str, int] = {}

    def on_train_start(self, trainer, pl_module):
        self.record["initial"] = full(pl_module.state_dict())
        if isinstance(trainer.strategy, FSDP2Strategy):  # FSDP2 writes the sharded gradients itself
            return
        # Lightning registers a ddp_comm_hook on CUDA only; the wrapped DistributedDataParallel takes one on CPU too
        trainer.strategy.model.register_comm_hook(self.comm, counting_allreduce)
        for name, p in pl_module.named_parameters():
            p.register_post_accumulate_grad_hook(lambda _, name=name: self._count(name))

    def _count(self, name):
        self._accumulated[name] = self._accumulated.get(name, 0) + 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._accumulated, self._comm_before = {}, self.comm.calls
        self.record["batches"].append({k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)})

    def on_after_backward(self, trainer, pl_module):
        if "grads" not in self.record:
            self.record["grads"] = full({n: p.grad for n, p in pl_module.named_parameters() if p.grad is not None})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.record["accumulated"].append(dict(self._accumulated))
        self.record["allreduces"].append(self.comm.calls - self._comm_before)
        self.record["delta_norm"].append(trainer.callback_metrics["train/delta_norm"].item())


def text_task(data: Path, model: str, optim: dict) -> tuple[L.LightningModule, L.LightningDataModule]:
    """MaskedLanguageModelling or Translation, tiny, on the test's text (tokenizers cached in DATA_DIR)."""
    if model == "mlm":
        dm = MaskedLanguageModellingDataModule(corpus=str(data / "verses.txt"), vocab_size=300, max_length=32,
                                               cache_dir=str(data / "mlm-tokenizer"), batch_size=8)
        return MaskedLanguageModelling(dict(TEXT_TASKS[model]), optim=optim), dm
    dm = TranslationDataModule(corpus=str(data / "pairs.tsv"), vocab_size=300, batch_size=8,
                               cache_dir=str(data / "translation-tokenizer"), val_fraction=0.1, test_fraction=0.1)
    return Translation(dict(TEXT_TASKS[model]), optim=optim, num_logged_samples=0), dm


def main(words: Path, out: Path, model: str, attack: str, strategy: str = "ddp") -> None:
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(0)
    optim = {"name": "sgd", "lr": 0.1, "weight_decay": 0.0, "schedule": "constant"}
    classify = model in MODELS
    if classify:
        dm = LanguageWordsDataModule(files={lang: str(words / f"{lang}.txt") for lang in ("english", "spanish")},
                                     val_fraction=0.2, test_fraction=0.1, batch_size=8)
        task = SequenceClassification(MODELS[model], optim=optim)
    else:
        task, dm = text_task(words, model, optim)
    comm = CommCount()
    probe = Probe(comm)
    callbacks = [probe, AdversarialTraining(inputs="tokens", **RECIPES[attack])]
    if classify:
        callbacks.append(RobustEvaluation(eps=0.5, num_samples=16, pgd_steps=2))
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=FSDP2Strategy() if strategy == "fsdp" else "ddp",
        max_steps=3, limit_val_batches=2 if classify else 0, val_check_interval=3, num_sanity_val_steps=0,
        use_distributed_sampler=model != "translation",  # its bucket sampler shards the batches itself
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(task, datamodule=dm)
    record = probe.record | {"final": full(task.state_dict()), "world_size": trainer.world_size}
    if classify:
        record |= {"robust_acc": trainer.callback_metrics["val/robust_acc"].item(),
                   "clean_acc": trainer.callback_metrics["val/subset_clean_acc"].item()}
    torch.save(record, out / f"rank{trainer.global_rank}.pt")


def echo(data: Path, out: Path) -> None:
    """RobustEvaluation of Translation's BLEU over 2 processes: validate an echo translator (which ignores its
    embeddings, so BLEU under attack is the clean one) on every validation sentence of DATA/pairs.tsv."""
    from ddp_translation_run import EchoTranslation  # tests/tasks, on the path the test gives the script

    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(0)
    dm = TranslationDataModule(corpus=str(data / "pairs.tsv"), vocab_size=300, cache_dir=str(out / "tokenizer"),
                               batch_size=8, eval_batch_size=8, val_fraction=0.3, test_fraction=0.1)
    task = EchoTranslation({"name": "transformer_tiny"}, val_bleu_samples=None, num_logged_samples=0)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", use_distributed_sampler=False, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[RobustEvaluation(eps=0.5, num_samples=10_000, pgd_steps=1)])
    trainer.validate(task, datamodule=dm, verbose=False)
    record = {k: trainer.callback_metrics[f"val/{k}"].item() for k in ("bleu", "subset_clean_bleu", "robust_bleu")}
    torch.save(record | {"val_size": len(dm.split("val"))}, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    for run in sys.argv[3:]:
        out = Path(sys.argv[2]) / run.replace(":", "-")
        if run == "echo":
            echo(Path(sys.argv[1]), out)
            continue
        try:
            main(Path(sys.argv[1]), out, *run.split(":"))
        except ValueError as err:  # a refusal (FreeLB on FSDP2's shards): every rank raises it before the first step
            rank = int(os.environ.get("LOCAL_RANK", 0))  # Lightning sets it in the processes it starts
            torch.save({"error": str(err)}, out / f"rank{rank}.pt")
