"""BERT (Devlin et al. 2019, arXiv 1810.04805): encoder, masked-language-model head, HF weight import.

"BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding".

Reference implementation matched: Hugging Face ``transformers`` ``BertModel`` / ``BertForMaskedLM``
(``BertForPreTraining`` with the next-sentence head); their state_dicts load through
``import_weights`` (layout ``"huggingface"``) and give the same logits (tests/models/test_bert.py).
A checkpoint with more positions loads into a model with a smaller ``max_positions`` (its first
rows); one with fewer is refused.

- Embeddings (Sec. 3, Fig. 2): token + segment + learned position, then LayerNorm and dropout.
- Encoder: post-norm blocks (LayerNorm after each residual sum, as in the original Transformer)
  built from the shared :class:`~research.layers.Block` with ``norm_first=False``; exact (erf)
  GELU; LayerNorm eps 1e-12 as in the original TensorFlow code.
- MLM head (the ``cls/predictions`` of the original code): dense, GELU, LayerNorm, then a decoder
  whose weight is the token embedding matrix (always tied, as in BERT) plus a bias of its own.
- Pooler: dense + tanh over ``[CLS]``; the next-sentence head is one linear layer over it.

Known deviations: the shared MLP also applies dropout after its GELU (BERT's only after the
second dense), which only changes training noise; random init draws N(0, 0.02) like BERT but
does not zero the ``[PAD]`` embedding row (BERT's TF code does not either; HF does).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from research.layers import Block
from research.models.registry import register_model
from research.models.weights import StateDict, register_layout, register_resize

LAYER_NORM_EPS = 1e-12  # the original TF code's; HF's BertConfig default too


class BertEmbeddings(nn.Module):
    """Token + segment + learned position embeddings, LayerNorm, dropout (Sec. 3, Fig. 2).

    Args:
        vocab_size: rows of the token embedding.
        embed_dim: width H.
        max_positions: the longest sequence (rows of the position embedding).
        type_vocab_size: number of segments (2: sentence A and B).
        drop_rate: dropout after the LayerNorm.

    """

    def __init__(
        self, *, vocab_size: int, embed_dim: int, max_positions: int, type_vocab_size: int, drop_rate: float
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, embed_dim)
        self.position_embeddings = nn.Embedding(max_positions, embed_dim)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, embed_dim)
        # Hook point (parameter-free): its output is token + position + segment embeddings before the
        # LayerNorm, what embedding-space attacks perturb with include_position=True (EmbeddingInputs).
        self.embed_sum = nn.Identity()
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(drop_rate)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Embed token ids.

        Args:
            input_ids: (B, N) token ids.
            token_type_ids: (B, N) segment ids; None means segment 0 throughout.

        Returns:
            (B, N, H).

        """
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.norm(self.embed_sum(x)))


