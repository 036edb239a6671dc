"""The hooks through which embedding-space adversarial training reaches a text task (issue 17).

:class:`~research.callbacks.AdversarialTraining` (``inputs="tokens"``) and the robust evaluation
of text tasks need three things from a task, which :class:`TokenInputs` declares and the text
tasks (:class:`~research.tasks.MaskedLanguageModelling`, :class:`~research.tasks.SequenceClassification`,
:class:`~research.tasks.Translation`) implement:

- ``embedding_point(include_position=False)``: the module whose output the attack perturbs, the
  model's ``embedding_output`` (:class:`~research.models.protocols.EmbeddingInputs`);
- ``perturbable_tokens(batch)``: bool (B, T) over the tokens that module embeds, True except
  padding and special tokens;
- ``adversarial_loss(batch)``: the task's training loss of the batch as a float32 scalar, with no
  logging and no metric update (what the attack maximises).
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from research.models.protocols import EmbeddingInputs, missing_members

HOOKS = ("embedding_point", "perturbable_tokens", "adversarial_loss")


def has_token_inputs(task: object) -> bool:
    """Whether ``task`` offers the three hooks of embedding-space attacks."""
    return all(callable(getattr(task, name, None)) for name in HOOKS)


class TokenInputs:
    """Mixin of a task whose inputs are token ids: the embedding point and the special-token ids it never perturbs."""

    model: nn.Module

    def embedding_point(self, include_position: bool = False) -> nn.Module:
        """The model's ``embedding_output(include_position)``: the module whose (B, T, D) output is perturbed.

        Raises:
            ValueError: the model lacks the :class:`~research.models.protocols.EmbeddingInputs`
                interface, or has no positions and ``include_position`` is True.
        """
        missing = missing_members(self.model, EmbeddingInputs)
        if missing:
            raise ValueError(
                f"{type(self).__name__}: embedding-space attacks need a model with the EmbeddingInputs interface "
                f"(research.models.protocols); {type(self.model).__name__} lacks {missing}"
            )
        return self.model.embedding_output(include_position)

    def special_token_ids(self) -> list[int]:
        """Ids never perturbed besides padding: [PAD], [CLS], [SEP] and [MASK] of the datamodule's tokenizer, if any.

        [UNK] stands for a word, so it is perturbed like one. A datamodule without ``special_tokens``
        (characters of :class:`~research.data.LanguageWordsDataModule`) has none but padding, the model's
        ``pad_id``; without any datamodule (bare dataloaders) only that is known, and a warning says so.
        """
        special = getattr(self.datamodule, "special_tokens", None)  # Task.datamodule
        if self.datamodule is None:  # bare dataloaders: their tokenizer is unknown (a datamodule without any has none)
            rank_zero_warn(f"{type(self).__name__} runs without a datamodule, so its special tokens are unknown: an "
                           "embedding-space attack perturbs every token but padding ([CLS], [SEP], [MASK] included)")
        ids = [special.pad, special.cls, special.sep, special.mask] if special is not None else []
        pad = getattr(self.model, "pad_id", None)
        return sorted({*ids, *([pad] if pad is not None else [])})

    def ordinary_tokens(self, ids: Tensor) -> Tensor:
        """Bool of ``ids``' shape, True where the id is none of :meth:`special_token_ids`."""
        special = torch.as_tensor(self.special_token_ids(), dtype=ids.dtype, device=ids.device)
        return ~torch.isin(ids, special)
