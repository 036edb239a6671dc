"""RNN encoder-decoder with additive attention (Bahdanau, Cho & Bengio 2015, arXiv 1409.0473, "RNNsearch").

"Conditional generation with attention" in our notes. The encoder is a bidirectional GRU whose
annotations h_j = [forward_j; backward_j] the decoder attends to at every step (Sec. 3.1-3.2,
App. A.2):

    e_ij = v_a^T tanh(W_a s_{i-1} + U_a h_j)      (Eq. 6, the "alignment model"; U_a h_j is computed once)
    c_i  = sum_j softmax_j(e_ij) h_j              (Eq. 5)
    s_i  = GRU([E y_{i-1}; c_i], s_{i-1})         (Eq. 4)
    t_i  = maxout(U_o s_i + V_o E y_{i-1} + C_o c_i), logits = W_o t_i     (App. A.2.2)
    s_0  = tanh(W_s backward_1)                   (App. A.2.2)

Choices: the readout uses the new state s_i as Eq. 4 writes it (App. A.2.2 writes s_{i-1}); source
and target have their own embeddings, as in the paper; optional dropout on embeddings and before
the output layer (the paper uses none). Defaults are the paper's widths (embedding 620, hidden
1000, alignment 1000, maxout 500). Sources must be right-padded with ``pad_id``; padding is packed
away in the encoder and masked out of the attention, so it changes nothing.

The model follows the seq2seq interface of :mod:`research.models.transformer` (``forward``,
``encode``, ``decode``, ``select_memory``, ``reorder_cache``); its decoding cache is simply the
decoder state s (B, H), and ``max_positions`` is None (no length limit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from research.layers.recurrent import gru_over_lengths
from research.models.protocols import positionless_embedding_output
from research.models.registry import register_model


@dataclass
class GRUMemory:
    """What the decoder needs from the encoder.

    Attributes:
        annotations: h_j, (B, S, 2H).
        keys: U_a h_j, precomputed for the alignment model, (B, S, A).
        padding_mask: bool (B, S), True where the source is padding.
        initial_state: s_0, (B, H).

    """

    annotations: Tensor
    keys: Tensor
    padding_mask: Tensor
    initial_state: Tensor


class GRUSeq2Seq(nn.Module):
    """Bidirectional GRU encoder, GRU decoder with additive attention and a maxout readout.

    Args:
        vocab_size: size V of the (shared) vocabulary.
        pad_id: padding token id.
        embed_dim: word embedding width m.
        hidden_dim: GRU state width n (each encoder direction and the decoder).
        attn_dim: hidden width n' of the alignment model.
        readout_dim: maxout output width l (the layer computes 2l values and keeps the max of pairs).
        dropout: dropout on embeddings and on the readout (0 in the paper).

    """

    max_positions = None  # a recurrent model has no position table

    def __init__(
        self,
        *,
        vocab_size: int = 37000,
        pad_id: int = 0,
        embed_dim: int = 620,
        hidden_dim: int = 1000,
        attn_dim: int = 1000,
        readout_dim: int = 500,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id={pad_id} is not a token id of a vocabulary of size {vocab_size}")
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.src_embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.tgt_embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.encoder = nn.GRU(embed_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.init_state = nn.Linear(hidden_dim, hidden_dim)  # W_s
        self.attn_query = nn.Linear(hidden_dim, attn_dim, bias=False)  # W_a
        self.attn_key = nn.Linear(2 * hidden_dim, attn_dim)  # U_a
        self.attn_score = nn.Linear(attn_dim, 1, bias=False)  # v_a
        self.decoder = nn.GRUCell(embed_dim + 2 * hidden_dim, hidden_dim)
        self.readout = nn.Linear(hidden_dim + embed_dim + 2 * hidden_dim, 2 * readout_dim)  # U_o, V_o, C_o
        self.output = nn.Linear(readout_dim, vocab_size)  # W_o
        self.drop = nn.Dropout(dropout)

    def get_input_embeddings(self) -> nn.Embedding:
        """The source token table (:class:`~research.models.protocols.EmbeddingInputs`); the target has its own."""
        return self.src_embed

    def embedding_output(self, include_position: bool = False) -> nn.Module:
        """The source token table, whose (B, S, m) output the encoder reads (``EmbeddingInputs``).

        Raises:
            ValueError: ``include_position=True``: a recurrent model has no position embeddings.
        """
        return positionless_embedding_output(self, self.src_embed, include_position)

    def encode(self, src: Tensor) -> GRUMemory:
        """Encode a right-padded source batch.

        Args:
            src: token ids (B, S), right-padded with ``pad_id``.

        Returns:
            :class:`GRUMemory` with annotations (B, S, 2H) and s_0 (B, H).

        """
        padding_mask = src == self.pad_id
        lengths = (~padding_mask).sum(1).clamp(min=1)  # an all-padding row still takes one step
        annotations, last = gru_over_lengths(self.encoder, self.drop(self.src_embed(src)), lengths)
        # last[1] is the backward GRU's state after reading the sentence right to left, i.e. backward_1.
        initial_state = torch.tanh(self.init_state(last[1]))
        return GRUMemory(annotations, self.attn_key(annotations), padding_mask, initial_state)

    def decode(self, tgt_in: Tensor, memory: GRUMemory, cache: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run the decoder over T target tokens, from s_0 or from a cached state.

        Args:
            tgt_in: target ids (B, T) starting with BOS; with a ``cache``, the tokens that follow.
            memory: :meth:`encode`'s output for the same batch.
            cache: None to start from s_0, or the decoder state a previous call returned.

        Returns:
            Logits (B, T, V) for the next token after each position, and the decoder state (B, H)
            after the last one (the cache for the next call).

        """
        state = memory.initial_state if cache is None else cache
        embedded = self.drop(self.tgt_embed(tgt_in))  # (B, T, m)
        readouts = []
        for y_prev in embedded.unbind(1):  # a recurrence: step i needs s_{i-1}
            context = self._attend(state, memory)
            state = self.decoder(torch.cat([y_prev, context], dim=1), state)
            readouts.append(self.readout(torch.cat([state, y_prev, context], dim=1)))
        t = rearrange(torch.stack(readouts, dim=1), "b t (l two) -> b t l two", two=2).amax(-1)  # maxout
        return self.output(self.drop(t)), state

    def _attend(self, state: Tensor, memory: GRUMemory) -> Tensor:
        """Context vector c_i (B, 2H) from the previous state s_{i-1} (B, H) (Eq. 5-6)."""
        energy = self.attn_score(torch.tanh(memory.keys + self.attn_query(state)[:, None])).squeeze(2)  # (B, S)
        weights = F.softmax(energy.masked_fill(memory.padding_mask, float("-inf")), dim=1)
        return torch.einsum("bs,bsc->bc", weights, memory.annotations)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V) of source (B, S) and target ids (B, T), as :meth:`Transformer.forward`."""
        return self.decode(tgt_in, self.encode(src))[0]

    @staticmethod
    def select_memory(memory: GRUMemory, indices: Tensor) -> GRUMemory:
        """Memory whose batch row i is row ``indices[i]`` (repeating rows expands a batch into beams)."""
        return GRUMemory(
            memory.annotations.index_select(0, indices),
            memory.keys.index_select(0, indices),
            memory.padding_mask.index_select(0, indices),
            memory.initial_state.index_select(0, indices),
        )

    @staticmethod
    def reorder_cache(cache: Tensor, beam_indices: Tensor) -> Tensor:
        """Decoder state whose row i is row ``beam_indices[i]`` of ``cache``."""
        return cache.index_select(0, beam_indices)


@register_model
def gru_attention(**kwargs) -> GRUSeq2Seq:
    """RNNsearch (Bahdanau et al. 2015): embedding 620, GRU 1000 per direction, alignment 1000, maxout 500."""
    return GRUSeq2Seq(**{"embed_dim": 620, "hidden_dim": 1000, "attn_dim": 1000, "readout_dim": 500, **kwargs})


@register_model
def gru_attention_tiny(**kwargs) -> GRUSeq2Seq:
    """For tests: embedding 16, GRU 16, alignment 16, maxout 8."""
    return GRUSeq2Seq(**{"embed_dim": 16, "hidden_dim": 16, "attn_dim": 16, "readout_dim": 8, **kwargs})