class Bert(nn.Module):
    """The BERT encoder: embeddings, post-norm transformer blocks and, optionally, the pooler.

    Args:
        vocab_size: token vocabulary size V.
        embed_dim: hidden width H.
        depth: number of blocks L.
        num_heads: attention heads A.
        mlp_ratio: feed-forward width / H (BERT: 4).
        max_positions: the longest sequence the position embedding covers.
        type_vocab_size: number of segments.
        drop_rate: dropout on embeddings, attention output and MLP ("hidden_dropout_prob").
        attn_drop_rate: dropout on attention weights ("attention_probs_dropout_prob").
        pooler: add the pooler (dense + tanh over ``[CLS]``) that sentence-level heads use.

    """

    def __init__(
        self,
        *,
        vocab_size: int = 30522,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        max_positions: int = 512,
        type_vocab_size: int = 2,
        drop_rate: float = 0.1,
        attn_drop_rate: float = 0.1,
        pooler: bool = True,
    ) -> None:
        super().__init__()
        self.vocab_size, self.max_positions, self.embed_dim = vocab_size, max_positions, embed_dim
        self.embeddings = BertEmbeddings(
            vocab_size=vocab_size,
            embed_dim=embed_dim,
            max_positions=max_positions,
            type_vocab_size=type_vocab_size,
            drop_rate=drop_rate,
        )
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                proj_drop=drop_rate,
                attn_drop=attn_drop_rate,
                norm_layer=partial(nn.LayerNorm, eps=LAYER_NORM_EPS),
                norm_first=False,
            )
            for _ in range(depth)
        )
        self.pooler = nn.Linear(embed_dim, embed_dim) if pooler else None
        self.apply(init_bert_weights)

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, padding_mask: Tensor | None = None
    ) -> Tensor:
        """Contextual token representations.

        Args:
            input_ids: (B, N) token ids, N <= ``max_positions``.
            token_type_ids: (B, N) segment ids; None means segment 0 throughout.
            padding_mask: bool (B, N), True = padding: no token attends to these positions, so
                the outputs at real tokens do not depend on how much padding follows.

        Returns:
            (B, N, H); the outputs at padded positions are meaningless.

        Raises:
            ValueError: a sequence longer than ``max_positions`` or token ids outside the vocabulary.

        """
        n = input_ids.shape[1]
        if n > self.max_positions:
            raise ValueError(
                f"cannot forward a sequence of {n} tokens: the model has {self.max_positions} positions; "
                "truncate the input (the datamodule's max_length) or build the model with a larger max_positions"
            )
        x = self.embeddings(input_ids, token_type_ids)
        for block in self.blocks:
            x = block(x, key_padding_mask=padding_mask)
        return x

    def get_input_embeddings(self) -> nn.Embedding:
        """The token table (V, H) (:class:`~research.models.protocols.EmbeddingInputs`)."""
        return self.embeddings.word_embeddings

    def embedding_output(self, include_position: bool = False) -> nn.Module:
        """The module whose output an embedding-space attack perturbs (``EmbeddingInputs``, models/protocols.py).

        ``include_position=False``: the token table itself, its output the (B, N, H) token
        embeddings (what Hugging Face's ``inputs_embeds`` replaces, and what FreeLB perturbs);
        ``True``: the sum token + position + segment embeddings, before the LayerNorm and dropout.
        """
        return self.embeddings.embed_sum if include_position else self.embeddings.word_embeddings

    def pool(self, x: Tensor) -> Tensor:
        """The pooled ``[CLS]`` representation (tanh of a dense layer) for sentence-level heads.

        Args:
            x: (B, N, H) from :meth:`forward`.

        Returns:
            (B, H).

        """
        if self.pooler is None:
            raise ValueError("this BERT was built without a pooler; build it with pooler=True")
        return torch.tanh(self.pooler(x[:, 0]))


class MaskedLMHead(nn.Module):
    """BERT's MLM head: dense, GELU, LayerNorm, then a decoder tied to the token embeddings, plus bias.

    Args:
        embed_dim: hidden width H.
        vocab_size: output vocabulary V (the rows of the tied embedding).

    """

    def __init__(self, *, embed_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(embed_dim, embed_dim)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: Tensor, embedding: Tensor) -> Tensor:
        """Vocabulary logits.

        Args:
            x: hidden states (..., H), e.g. (B, N, H) or only the masked positions (M, H).
            embedding: the (V, H) token embedding matrix the decoder shares.

        Returns:
            (..., V).

        """
        return F.linear(self.norm(self.act(self.dense(x))), embedding, self.bias)


