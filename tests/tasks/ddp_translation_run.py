"""Test BLEU and loss of a translation task, on 1 process or under DDP on CPU (2 gloo processes).

    python tests/tasks/ddp_translation_run.py CORPUS OUT_DIR DEVICES

Run by test_translation_ddp.py; a script of its own because Lightning's "ddp" strategy starts rank 1
by re-running this very command. Each rank writes ``OUT_DIR/rank<r>-of-<DEVICES>.json``.
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch

from research.data import TranslationDataModule
from research.tasks import Translation


class EchoTranslation(Translation):
    """'Translates' by echoing the source (the corpus pairs each sentence with itself), blanking the middle
    token of every sentence whose ids sum to an odd number: a BLEU below 100 that changes with the
    sentences pooled, so a BLEU computed on one process's share would differ from the corpus BLEU."""

    def translate(self, src: torch.Tensor, *, decoding: str = "greedy") -> torch.Tensor:
        out = src.clone()
        pad = self.model.pad_id
        rows = (src.sum(1) % 2 == 1).nonzero().flatten()
        middle = (src[rows] != pad).sum(1) // 2
        out[rows, middle] = pad  # decoded with skip_special_tokens: the token is gone
        return out


def main(corpus: Path, out: Path, devices: int) -> dict:
    L.seed_everything(0)  # both ranks build the same weights: the loss is comparable too
    data = TranslationDataModule(corpus=str(corpus), vocab_size=500, cache_dir=str(out / "tokenizer"), batch_size=4,
                                 eval_batch_size=4, val_fraction=0.1, test_fraction=0.2)
    task = EchoTranslation({"name": "transformer_tiny"}, test_decoding="greedy", test_bleu_samples=None)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        use_distributed_sampler=False,  # the bucket sampler shards the batches itself
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out),
    )
    trainer.test(task, datamodule=data, verbose=False)
    result = {
        "bleu": trainer.callback_metrics["test/bleu"].item(),
        "loss": trainer.callback_metrics["test/loss"].item(),
        "decoded": sorted(index for index, *_ in task._samples["test"]),
        "test_size": len(data.split("test")),
    }
    (out / f"rank{trainer.global_rank}-of-{devices}.json").write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
