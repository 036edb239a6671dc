"""Short runs under DDP and under FSDP2 (2 CPU processes, gloo) from the same seed and data; run by test_fsdp.py.

    python tests/fsdp_run.py OUT_DIR vit adversarial bert

Lightning starts rank 1 by re-running this very command, so it is a script of its own; the fits run
one after another in the same two processes (one process start-up for all). Each case trains one
model under ``ddp`` and under :class:`research.tasks.sharding.FSDP2Strategy` for 2 epochs of 2
steps, either straight or (``resumed``) 1 epoch that saves ``last.ckpt`` and a new task and Trainer
that resume from it for the second; ``vit_ac`` is FSDP2 with activation checkpointing. Each rank
writes ``OUT_DIR/<case>/<strategy>-rank<r>.pt``: the full weights at the end (FSDP2's shards
gathered), the images of every step and whether the parameters were sharded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.distributed.tensor import DTensor

from research.callbacks import AdversarialTraining, RNGState
from research.data import MaskedLanguageModellingDataModule, SyntheticDataModule
from research.data.text import EMBEDDED_BIBLE, read_tsv
from research.models.vit import VisionTransformer
from research.tasks import ImageClassification, MaskedLanguageModelling
from research.tasks.sharding import FSDP2Strategy

EPOCHS, BATCHES = 2, 2  # a resume starts at an epoch boundary (one that ends at max_steps resumes elsewhere)
ADAMW = {"name": "adamw", "lr": 3e-3, "weight_decay": 0.05, "schedule": "constant"}  # moments: a resume needs them


def full_weights(task: L.LightningModule) -> dict[str, torch.Tensor]:
    """The task's state dict with every FSDP2 shard gathered into the whole tensor (a collective: all ranks call it)."""
    state = task.state_dict()
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone() for k, v in state.items()}


class Probe(Callback):
    """Records the images each step trains on (after the attack when listed after it) and whether weights are shards."""

    def __init__(self):
        self.images: list[torch.Tensor] = []
        self.sharded: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.sharded.append(all(isinstance(p, DTensor) for p in pl_module.parameters()))
        if isinstance(batch, (list, tuple)):
            self.images.append(batch[0].detach().clone())


def vit_task() -> ImageClassification:
    model = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=4, embed_dim=32, depth=2, num_heads=2)
    return ImageClassification(model, optim=ADAMW)


def vit_data(folder: Path) -> SyntheticDataModule:
    return SyntheticDataModule(num_samples=96, num_classes=4, img_size=8, in_chans=1, batch_size=4)


def bert_task() -> MaskedLanguageModelling:
    spec = {"name": "bert_tiny", "embed_dim": 32, "depth": 2, "num_heads": 2, "drop_rate": 0.0}
    return MaskedLanguageModelling(spec, optim=ADAMW)  # the vocabulary comes from the tokenizer


def bert_data(folder: Path) -> MaskedLanguageModellingDataModule:
    corpus = folder / "verses.txt"
    if not corpus.exists():
        corpus.write_text("\n".join(english for english, _ in read_tsv(EMBEDDED_BIBLE)[:300]), encoding="utf-8")
    return MaskedLanguageModellingDataModule(corpus=str(corpus), vocab_size=400, cache_dir=str(folder / "cache"),
                                             max_length=32, batch_size=4)


CASES = {  # name: task, data, attack, the strategies (name, activation checkpointing), resumed
    "vit": (vit_task, vit_data, False, [("ddp", False), ("fsdp", False)], True),
    "vit_ac": (vit_task, vit_data, False, [("fsdp", True)], False),
    "adversarial": (vit_task, vit_data, True, [("ddp", False), ("fsdp", False)], False),
    "bert": (bert_task, bert_data, False, [("ddp", False), ("fsdp", False)], True),
}


def fit(task, data, strategy, *, epochs: int, callbacks, folder: Path, ckpt_path=None) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=strategy, max_epochs=epochs, limit_train_batches=BATCHES,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=folder,
        callbacks=[*callbacks, RNGState(), ModelCheckpoint(dirpath=folder, save_last=True)],
    )
    trainer.fit(task, datamodule=data, ckpt_path=ckpt_path)
    return trainer


def run(case: str, out: Path, strategy_name: str, activation_checkpointing: bool) -> None:
    build_task, build_data, attack, _, resumed = CASES[case]
    folder = out / case / strategy_name
    folder.mkdir(parents=True, exist_ok=True)

    def strategy():
        return "ddp" if strategy_name == "ddp" else FSDP2Strategy(activation_checkpointing=activation_checkpointing)

    probe = Probe()
    callbacks = [AdversarialTraining(attack="pgd", eps=0.1, steps=2), probe] if attack else [probe]
    L.seed_everything(0)
    task = build_task()
    trainer = fit(task, build_data(out), strategy(), epochs=EPOCHS // 2 if resumed else EPOCHS, callbacks=callbacks,
                  folder=folder)
    if resumed:  # a new task from the same seed; weights, optimizer and RNG states from the checkpoint
        L.seed_everything(0)
        task = build_task()
        trainer = fit(task, build_data(out), strategy(), epochs=EPOCHS, callbacks=callbacks, folder=folder,
                      ckpt_path=folder / "last.ckpt")
    torch.save({"weights": full_weights(task), "images": probe.images, "sharded": probe.sharded},
               out / case / f"{strategy_name}-rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    for name in sys.argv[2:]:
        for strategy_name, checkpointing in CASES[name][3]:
            run(name, Path(sys.argv[1]), strategy_name, checkpointing)