class BertForMaskedLM(nn.Module):
    """BERT encoder with the masked-language-model head (and, optionally, the next-sentence head).

    Args:
        next_sentence_head: add the next-sentence-prediction classifier (and the pooler it reads);
            as ``BertForPreTraining``. Without it there is no pooler, as in ``BertForMaskedLM``.
        **kwargs: :class:`Bert` arguments except ``pooler``.

    """

    def __init__(self, *, next_sentence_head: bool = False, **kwargs) -> None:
        super().__init__()
        if "pooler" in kwargs:
            raise ValueError("BertForMaskedLM has a pooler exactly when next_sentence_head=True; do not pass pooler")
        self.bert = Bert(pooler=next_sentence_head, **kwargs)
        self.vocab_size, self.max_positions = self.bert.vocab_size, self.bert.max_positions
        self.head = MaskedLMHead(embed_dim=self.bert.embed_dim, vocab_size=self.vocab_size)
        self.next_sentence = nn.Linear(self.bert.embed_dim, 2) if next_sentence_head else None
        self.head.apply(init_bert_weights)
        if self.next_sentence is not None:
            init_bert_weights(self.next_sentence)

    def forward_features(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, padding_mask: Tensor | None = None
    ) -> Tensor:
        """The encoder's output, (B, N, H); arguments as :meth:`Bert.forward`."""
        return self.bert(input_ids, token_type_ids, padding_mask)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token table of the encoder (:meth:`Bert.get_input_embeddings`)."""
        return self.bert.get_input_embeddings()

    def embedding_output(self, include_position: bool = False) -> nn.Module:
        """The encoder's embedding point (:meth:`Bert.embedding_output`).

        The tied MLM decoder reads the table's weight, not its output, so it is not perturbed.
        """
        return self.bert.embedding_output(include_position)

    def mlm_logits(self, x: Tensor) -> Tensor:
        """Vocabulary logits (..., V) of hidden states (..., H); a task may pass only the masked positions."""
        return self.head(x, self.bert.embeddings.word_embeddings.weight)

    def next_sentence_logits(self, x: Tensor) -> Tensor:
        """Is-next (0) / random (1) logits (B, 2) from the encoder's output (B, N, H)."""
        if self.next_sentence is None:
            raise ValueError("this model has no next-sentence head; build it with next_sentence_head=True")
        return self.next_sentence(self.bert.pool(x))

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, padding_mask: Tensor | None = None
    ) -> Tensor:
        """Masked-language-model logits at every position.

        Args:
            input_ids: (B, N) token ids.
            token_type_ids: (B, N) segment ids; None means segment 0 throughout.
            padding_mask: bool (B, N), True = padding.

        Returns:
            (B, N, V).

        """
        return self.mlm_logits(self.forward_features(input_ids, token_type_ids, padding_mask))


