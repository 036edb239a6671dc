"""BERT for sequence classification (Devlin et al. 2019, arXiv 1810.04805, Sec. 4.1, Fig. 4b) from our MLM checkpoint.

Hugging Face's ``BertForSequenceClassification``: the encoder (:class:`~research.models.bert.Bert`),
its pooler (dense + tanh over ``[CLS]``, :meth:`~research.models.bert.Bert.pool`), dropout, then one
linear layer to the class logits; the same module names (``bert``, ``dropout``, ``classifier``), so a
Hugging Face checkpoint of that class loads through :func:`~research.models.import_weights` and gives
the same logits (tests/models/test_bert_classifier.py).

Fine-tuning starts from a pre-trained encoder (``pretrained``): a checkpoint of our masked language
modelling (``python -m research fit --config configs/bert/bible_bert_tiny.yaml`` writes
``checkpoints/bert/bible_bert_tiny/last.ckpt``), of this classifier, or a Hugging Face BERT. The
encoder's weights load strictly (every tensor present, every shape equal, position tables cut to the
model's ``max_positions`` as :func:`~research.models.bert._fit_positions` does); the MLM head is
dropped and the classifier is new, as in Hugging Face's ``from_pretrained``. The pooler loads where
the checkpoint has one (pre-training with next-sentence prediction trains it); an MLM-only
checkpoint has none, so it stays freshly initialised, as Hugging Face reports for it ("newly
initialized: bert.pooler.dense.weight ...").

Inputs are ``(tokens (B, L), lengths (B,))``, the contract of
:class:`~research.tasks.SequenceClassification`; the attention's padding mask is ``tokens == pad_id``.
The model implements :class:`~research.models.protocols.EmbeddingInputs` through its encoder, so
embedding-space attacks and adversarial training (PGD, FreeLB) reach its token embeddings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from torch import Tensor, nn

from research.checkpoint_file import load_checkpoint
from research.models.bert import SIZES, Bert, _fit_positions, _from_huggingface, _is_hf_bert, init_bert_weights
from research.models.registry import register_model
from research.models.weights import StateDict, import_weights, register_layout, register_resize

log = logging.getLogger(__name__)


class BertForSequenceClassification(nn.Module):
    """BERT encoder, pooler on ``[CLS]``, dropout, linear classifier (Hugging Face's head).

    Args:
        vocab_size: token vocabulary size V (the tokenizer's; the checkpoint's must equal it).
        num_classes: number of classes.
        pad_id: the padding id; no token attends to padding positions.
        classifier_dropout: dropout before the classifier; None takes ``drop_rate`` (Hugging Face's
            ``classifier_dropout`` falls back to ``hidden_dropout_prob`` the same way).
        pretrained: a checkpoint whose encoder initialises this model (see the module docstring);
            None starts from BERT's random init.
        **kwargs: :class:`~research.models.bert.Bert` arguments (``embed_dim``, ``depth``,
            ``num_heads``, ``drop_rate``, ...) except ``pooler`` (always on).

    Raises:
        ValueError: ``num_classes`` < 2, ``pad_id`` outside the vocabulary, or a ``pretrained``
            checkpoint that does not fit (another vocabulary or architecture; the message says which).
        FileNotFoundError: no file at ``pretrained`` (the message names the command that writes it).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        num_classes: int,
        pad_id: int = 0,
        classifier_dropout: float | None = None,
        pretrained: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__()
        if "pooler" in kwargs:
            raise ValueError("BertForSequenceClassification always has the pooler its head reads; do not pass pooler")
        if num_classes < 2:
            raise ValueError(f"need num_classes >= 2, got {num_classes}")
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id={pad_id} is not a token id of a {vocab_size}-token vocabulary")
        self.bert = Bert(vocab_size=vocab_size, pooler=True, **kwargs)
        self.vocab_size, self.num_classes, self.pad_id = vocab_size, num_classes, pad_id
        self.max_positions, self.num_features = self.bert.max_positions, self.bert.embed_dim
        drop = kwargs.get("drop_rate", 0.1) if classifier_dropout is None else classifier_dropout
        self.dropout = nn.Dropout(drop)
        self.classifier = nn.Linear(self.num_features, num_classes)
        init_bert_weights(self.classifier)
        if pretrained is not None:
            self.load_encoder(pretrained)

    def load_encoder(self, path: str) -> None:
        """Load the encoder (and its pooler, if saved) of the checkpoint at ``path``; the classifier stays new.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the checkpoint holds no BERT encoder, or one of another vocabulary or shape.
        """
        content = load_checkpoint(path, what="pretrained checkpoint")
        encoder = encoder_weights(content)
        if not encoder:
            raise ValueError(f"pretrained checkpoint {path} holds no BERT encoder (no 'bert.' weights); give a "
                             "checkpoint of masked language modelling (checkpoints/bert/bible_bert_tiny/last.ckpt)")
        table = next((v for k, v in encoder.items() if k.endswith("word_embeddings.weight")), None)
        if table is not None and table.shape[0] != self.vocab_size:
            raise ValueError(
                f"pretrained checkpoint {path} embeds {table.shape[0]} tokens but this model's vocabulary has "
                f"{self.vocab_size}: fine-tune with the tokenizer of its pre-training (data tokenizer_of: the run "
                "that wrote the checkpoint)"
            )
        fresh = not any(key.startswith("pooler.") for key in encoder)
        if fresh:  # an MLM-only encoder has no pooler: keep the new one (strict loading needs every key)
            encoder.update({key: value for key, value in self.bert.state_dict().items() if key.startswith("pooler.")})
        try:
            import_weights(self.bert, encoder)
        except ValueError as err:
            raise ValueError(f"cannot initialise {type(self).__name__} from {path}: {err}") from err
        log.info("initialised the encoder from %s%s", path, "; the pooler is new" if fresh else "")

    def forward_features(self, tokens: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The pooled ``[CLS]`` representation (B, H).

        Args:
            tokens: (B, L) token ids, ``[CLS]`` first, padded with ``pad_id`` after each sequence.
            lengths: (B,) tokens per sequence; unused (the padding mask comes from ``pad_id``, which
                the tokenizer never produces inside a text), taken for the sequence classifiers' contract.
        """
        hidden = self.bert(tokens, padding_mask=tokens == self.pad_id)
        return self.bert.pool(hidden)

    def forward(self, tokens: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Class logits (B, num_classes) of ``tokens`` (B, L); see :meth:`forward_features`."""
        return self.classifier(self.dropout(self.forward_features(tokens, lengths)))

    def get_input_embeddings(self) -> nn.Embedding:
        """The encoder's token table (:class:`~research.models.protocols.EmbeddingInputs`)."""
        return self.bert.get_input_embeddings()

    def embedding_output(self, include_position: bool = False) -> nn.Module:
        """The encoder's embedding point (:meth:`~research.models.bert.Bert.embedding_output`)."""
        return self.bert.embedding_output(include_position)


def encoder_weights(checkpoint: Mapping) -> StateDict:
    """The ``bert.`` weights of a checkpoint (ours, Lightning's or Hugging Face's), without that prefix.

    A Lightning checkpoint of a task prefixes every key with ``model.``; the MLM head (``head.``,
    Hugging Face's ``cls.``), the next-sentence head and a classifier are left out.
    """
    state = checkpoint.get("state_dict", checkpoint)
    return {key.split("bert.", 1)[1]: value for key, value in state.items()
            if key.startswith(("bert.", "model.bert."))}


def _bert_classifier(kwargs: dict, **defaults) -> BertForSequenceClassification:
    return BertForSequenceClassification(**dict(defaults, **kwargs))


# The sizes of research.models.bert's registered BERTs (bert.SIZES).
@register_model
def bert_tiny_classifier(**kwargs) -> BertForSequenceClassification:
    """BERT-Tiny (L=2, H=128, A=2) with a sequence-classification head; ``vocab_size`` and ``num_classes`` needed."""
    return _bert_classifier(kwargs, **SIZES["tiny"])


@register_model
def bert_mini_classifier(**kwargs) -> BertForSequenceClassification:
    """BERT-Mini (L=4, H=256, A=4) with a sequence-classification head."""
    return _bert_classifier(kwargs, **SIZES["mini"])


@register_model
def bert_base_classifier(**kwargs) -> BertForSequenceClassification:
    """BERT-Base (L=12, H=768, A=12) with a sequence-classification head."""
    return _bert_classifier(kwargs, **SIZES["base"])


register_layout(BertForSequenceClassification, "huggingface", detect=lambda sd: _is_hf_bert(sd, "bert."),
                convert=_from_huggingface)
register_resize(BertForSequenceClassification, _fit_positions)
