"""Random-number-generator state in checkpoints, so that a resumed run continues exactly."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


class RNGState(Callback):
    """Save the Python, NumPy and torch RNG states with each checkpoint and restore them on resume.

    Lightning checkpoints hold weights, optimizer and loop progress but not the generators that
    shuffle the data, augment images and drop activations; without them a run resumed from an
    epoch-end checkpoint sees other batches than the uninterrupted run would have. The states are
    stored as tensors and plain ints so the checkpoint still loads with ``weights_only=True``.
    They are put back as soon as the checkpoint is read, before the Trainer builds the first
    training iterator (which draws the shuffling seed).
    Under DDP each rank has its own generators; the saved state is rank 0's.
    """

    def state_dict(self) -> dict[str, Any]:
        _, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "python": random.getstate(),
            "numpy": {
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
        n = state["numpy"]
        np.random.set_state(
            ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
        )
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
