"""What a task needs from a model, as ``typing.Protocol``s: any ``nn.Module`` with these members fits.

The registered models implement them (BERT, the seq2seq models, the masked autoencoder, the
classifiers); a model of one's own only needs the members listed. :func:`require` checks a model
against a protocol once, when a task is built, and names what is missing.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class FeatureClassifier(Protocol):
    """A classifier that exposes its pooled features (timm's convention): linear probing, FID features.

    ``forward_head(forward_features(x), pre_logits=True)`` is the (B, num_features) pooled
    feature vector that the classifier's head maps to logits.
    """

    num_features: int

    def forward_features(self, x: Tensor) -> Tensor: ...

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor: ...


@runtime_checkable
class MaskedAutoencoder(Protocol):
    """A masked autoencoder (He et al. 2022): ``model(images, mask_ratio, noise)`` -> ``(pred, mask)``.

    ``patchify`` maps (B, C, H, W) images to (B, L, P*P*C) patches, ``unpatchify`` back;
    ``num_patches`` is L and ``patch_size`` is P.
    """

    num_patches: int
    patch_size: int

    def patchify(self, images: Tensor) -> Tensor: ...

    def unpatchify(self, patches: Tensor) -> Tensor: ...


@runtime_checkable
class MaskedLanguageModel(Protocol):
    """A BERT-style encoder: ``mlm_logits(forward_features(ids, token_types, padding_mask))`` -> (B, N, V)."""

    vocab_size: int
    max_positions: int

    def forward_features(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                         padding_mask: Tensor | None = None) -> Tensor: ...

    def mlm_logits(self, hidden: Tensor) -> Tensor: ...


@runtime_checkable
class Seq2SeqModel(Protocol):
    """An encoder-decoder: ``model(src, tgt_in)`` -> (B, T, V) teacher-forced logits, and the decoding contract.

    The contract of :mod:`research.models.decoding`: ``encode(src) -> memory``,
    ``decode(tgt_in, memory, cache) -> (logits, cache)``, and the reordering of memory and cache
    to the surviving beams.
    """

    vocab_size: int
    pad_id: int
    max_positions: int

    def encode(self, src: Tensor) -> Any: ...

    def decode(self, tgt_in: Tensor, memory: Any, cache: Any = None) -> tuple[Tensor, Any]: ...

    def select_memory(self, memory: Any, indices: Tensor) -> Any: ...

    def reorder_cache(self, cache: Any, beam_indices: Tensor) -> Any: ...


@runtime_checkable
class SequenceClassifier(Protocol):
    """A classifier of token sequences: ``model(tokens (B, L), lengths (B,))`` -> (B, num_classes) logits."""

    vocab_size: int
    num_classes: int


@runtime_checkable
class EmbeddingInputs(Protocol):
    """A model of token ids whose input embeddings an attack can reach (embedding-space adversarial training).

    - ``get_input_embeddings()``: the token table, an ``nn.Embedding`` (Hugging Face's name).
    - ``embedding_output(include_position=False)``: the module whose forward output is the (B, T, D)
      embeddings of the model's (encoder's) input tokens, called exactly once per forward of that
      input: the token embeddings after any scaling (``include_position=False``), or token +
      position embeddings before LayerNorm/dropout (``include_position=True``). A model without
      positions raises ``ValueError`` for ``include_position=True``. Where the model has no such
      module, it holds a parameter-free ``nn.Identity()`` hook point (timm's habit), so state-dict
      keys are unchanged.

    :func:`research.attacks.embedding_perturbation` adds a perturbation to that output.
    """

    def get_input_embeddings(self) -> nn.Embedding: ...

    def embedding_output(self, include_position: bool = False) -> nn.Module: ...


def positionless_embedding_output(model: object, table: nn.Module, include_position: bool) -> nn.Module:
    """``embedding_output`` of a model without position embeddings (a recurrent one): its token table.

    Raises:
        ValueError: ``include_position=True``: there are no positions to perturb.
    """
    if include_position:
        raise ValueError(f"{type(model).__name__} has no position embeddings (a GRU reads positions in order); "
                         "use embeddings='token'")
    return table


def missing_members(model: object, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``model`` lacks, attributes first, in the order the protocol lists them."""
    methods = [name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")]
    names = [*protocol.__annotations__, *methods]
    return [name for name in names if not hasattr(model, name)]


def require(model: object, protocol: type, needs: str) -> None:
    """Stop with one line naming what ``model`` lacks when it does not implement ``protocol``.

    Args:
        model: the model a task was given.
        protocol: one of this module's protocols.
        needs: the start of the message, e.g. "MaskedLanguageModelling needs a BERT-style model (e.g. bert_tiny)".

    Raises:
        ValueError: ``model`` lacks a member of ``protocol``.
    """
    missing = missing_members(model, protocol)
    if missing:
        raise ValueError(f"{needs}; {type(model).__name__} lacks {missing}")
