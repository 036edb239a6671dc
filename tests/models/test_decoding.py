import functools
import itertools

import pytest
import torch

from research.models import build_model
from research.models.decoding import (
    beam_search,
    gnmt_length_penalty,
    greedy_decode,
    resolve_max_len,
    sequence_scores,
)

V, PAD, BOS, EOS = 8, 0, 1, 2
MODELS = ["transformer_tiny", "gru_attention_tiny"]


def random_model(name: str, seed: int = 0, vocab_size: int = V):
    """A tiny model with large random weights, so that its outputs vary and often end with EOS."""
    torch.manual_seed(seed)
    extra = {"max_positions": 16} if name.startswith("transformer") else {}
    model = build_model({"name": name, "vocab_size": vocab_size, "pad_id": PAD, **extra})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3 if name.startswith("transformer") else 0.7)
    return model.eval()


def sources(seed: int = 0, batch: int = 5):
    src = torch.randint(3, V, (batch, 5), generator=torch.Generator().manual_seed(seed))
    src[0, 3:] = PAD
    return src


def decode_args(**kwargs):
    return dict(bos_id=BOS, eos_id=EOS, max_len=8, **kwargs)


@functools.cache
def decode_all(name: str, seed: int) -> dict:
    """Greedy and beam outputs, cached and uncached, of one random tiny model (once per run: decoding is slow)."""
    model, src = random_model(name, seed), sources(seed)
    out = {"model": model, "src": src}
    for use_cache in (True, False):
        out["greedy", use_cache] = greedy_decode(model, src, **decode_args(use_cache=use_cache))
        out["beam", use_cache] = beam_search(model, src, **decode_args(use_cache=use_cache))
    out["beam1"] = beam_search(model, src, **decode_args(beam_size=1))
    for kind in ("greedy", "beam"):
        out[kind, "score"] = sequence_scores(model, src, out[kind, True], bos_id=BOS, eos_id=EOS, length_penalty=0.6)
    return out


CASES = [(name, seed) for name in MODELS for seed in range(2)]


@pytest.fixture(params=CASES, ids=str)
def decoded(request):
    return decode_all(*request.param)


@pytest.mark.parametrize("decoder", ["greedy", "beam"])
def test_cached_and_uncached_decoding_give_the_same_tokens(decoded, decoder):
    assert torch.equal(decoded[decoder, True], decoded[decoder, False])


def test_beam_of_one_is_greedy(decoded):
    assert torch.equal(decoded["beam1"], decoded["greedy", True])


def test_beam_finds_a_sequence_scoring_at_least_as_well_as_greedy(decoded):
    # Not a theorem (greedy's prefix may fall out of the beam), but it holds on these models; a
    # search that stops too early (fairseq's "k finished" rule alone) fails it.
    assert (decoded["beam", "score"] >= decoded["greedy", "score"] - 1e-5).all()


def test_the_test_models_are_hard_enough_for_beam_search_to_beat_greedy():
    assert any(
        (decode_all(*case)["beam", "score"] > decode_all(*case)["greedy", "score"] + 1e-3).any() for case in CASES
    )


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_a_beam_wider_than_the_search_space_finds_the_exact_best_sequence(name, alpha):
    vocab, max_len = 5, 3  # tokens BOS, EOS, 3, 4 can be generated (pad cannot)
    model, src = random_model(name, 1, vocab_size=vocab), sources(1, batch=2).clamp(max=vocab - 1)
    found = beam_search(model, src, bos_id=BOS, eos_id=EOS, beam_size=64, length_penalty=alpha, max_len=max_len)
    # every output the decoders can produce: ended by EOS at any length, or max_len tokens without EOS
    words = [1, 3, 4]
    candidates = [[*w, EOS] for n in range(max_len) for w in itertools.product(words, repeat=n)]
    candidates += [list(w) for w in itertools.product(words, repeat=max_len)]
    hyps = torch.tensor([c + [PAD] * (max_len - len(c)) for c in candidates])
    for i in range(src.shape[0]):
        scores = sequence_scores(
            model, src[i : i + 1].expand(len(hyps), -1), hyps, bos_id=BOS, eos_id=EOS, length_penalty=alpha
        )
        best = scores.max()
        ours = sequence_scores(model, src[i : i + 1], found[i : i + 1], bos_id=BOS, eos_id=EOS, length_penalty=alpha)
        torch.testing.assert_close(ours[0], best)


@pytest.mark.parametrize("decoder", ["greedy", "beam"])
def test_output_format_ends_at_eos_then_pads_and_never_generates_pad(decoded, decoder):
    out = decoded[decoder, True]
    assert out.dtype == torch.long and out.shape[0] == decoded["src"].shape[0] and out.shape[1] <= 8
    assert (out[:, 0] != PAD).all()
    for row in out.tolist():
        end = row.index(EOS) + 1 if EOS in row else len(row)
        assert PAD not in row[:end] and set(row[end:]) <= {PAD}
        assert EOS in row or len(row) == 8  # unended only when cut at max_len


def test_length_penalty_is_gnmts():
    assert gnmt_length_penalty(1, 0.6) == 1.0
    assert gnmt_length_penalty(7, 0.6) == pytest.approx(2**0.6)
    assert gnmt_length_penalty(10, 0.0) == 1.0


def test_max_len_defaults_to_source_plus_50_capped_by_max_positions():
    transformer, gru = random_model("transformer_tiny"), random_model("gru_attention_tiny")
    src = torch.ones(2, 7, dtype=torch.long)
    assert resolve_max_len(transformer, src, None) == 16  # 57 capped by max_positions=16
    assert resolve_max_len(gru, src, None) == 57
    with pytest.raises(ValueError, match=r"max_len=17 exceeds the model's max_positions=16"):
        greedy_decode(transformer, src, bos_id=BOS, eos_id=EOS, max_len=17)
    with pytest.raises(ValueError, match="beam_size must be at least 1"):
        beam_search(gru, src, bos_id=BOS, eos_id=EOS, beam_size=0)


def test_decoding_runs_in_eval_mode_and_restores_each_modules_mode():
    model = build_model({"name": "transformer_tiny", "vocab_size": V, "pad_id": PAD}).train()
    model.encoder.eval()
    src = sources()
    first = greedy_decode(model, src, **decode_args())
    assert torch.equal(first, greedy_decode(model, src, **decode_args()))  # no dropout
    assert model.training and model.decoder.training and not model.encoder.training
    assert all(p.grad is None for p in model.parameters())
