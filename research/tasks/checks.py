"""What every task checks before a step runs: the model against the data, a checkpoint against the model.

A mistake a user can make (a checkpoint of another model, a tokenizer of another size) stops here
with a message that says what differs and what to do, instead of a size mismatch from deep in torch.
"""

from __future__ import annotations

import lightning as L

from research.models.weights import check_fits


def check_checkpoint(
    task: L.LightningModule, checkpoint: dict, *, holds: str | None = None, model: str | None = None
) -> None:
    """Stop with a readable message when ``checkpoint``'s weights do not fit ``task`` (before torch's strict load).

    Args:
        task: the task about to load the checkpoint.
        checkpoint: the checkpoint dict Lightning passes to ``on_load_checkpoint``.
        holds: what the checkpoint holds, if it records that (e.g. a model description).
        model: what this run trains; default: its model spec.

    """
    try:
        check_fits(task, checkpoint["state_dict"], "the checkpoint's weights")
    except ValueError as err:
        held = f"holds {holds}, not" if holds else "does not hold"
        model = model or f"model {task.hparams.get('model', type(task).__name__)}"
        raise ValueError(
            f"this checkpoint {held} this run's {model} ({err}). "
            "Resume with the config the checkpoint was trained with, or pick another checkpoint."
        ) from err


def check_vocabulary(model_vocab: int, data_vocab: int | None, *, trained: bool = False) -> None:
    """Stop when a model (or, ``trained``, its checkpoint) embeds another number of tokens than the tokenizer."""
    if data_vocab is None or data_vocab == model_vocab:
        return
    if trained:
        raise ValueError(
            f"the checkpoint was trained with a vocabulary of {model_vocab} tokens but this run's model and "
            f"tokenizer have {data_vocab}; use the tokenizer it was trained with (the same corpus, vocab_size "
            "and lowercase, or its vocab file)"
        )
    raise ValueError(
        f"the model embeds {model_vocab} tokens but the datamodule's tokenizer has {data_vocab}. A checkpoint "
        "only fits the tokenizer it was trained with (the same corpus, vocab_size and lowercase, or its vocab "
        "file); a new model takes the tokenizer's size when its spec has no vocab_size"
    )


def check_max_length(max_length: int | None, positions: int | None) -> None:
    """Stop when the data makes longer sequences than the model has positions for."""
    if max_length is not None and positions is not None and max_length > positions:
        raise ValueError(
            f"the datamodule makes sequences of up to {max_length} tokens but the model has {positions} "
            "positions; lower data max_length or raise the model's max_positions"
        )
