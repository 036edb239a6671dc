"""Greedy and beam-search decoding for any seq2seq model of :mod:`research.models`.

The model-agnostic contract (met by :class:`~research.models.transformer.Transformer` and
:class:`~research.models.gru_seq2seq.GRUSeq2Seq`): ``encode(src) -> memory``,
``decode(tgt_in, memory, cache) -> (logits, cache)``, ``select_memory(memory, indices)``,
``reorder_cache(cache, indices)`` and the attributes ``pad_id`` and ``max_positions``.

Conventions shared by both decoders and :func:`sequence_scores`:

- The output holds the generated tokens without the leading BOS and *with* the EOS that ended each
  sequence, right-padded with ``model.pad_id``. A sequence that reaches ``max_len`` without EOS is
  returned as it stands (``max_len`` tokens, no EOS).
- ``pad_id`` is never generated (its log-probability is set to -inf, as in fairseq), so padding in
  the output is unambiguous.
- Beam search ranks finished hypotheses by log P(Y|X) / lp(Y), lp(Y) = ((5 + |Y|) / 6)^alpha (GNMT,
  Wu et al. 2016, arXiv 1609.08144, Eq. 14, without the coverage penalty); |Y| counts the EOS.
- The model runs in eval mode (no dropout) and without gradients; each module's mode is restored.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

_PAPER_EXTRA_LENGTH = 50  # Vaswani et al. 2017, Sec. 6.1: "maximum output length ... input length + 50"


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients; put back every module's own ``training`` flag afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def gnmt_length_penalty(length: Tensor | int, alpha: float) -> Tensor | float:
    """GNMT's length penalty lp(Y) = ((5 + |Y|) / 6)^alpha (Wu et al. 2016, Eq. 14)."""
    return ((5 + length) / 6) ** alpha


def resolve_max_len(model: nn.Module, src: Tensor, max_len: int | None) -> int:
    """The number of tokens to generate at most: the paper's src length + 50 by default, capped by the model.

    The decoder input of the last step is BOS plus ``max_len - 1`` tokens, so ``max_len`` may be at
    most ``model.max_positions``.

    Raises:
        ValueError: an explicit ``max_len`` that is not positive or exceeds ``model.max_positions``.

    """
    limit = model.max_positions
    if max_len is None:
        max_len = src.shape[1] + _PAPER_EXTRA_LENGTH
        return max_len if limit is None else min(max_len, limit)
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    if limit is not None and max_len > limit:
        raise ValueError(
            f"max_len={max_len} exceeds the model's max_positions={limit}; pass max_len<={limit} "
            "or build the model with more positions"
        )
    return max_len


def _next_log_probs(
    model: nn.Module, tokens: Tensor, memory: Any, cache: Any, use_cache: bool
) -> tuple[Tensor, Any]:
    """Log-probabilities (B, V) of the token after ``tokens`` (B, L), pad excluded, and the new cache."""
    if use_cache:
        logits, cache = model.decode(tokens if cache is None else tokens[:, -1:], memory, cache)
    else:
        logits, _ = model.decode(tokens, memory, None)
    logits = logits[:, -1].float()
    logits[:, model.pad_id] = float("-inf")
    return logits.log_softmax(-1), cache


