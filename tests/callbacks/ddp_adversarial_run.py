"""A few steps of adversarial training under DDP on CPU (2 processes, gloo), one fit per attack; run by test_ddp.py.

    python tests/callbacks/ddp_adversarial_run.py OUT_DIR pgd trades

Lightning's "ddp" strategy starts rank 1 by re-running this very command, so it must be a script
of its own (re-running pytest would run the whole test session again). The fits run one after
the other in the same two processes (the second reuses the process group: one start-up for all).
For each attack each rank writes ``OUT_DIR/<attack>/rank<r>.pt``: its final weights, the clean
and attacked images of every step, and the metrics it logged.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from attack_setup import AttackWindow, synthetic, tiny_task, trainer

from research.callbacks import AdversarialExamples, AdversarialTraining, RobustEvaluation


def main(out: Path, attack: str) -> None:
    out.mkdir(exist_ok=True)
    L.seed_everything(0)
    task = tiny_task()
    probe = AttackWindow(task)
    callbacks = [
        probe.opening,
        AdversarialTraining(attack=attack, eps=0.1, steps=2),
        probe.closing,
        RobustEvaluation(eps=0.1, num_samples=8, pgd_steps=2),  # sums counts over ranks: must not hang
        AdversarialExamples(eps=0.1, steps=2, num_examples=2, dirpath=out),  # rank 0 alone attacks
    ]
    t = trainer(
        strategy="ddp", devices=2, callbacks=callbacks, max_steps=3, limit_val_batches=1, val_check_interval=3
    )
    t.fit(task, datamodule=synthetic(num_samples=80, batch_size=4))
    torch.save(
        {
            "weights": {k: v.detach().clone() for k, v in task.state_dict().items()},
            "clean": [x for x, _ in probe.clean],
            "attacked": [x for x, _ in probe.attacked],
            "robust_acc_pgd": t.callback_metrics["val/robust_acc_pgd"].item(),
            "metrics": {k: v.item() for k, v in t.callback_metrics.items() if k.startswith("train/")},
            "replaced_after_fit": "training_step" in vars(task),
        },
        out / f"rank{t.global_rank}.pt",
    )


if __name__ == "__main__":
    for name in sys.argv[2:]:
        main(Path(sys.argv[1]) / name, name)
