"""Transformer encoder-decoder (Vaswani et al. 2017, "Attention Is All You Need", arXiv 1706.03762).

References we follow: the paper (Sec. 3, Table 3) and, where it is silent, fairseq's
``transformer_wmt_en_de`` / tensor2tensor: embeddings initialised N(0, d^-1/2) so that the
sqrt(d)-scaled inputs have unit variance, Xavier-uniform linear layers, no bias on the output
projection. The encoder is built from the shared :class:`~research.layers.Block`, the decoder from
:class:`~research.layers.DecoderBlock` (post-norm as in the paper, or pre-norm with a final
LayerNorm after each stack).

Deviations and choices:

- One shared vocabulary: source, target and output embeddings are one matrix (Sec. 3.4), so the
  model takes one ``vocab_size``.
- Dropout (``dropout``) is where the paper puts it (Sec. 5.4: each sub-layer output, the embedding
  sums) and, through the shared Mlp, also after the FFN's ReLU (tensor2tensor's ``relu_dropout``).
- The decoder uses only the causal mask, no target padding mask: targets are right-padded, so
  causality already keeps real positions from seeing the padding after them, and cached and
  uncached decoding see the same keys.
- A sequence longer than ``max_positions`` (the size of the sinusoid table) raises ``ValueError``.

Seq2seq interface (shared with :mod:`research.models.gru_seq2seq` and used by
:mod:`research.models.decoding`): ``forward(src, tgt_in) -> logits``, ``encode(src) -> memory``,
``decode(tgt_in, memory, cache=None) -> (logits, cache)``, ``reorder_cache`` and ``select_memory``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from research.layers import Block, DecoderBlock, KVCache, init_linears_, sincos_pos_embed_1d
from research.models.registry import register_model


@dataclass
class EncoderMemory:
    """What the decoder needs from the encoder.

    Attributes:
        states: encoder output, (B, S, C).
        padding_mask: bool (B, S), True where the source is padding.

    """

    states: Tensor
    padding_mask: Tensor


@dataclass
class DecoderCache:
    """Keys/values of the tokens decoded so far, one :class:`KVCache` pair per decoder layer.

    Attributes:
        self_attn: per layer, keys/values of the target tokens so far, (B, h, length, d).
        cross_attn: per layer, keys/values of the encoder output, computed once, (B, h, S, d).
        length: number of target positions already decoded (the position of the next token).

    """

    self_attn: list[KVCache] = field(default_factory=list)
    cross_attn: list[KVCache] = field(default_factory=list)
    length: int = 0


class Transformer(nn.Module):
    """Encoder-decoder Transformer with sinusoidal positions and one shared, sqrt(d)-scaled embedding.

    Args:
        vocab_size: size V of the shared source/target vocabulary.
        pad_id: padding token id; its positions are masked out of every attention over the source.
        dim: model width d_model.
        encoder_depth: encoder layers N.
        decoder_depth: decoder layers N.
        num_heads: attention heads h.
        ffn_dim: hidden width d_ff of the position-wise feed-forward network.
        dropout: P_drop (Sec. 5.4).
        attn_dropout: dropout on the attention weights (0 in the paper).
        max_positions: longest source or target sequence (size of the sinusoid table).
        norm_first: pre-norm blocks plus a final LayerNorm per stack instead of the paper's post-norm.

    """

    def __init__(
        self,
        *,
        vocab_size: int = 37000,
        pad_id: int = 0,
        dim: int = 512,
        encoder_depth: int = 6,
        decoder_depth: int = 6,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        max_positions: int = 1024,
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id={pad_id} is not a token id of a vocabulary of size {vocab_size}")
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.dim = dim
        self.max_positions = max_positions
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.register_buffer("pos_embed", sincos_pos_embed_1d(max_positions, dim), persistent=False)
        # Parameter-free hook points of the encoder's input (EmbeddingInputs): the sqrt(d)-scaled source
        # token embeddings, and those plus the positions before dropout. The decoder has none.
        self.encoder_token_embed = nn.Identity()
        self.encoder_input_embed = nn.Identity()
        self.drop = nn.Dropout(dropout)
        block_args = dict(
            mlp_ratio=ffn_dim / dim,
            proj_drop=dropout,
            attn_drop=attn_dropout,
            act_layer=nn.ReLU,  # Sec. 3.3: FFN(x) = max(0, xW1 + b1)W2 + b2
            norm_first=norm_first,
        )
        self.encoder = nn.ModuleList(Block(dim, num_heads, **block_args) for _ in range(encoder_depth))
        self.decoder = nn.ModuleList(DecoderBlock(dim, num_heads, **block_args) for _ in range(decoder_depth))
        # Post-norm blocks end in a LayerNorm already; pre-norm stacks need one after the last block.
        self.encoder_norm = nn.LayerNorm(dim) if norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(dim) if norm_first else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform linear layers (q, k, v with gain 1/sqrt(2)), zero biases, N(0, d^-1/2) embeddings."""
        init_linears_(self, nn.init.xavier_uniform_)
        # q, k and v are separate (C, C) maps in the paper; fairseq draws each Xavier-uniform with gain
        # 1/sqrt(2), the bound sqrt(6 / 4C) of one fused (3C, C) matrix. Here: every (C, C) slice of
        # attn.qkv (3C, C), cross_attn.q (C, C) and cross_attn.kv (2C, C).
        for name, param in self.named_parameters():
            if name.endswith(("attn.qkv.weight", "cross_attn.q.weight", "cross_attn.kv.weight")):
                for part in param.data.split(self.dim):
                    nn.init.xavier_uniform_(part, gain=2**-0.5)
        # With inputs scaled by sqrt(d) (Sec. 3.4) this gives unit-variance token embeddings.
        nn.init.normal_(self.embed.weight, std=self.dim**-0.5)
        with torch.no_grad():
            self.embed.weight[self.pad_id].zero_()

    def _check_length(self, length: int, what: str) -> None:
        if length > self.max_positions:
            raise ValueError(
                f"{what} has {length} positions but this model was built with max_positions={self.max_positions}; "
                f"shorten or split the sequence, or build the model with max_positions>={length}"
            )

    def _embed(self, tokens: Tensor, offset: int = 0, points: tuple[nn.Module, nn.Module] | None = None) -> Tensor:
        """Scaled token embedding plus sinusoidal positions offset..offset+N-1, (B, N) -> (B, N, C).

        ``points``: the (token, token + position) hook points the sums pass through (the encoder's).
        """
        x = self.embed(tokens) * math.sqrt(self.dim)
        if points is None:
            return self.drop(x + self.pos_embed[offset : offset + tokens.shape[1]])
        x = points[0](x)
        return self.drop(points[1](x + self.pos_embed[offset : offset + tokens.shape[1]]))

    def get_input_embeddings(self) -> nn.Embedding:
        """The shared token table (V, C) (:class:`~research.models.protocols.EmbeddingInputs`)."""
        return self.embed

    def embedding_output(self, include_position: bool = False) -> nn.Module:
        """The encoder's embedding point (:class:`~research.models.protocols.EmbeddingInputs`).

        Its output is the (B, S, C) source token embeddings after the sqrt(d) scaling
        (``include_position=False``), or those plus the sinusoidal positions before dropout
        (``True``). The decoder's inputs are not perturbed (the table is shared, the point is not).
        """
        return self.encoder_input_embed if include_position else self.encoder_token_embed

    def encode(self, src: Tensor) -> EncoderMemory:
        """Encode a padded source batch.

        Args:
            src: token ids (B, S), padded with ``pad_id``.

        Returns:
            :class:`EncoderMemory` with states (B, S, C) and the padding mask (B, S).

        """
        self._check_length(src.shape[1], "the source")
        padding_mask = src == self.pad_id
        x = self._embed(src, points=(self.encoder_token_embed, self.encoder_input_embed))
        for block in self.encoder:
            x = block(x, key_padding_mask=padding_mask)
        return EncoderMemory(self.encoder_norm(x), padding_mask)

    def decode(
        self, tgt_in: Tensor, memory: EncoderMemory, cache: DecoderCache | None = None
    ) -> tuple[Tensor, DecoderCache]:
        """Decode causally, from scratch or incrementally.

        Args:
            tgt_in: target ids (B, T) starting with BOS; with a ``cache``, only the T new tokens that
                follow the cached ones (usually T = 1).
            memory: :meth:`encode`'s output for the same batch.
            cache: None to decode all T positions from scratch, or the cache a previous call returned.

        Returns:
            Logits (B, T, V) for the next token after each position, and the cache holding all
            positions so far (the given cache object, updated in place, or a new one).

        """
        if cache is None:
            cache = DecoderCache([KVCache() for _ in self.decoder], [KVCache() for _ in self.decoder])
        self._check_length(cache.length + tgt_in.shape[1], "the target")
        x = self._embed(tgt_in, offset=cache.length)
        for block, self_kv, cross_kv in zip(self.decoder, cache.self_attn, cache.cross_attn):
            x = block(
                x,
                memory.states,
                context_padding_mask=memory.padding_mask,
                cache=self_kv,
                context_cache=cross_kv,
            )
        cache.length += tgt_in.shape[1]
        return F.linear(self.decoder_norm(x), self.embed.weight), cache  # output projection = embedding (Sec. 3.4)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits.

        Args:
            src: source ids (B, S), padded with ``pad_id``.
            tgt_in: target ids (B, T), BOS first, right-padded with ``pad_id``.

        Returns:
            (B, T, V): logits of the token after each target position.

        """
        return self.decode(tgt_in, self.encode(src))[0]

    @staticmethod
    def select_memory(memory: EncoderMemory, indices: Tensor) -> EncoderMemory:
        """Memory whose batch row i is row ``indices[i]`` (repeating rows expands a batch into beams)."""
        return EncoderMemory(memory.states.index_select(0, indices), memory.padding_mask.index_select(0, indices))

    @staticmethod
    def reorder_cache(cache: DecoderCache, beam_indices: Tensor) -> DecoderCache:
        """Cache whose batch row i is row ``beam_indices[i]`` of ``cache`` (the beam each hypothesis extends)."""
        return DecoderCache(
            [kv.index_select(beam_indices) for kv in cache.self_attn],
            [kv.index_select(beam_indices) for kv in cache.cross_attn],
            cache.length,
        )


def _transformer(kwargs: dict, **defaults) -> Transformer:
    return Transformer(**{**defaults, **kwargs})


@register_model
def transformer_base(**kwargs) -> Transformer:
    """Transformer base (Table 3): d 512, 6+6 layers, 8 heads, FFN 2048, dropout 0.1."""
    return _transformer(kwargs, dim=512, encoder_depth=6, decoder_depth=6, num_heads=8, ffn_dim=2048, dropout=0.1)


@register_model
def transformer_big(**kwargs) -> Transformer:
    """Transformer big (Table 3): d 1024, 6+6 layers, 16 heads, FFN 4096, dropout 0.3."""
    return _transformer(kwargs, dim=1024, encoder_depth=6, decoder_depth=6, num_heads=16, ffn_dim=4096, dropout=0.3)


@register_model
def transformer_small(**kwargs) -> Transformer:
    """A quarter-width base for small corpora: d 256, 3+3 layers, 4 heads, FFN 1024, dropout 0.1."""
    return _transformer(kwargs, dim=256, encoder_depth=3, decoder_depth=3, num_heads=4, ffn_dim=1024, dropout=0.1)


@register_model
def transformer_tiny(**kwargs) -> Transformer:
    """For tests: d 32, 1+1 layers, 2 heads, FFN 64."""
    return _transformer(kwargs, dim=32, encoder_depth=1, decoder_depth=1, num_heads=2, ffn_dim=64, dropout=0.1)
