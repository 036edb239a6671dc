"""A GRU sequence classifier: embed tokens, run a (bidirectional) GRU, classify the final hidden state.

The GRU is Cho et al. 2014, "Learning Phrase Representations using RNN Encoder-Decoder for
Statistical Machine Translation" (arXiv 1406.1078), Sec. 2.3, as ``torch.nn.GRU`` implements it.
Our notes use it over characters to tell the language of a single word
(:class:`~research.data.words.LanguageWordsDataModule`).

Padded batches go through the GRU as packed sequences would
(:func:`~research.layers.recurrent.gru_over_lengths`), so each sequence's final hidden state is
taken at its own last token, never after padding: a sequence gets the same logits whatever the
length of the batch it comes in (tests/models/test_gru_classifier.py checks it). With
``bidirectional`` the forward direction ends at the last token and the backward one at the first;
their final states are concatenated.
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from research.layers.recurrent import gru_over_lengths
from research.models.protocols import positionless_embedding_output
from research.models.registry import register_model


class GRUClassifier(nn.Module):
    """Token embedding -> GRU over packed sequences -> dropout -> linear classifier.

    Args:
        vocab_size: number of token ids (the embedding's rows), padding and unknown included.
        num_classes: number of classes.
        embed_dim: width of the token embedding.
        hidden_size: width of the GRU's hidden state per direction.
        num_layers: stacked GRU layers.
        bidirectional: also run a GRU from the last token to the first.
        dropout: dropout between GRU layers and before the classifier.
        pad_id: the padding id; its embedding row stays zero and receives no gradient.

    """

    def __init__(
        self,
        *,
        vocab_size: int,
        num_classes: int,
        embed_dim: int = 32,
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.0,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if min(vocab_size, embed_dim, hidden_size, num_layers) < 1 or num_classes < 2:
            raise ValueError(
                f"need vocab_size, embed_dim, hidden_size, num_layers >= 1 and num_classes >= 2, got "
                f"{vocab_size}, {embed_dim}, {hidden_size}, {num_layers} and {num_classes}"
            )
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id={pad_id} is not a token id of a {vocab_size}-token vocabulary")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.vocab_size, self.num_classes, self.pad_id = vocab_size, num_classes, pad_id
        self.num_directions = 2 if bidirectional else 1
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        # nn.GRU's own dropout acts between layers only (and warns when there is one layer)
        self.gru = nn.GRU(
            embed_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.num_features = self.num_directions * hidden_size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_features, num_classes)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token table (:class:`~research.models.protocols.EmbeddingInputs`)."""
        return self.embedding

    def embedding_output(self, include_position: bool = False) -> nn.Module:
        """The token table, whose (B, L, E) output the GRU reads (:class:`~research.models.protocols.EmbeddingInputs`).

        Raises:
            ValueError: ``include_position=True``: a recurrent model has no position embeddings.
        """
        return positionless_embedding_output(self, self.embedding, include_position)

    def forward_features(self, tokens: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The last GRU layer's final hidden state, directions concatenated.

        Args:
            tokens: (B, L) token ids, each row padded with ``pad_id`` after its tokens.
            lengths: (B,) number of tokens of each row, in [1, L]; None counts the non-padding ids.

        Returns:
            (B, num_directions * hidden_size).

        """
        if tokens.ndim != 2:
            raise ValueError(f"expected token ids of shape (B, L), got {tuple(tokens.shape)}")
        if lengths is None:
            lengths = (tokens != self.pad_id).sum(1)
        if lengths.shape != tokens.shape[:1]:
            raise ValueError(f"lengths has shape {tuple(lengths.shape)}, expected ({tokens.shape[0]},): one a row")
        if len(lengths) and (lengths.min() < 1 or lengths.max() > tokens.shape[1]):
            raise ValueError(
                f"every sequence needs 1 to {tokens.shape[1]} tokens (the padded width), got lengths from "
                f"{int(lengths.min())} to {int(lengths.max())}; drop empty sequences before batching"
            )
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}), got {int(tokens.min())} to {int(tokens.max())}; "
                "map characters outside the vocabulary to its unknown id, or build the model with the data's vocab_size"
            )
        embedded = self.embedding(tokens)  # (B, L, E)
        _, last = gru_over_lengths(self.gru, embedded, lengths, outputs=False)  # (num_layers * D, B, H)
        last = rearrange(last, "(l d) b h -> l b (d h)", d=self.num_directions)
        return last[-1]

    def forward(self, tokens: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Class logits for a batch of padded sequences.

        Args:
            tokens: (B, L) token ids, padded with ``pad_id`` after each row's tokens.
            lengths: (B,) number of tokens of each row; None counts the non-padding ids.

        Returns:
            (B, num_classes) logits.

        """
        return self.head(self.dropout(self.forward_features(tokens, lengths)))


def _sizes(name: str, vocab_size: int | None, num_classes: int | None) -> dict[str, int]:
    if vocab_size is None or num_classes is None:
        raise ValueError(
            f"{name} needs vocab_size and num_classes, got {vocab_size} and {num_classes}; under "
            "research.tasks.SequenceClassification a spec without them takes the datamodule's"
        )
    return {"vocab_size": vocab_size, "num_classes": num_classes}


@register_model
def gru_classifier(*, vocab_size: int | None = None, num_classes: int | None = None, **kwargs) -> GRUClassifier:
    """A GRU classifier of the given widths (embedding 32, hidden 64, 1 bidirectional layer by default)."""
    return GRUClassifier(**_sizes("gru_classifier", vocab_size, num_classes), **kwargs)


@register_model
def gru_classifier_tiny(*, vocab_size: int | None = None, num_classes: int | None = None, **kwargs) -> GRUClassifier:
    """A small GRU classifier for tests: 8-wide embedding, 16-wide hidden state."""
    return GRUClassifier(
        **_sizes("gru_classifier_tiny", vocab_size, num_classes), **({"embed_dim": 8, "hidden_size": 16} | kwargs)
    )