def greedy_decode(
    model: nn.Module,
    src: Tensor,
    *,
    bos_id: int,
    eos_id: int,
    max_len: int | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Pick the most probable next token until every sequence has produced EOS or ``max_len`` tokens.

    Args:
        model: a seq2seq model (see the module docstring).
        src: source ids (B, S), padded with ``model.pad_id``.
        bos_id: the token every target starts with.
        eos_id: the token that ends a sequence (kept in the output).
        max_len: most tokens to generate; default ``S + 50`` capped by ``model.max_positions``.
        use_cache: decode incrementally with cached keys/values (same tokens, faster) rather than
            re-running the decoder over the whole prefix at each step.

    Returns:
        (B, L) generated ids without BOS, each ending with EOS (unless cut at ``max_len``), padded
        with ``model.pad_id``; L <= ``max_len``.

    """
    max_len = resolve_max_len(model, src, max_len)
    with _inference(model):
        memory = model.encode(src)
        tokens = src.new_full((src.shape[0], 1), bos_id)
        finished = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
        cache = None
        for _ in range(max_len):
            log_probs, cache = _next_log_probs(model, tokens, memory, cache, use_cache)
            next_token = log_probs.argmax(-1).masked_fill(finished, model.pad_id)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            finished |= next_token == eos_id
            if finished.all():
                break
    return tokens[:, 1:]


def beam_search(
    model: nn.Module,
    src: Tensor,
    *,
    bos_id: int,
    eos_id: int,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    max_len: int | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Beam search with GNMT's length penalty; defaults are the paper's (Sec. 6.1: beam 4, alpha 0.6).

    At each step the 2k best extensions of the k live hypotheses are ranked. An EOS among the top
    k of them finishes a hypothesis (fairseq's rule); the k best others stay alive. A sentence is
    done once it has k finished hypotheses and its best live one, length-normalised at its current
    length, does not beat the worst of them (Hugging Face's default stopping rule). With k = 1 this
    is exactly greedy decoding. At ``max_len`` the live hypotheses of unfinished sentences compete
    unended. The best hypothesis by log P / lp is returned.

    Args:
        model: a seq2seq model (see the module docstring).
        src: source ids (B, S), padded with ``model.pad_id``.
        bos_id: the token every target starts with.
        eos_id: the token that ends a sequence (kept in the output).
        beam_size: hypotheses k kept per sentence.
        length_penalty: alpha of lp(Y) = ((5 + |Y|) / 6)^alpha; 0 ranks by plain log-probability.
        max_len: most tokens to generate; default ``S + 50`` capped by ``model.max_positions``.
        use_cache: decode incrementally with cached keys/values, reordered as beams are chosen.

    Returns:
        (B, L) best hypothesis per sentence without BOS, ending with EOS (unless cut at
        ``max_len``), padded with ``model.pad_id``.

    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    max_len = resolve_max_len(model, src, max_len)
    b, k, pad = src.shape[0], beam_size, model.pad_id
    device = src.device
    batch_offset = torch.arange(b, device=device)[:, None] * k  # row of each sentence's first beam
    with _inference(model):
        memory = model.select_memory(model.encode(src), torch.arange(b, device=device).repeat_interleave(k))
        tokens = src.new_full((b * k, 1), bos_id)  # live hypotheses, BOS first
        # All beams start as the same BOS; only the first may expand, or the k beams would be copies.
        scores = torch.full((b, k), float("-inf"), device=device)  # log P of the live hypotheses
        scores[:, 0] = 0.0
        finished = src.new_full((b, k, max_len), pad)
        finished_scores = torch.full((b, k), float("-inf"), device=device)  # log P / lp, best first
        done = torch.zeros(b, dtype=torch.bool, device=device)
        cache = None
        for step in range(1, max_len + 1):  # step = length of the hypotheses after this extension
            log_probs, cache = _next_log_probs(model, tokens, memory, cache, use_cache)
            vocab = log_probs.shape[-1]
            candidates = rearrange(scores[:, :, None] + log_probs.view(b, k, vocab), "b k v -> b (k v)")
            top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=1)  # (B, 2k), best first
            top_beam, top_token = top_index // vocab, top_index % vocab
            lp = gnmt_length_penalty(step, length_penalty)

            is_eos = top_token == eos_id
            rank = torch.arange(top_index.shape[1], device=device)
            finishing = is_eos & (rank < k) & top_scores.isfinite() & ~done[:, None]
            prefixes = tokens[(batch_offset + top_beam).flatten(), 1:].view(*top_index.shape, step - 1)
            extended = torch.cat([prefixes, top_token[:, :, None]], dim=2)  # (B, 2k, step)
            new_scores = torch.where(finishing, top_scores / lp, float("-inf"))
            finished_scores, finished = _keep_best(finished_scores, finished, new_scores, extended, k=k, pad=pad)

            scores, pick = top_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1)  # <= k of 2k are EOS
            # finished_scores[:, -1] is -inf until k hypotheses have finished
            done |= scores[:, 0] / lp <= finished_scores[:, -1]
            if bool(done.all()):
                break
            rows = (batch_offset + top_beam.gather(1, pick)).flatten()
            tokens = torch.cat([tokens[rows], top_token.gather(1, pick).flatten()[:, None]], dim=1)
            if use_cache:
                cache = model.reorder_cache(cache, rows)
        else:  # max_len reached: unfinished sentences also consider their live hypotheses, unended
            unended = scores.masked_fill(done[:, None], float("-inf"))
            unended = unended / gnmt_length_penalty(max_len, length_penalty)
            live = rearrange(tokens[:, 1:], "(b k) l -> b k l", b=b)
            finished_scores, finished = _keep_best(finished_scores, finished, unended, live, k=k, pad=pad)
    best = finished[:, 0]
    return best[:, : int((best != pad).sum(1).max())]


def _keep_best(
    scores: Tensor, hyps: Tensor, new_scores: Tensor, new_hyps: Tensor, *, k: int, pad: int
) -> tuple[Tensor, Tensor]:
    """The k best of the kept (B, k, L) and new (B, n, l <= L) hypotheses; new ones are padded to L."""
    padded = torch.full((*new_hyps.shape[:2], hyps.shape[2]), pad, dtype=hyps.dtype, device=hyps.device)
    padded[:, :, : new_hyps.shape[2]] = new_hyps
    all_scores = torch.cat([scores, new_scores], dim=1)
    best_scores, index = all_scores.topk(k, dim=1)
    all_hyps = torch.cat([hyps, padded], dim=1)
    return best_scores, all_hyps.gather(1, repeat(index, "b k -> b k l", l=hyps.shape[2]))


def sequence_scores(
    model: nn.Module, src: Tensor, hyps: Tensor, *, bos_id: int, eos_id: int, length_penalty: float = 0.6
) -> Tensor:
    """Length-normalised log-probability log P(Y|X) / lp(Y) that the decoders rank by.

    ``hyps`` are decoder outputs as returned by :func:`greedy_decode` and :func:`beam_search`: each
    row's tokens up to and including its first EOS count, or all its non-pad tokens if it has no
    EOS. Like the decoders, the pad token's probability is excluded from the softmax.

    Args:
        model: a seq2seq model.
        src: source ids (B, S).
        hyps: generated ids (B, L) without BOS, padded with ``model.pad_id``.
        bos_id: the token the decoder input starts with.
        eos_id: the end-of-sequence token.
        length_penalty: alpha of the GNMT length penalty.

    Returns:
        (B,) float scores.

    """
    with _inference(model):
        tgt_in = torch.cat([hyps.new_full((hyps.shape[0], 1), bos_id), hyps[:, :-1]], dim=1)
        logits = model(src, tgt_in).float()
        logits[..., model.pad_id] = float("-inf")
        token_log_probs = logits.log_softmax(-1).gather(2, hyps[:, :, None]).squeeze(2)  # (B, L)
    is_eos = hyps == eos_id
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, (hyps != model.pad_id).sum(1))
    counted = torch.arange(hyps.shape[1], device=hyps.device)[None] < first_eos[:, None]
    total = token_log_probs.masked_fill(~counted, 0.0).sum(1)
    return total / gnmt_length_penalty(first_eos.float(), length_penalty)