def init_bert_weights(module: nn.Module) -> None:
    """BERT's init: N(0, 0.02) for dense and embedding weights ("initializer_range"), zero biases, unit norms."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# L, H, A of the registered BERTs (MLM and classifier alike): BERT-Base and BERT-Large from the paper (Sec. 3),
# the miniatures from Turc et al. 2019, "Well-Read Students Learn Better", arXiv 1908.08962, Table 1 grid.
SIZES = {
    "tiny": dict(embed_dim=128, depth=2, num_heads=2),
    "mini": dict(embed_dim=256, depth=4, num_heads=4),
    "small": dict(embed_dim=512, depth=4, num_heads=8),
    "medium": dict(embed_dim=512, depth=8, num_heads=8),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}


def _bert(kwargs: dict, **defaults) -> BertForMaskedLM:
    """Build a BERT from a factory's pinned ``defaults``, which the caller's ``kwargs`` override."""
    return BertForMaskedLM(**dict(defaults, **kwargs))


# vocab_size defaults to bert-base-uncased's 30,522; a task sets it from its tokenizer.
@register_model
def bert_tiny(**kwargs) -> BertForMaskedLM:
    """BERT-Tiny: L=2, H=128, A=2 (4.4M parameters with the 30,522-token vocabulary)."""
    return _bert(kwargs, **SIZES["tiny"])


@register_model
def bert_mini(**kwargs) -> BertForMaskedLM:
    """BERT-Mini: L=4, H=256, A=4."""
    return _bert(kwargs, **SIZES["mini"])


@register_model
def bert_small(**kwargs) -> BertForMaskedLM:
    """BERT-Small: L=4, H=512, A=8."""
    return _bert(kwargs, **SIZES["small"])


@register_model
def bert_medium(**kwargs) -> BertForMaskedLM:
    """BERT-Medium: L=8, H=512, A=8."""
    return _bert(kwargs, **SIZES["medium"])


@register_model
def bert_base(**kwargs) -> BertForMaskedLM:
    """BERT-Base: L=12, H=768, A=12 (109,482,240 encoder + pooler parameters, as HF's BertModel)."""
    return _bert(kwargs, **SIZES["base"])


@register_model
def bert_large(**kwargs) -> BertForMaskedLM:
    """BERT-Large: L=24, H=1024, A=16 (335,141,888 encoder + pooler parameters, as HF's BertModel)."""
    return _bert(kwargs, **SIZES["large"])


# --- Hugging Face layout -------------------------------------------------------------------------
# HF names -> ours, per encoder layer; query/key/value are fused into our qkv separately.
_HF_LAYER = {
    "attention.output.dense": "attn.proj",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "output.LayerNorm": "norm2",
}
_HF_OTHER = {
    "embeddings.LayerNorm": "embeddings.norm",
    "pooler.dense": "pooler",
    "cls.predictions.transform.dense": "head.dense",
    "cls.predictions.transform.LayerNorm": "head.norm",
    "cls.predictions.bias": "head.bias",
    "cls.seq_relationship": "next_sentence",
}
_HF_LAYER_KEY = re.compile(r"^(?P<prefix>(bert\.)?)encoder\.layer\.(?P<i>\d+)\.(?P<rest>.+)\.(?P<kind>weight|bias)$")


def _is_hf_bert(sd: Mapping[str, Tensor], prefix: str) -> bool:
    keys = ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight")
    return all(prefix + key in sd for key in keys)


def _from_huggingface(model: nn.Module, sd: StateDict) -> StateDict:
    """Rename a Hugging Face BERT state_dict into ours, fusing query/key/value into ``qkv``."""
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}  # a buffer in older transformers
    # The original bert-base-uncased files on the Hub still carry TF's LayerNorm names.
    sd = {
        re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)): v
        for k, v in sd.items()
    }
    tied = sd.pop("cls.predictions.decoder.weight", None)
    decoder_bias = sd.pop("cls.predictions.decoder.bias", None)
    if tied is not None and not torch.equal(tied, sd["bert.embeddings.word_embeddings.weight"]):
        raise ValueError("this checkpoint's MLM decoder is not tied to the token embeddings; our BERT always ties them")
    if decoder_bias is not None and not torch.equal(decoder_bias, sd.get("cls.predictions.bias", decoder_bias)):
        raise ValueError("this checkpoint's MLM decoder bias differs from cls.predictions.bias; they should be one")
    out: StateDict = {}
    fused: dict[tuple[str, str, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        layer = _HF_LAYER_KEY.match(key)
        if layer:
            prefix, i, rest, kind = layer["prefix"], layer["i"], layer["rest"], layer["kind"]
            if rest.startswith("attention.self."):
                fused.setdefault((prefix, i, kind), {})[rest.removeprefix("attention.self.")] = value
                continue
            if rest not in _HF_LAYER:
                raise ValueError(f"unknown Hugging Face BERT key {key!r}")
            out[f"{prefix}blocks.{i}.{_HF_LAYER[rest]}.{kind}"] = value
            continue
        new = key
        for hf, ours in _HF_OTHER.items():
            if hf in key:
                new = key.replace(hf, ours)
                break
        out[new] = value
    for (prefix, i, kind), parts in fused.items():
        out[f"{prefix}blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def _fit_positions(model: nn.Module, sd: StateDict) -> StateDict:
    """Fit the learned position table (max_positions x C) to the model's ``max_positions``.

    Row i is position i, so a model with fewer positions than the checkpoint keeps its first rows
    and every position keeps its meaning. More positions than the checkpoint learned are refused:
    rows beyond its last were never trained (BERT learns them from its pre-training lengths, Sec. A.2),
    and inventing them silently would be a guess.

    Raises:
        ValueError: the checkpoint has fewer positions than the model.
    """
    for key, table in sd.items():
        if not key.endswith("embeddings.position_embeddings.weight") or table.dim() != 2:
            continue
        have, want = table.shape[0], model.max_positions
        if have > want:
            sd[key] = table[:want].clone()
        elif have < want:
            raise ValueError(
                f"the checkpoint learned {have} positions (max_position_embeddings={have}) but this model has "
                f"max_positions={want}; build it with max_positions<={have} (positions past the checkpoint's "
                "were never trained)"
            )
    return sd


register_layout(Bert, "huggingface", detect=lambda sd: _is_hf_bert(sd, ""), convert=_from_huggingface)
register_layout(BertForMaskedLM, "huggingface", detect=lambda sd: _is_hf_bert(sd, "bert."), convert=_from_huggingface)
register_resize(Bert, _fit_positions)
register_resize(BertForMaskedLM, _fit_positions)
