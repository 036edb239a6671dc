"""Embedding-space attacks (research/attacks/embedding.py) and the EmbeddingInputs interface of the text models."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from research.attacks import embedding_perturbation, embedding_pgd, freelb_init, freelb_update
from research.models import create_model
from research.models.protocols import EmbeddingInputs

VOCAB, PAD = 40, 0


def _bert():
    torch.manual_seed(0)
    return create_model("bert_tiny", vocab_size=VOCAB, drop_rate=0.0, attn_drop_rate=0.0).eval()


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, VOCAB, (3, 7), generator=g)
    ids[0, 5:] = PAD  # a padded row
    ids[:, 0] = 2  # [CLS]
    padding = ids == PAD
    targets = torch.randint(5, VOCAB, (3, 7), generator=g)
    mask = (ids != PAD) & (ids != 2)
    return ids, padding, targets, mask


def _loss(model, ids, padding, targets):
    def loss():
        logits = model(ids, padding_mask=padding)
        return F.cross_entropy(logits[~padding], targets[~padding])

    return loss


def _models():
    return {
        "bert_tiny": create_model("bert_tiny", vocab_size=VOCAB),
        "transformer_tiny": create_model("transformer_tiny", vocab_size=VOCAB, pad_id=PAD),
        "gru_attention_tiny": create_model("gru_attention_tiny", vocab_size=VOCAB, pad_id=PAD),
        "gru_classifier_tiny": create_model("gru_classifier_tiny", vocab_size=VOCAB, num_classes=3),
    }


def _run(name, model, ids):
    if name in ("transformer_tiny", "gru_attention_tiny"):
        return model(ids, ids[:, :4])
    return model(ids)


@pytest.mark.parametrize("name", list(_models()))
@pytest.mark.parametrize("include_position", [False, True])
def test_embedding_output_is_called_once_and_moves_the_output(name, include_position):
    model = _models()[name].eval()
    assert isinstance(model, EmbeddingInputs)
    assert isinstance(model.get_input_embeddings(), nn.Embedding)
    if name.startswith("gru") and include_position:
        with pytest.raises(ValueError, match="has no position embeddings .*use embeddings='token'"):
            model.embedding_output(include_position=True)
        return
    point = model.embedding_output(include_position)
    assert not list(point.parameters()) or point is model.get_input_embeddings()
    ids = torch.randint(1, VOCAB, (2, 6))
    calls = []
    handle = point.register_forward_hook(lambda m, a, out: calls.append(out.shape))
    clean = _run(name, model, ids)
    handle.remove()
    assert len(calls) == 1 and calls[0][:2] == (2, 6)  # once per forward, the encoder's (B, T, D)
    delta = torch.zeros(calls[0])
    delta[1, 3] = 1.0
    with embedding_perturbation(point, delta):
        moved = _run(name, model, ids)
    assert not torch.allclose(moved, clean)
    assert torch.equal(_run(name, model, ids), clean)  # the hook is gone


def test_hook_points_keep_state_dict_keys():
    # the Identity hook points hold no parameters, so checkpoints and HF/timm imports are unchanged
    for name, model in _models().items():
        assert not any("embed_sum" in k or "encoder_token_embed" in k or "encoder_input_embed" in k
                       for k in model.state_dict()), name


def test_perturbation_shape_errors_and_removal_on_exception():
    model = _bert()
    ids, padding, _, _ = _batch()
    point = model.embedding_output()
    with pytest.raises(ValueError, match=r"delta must be \(B, T, D\)"):
        with embedding_perturbation(point, torch.zeros(3, 7)):
            pass
    with pytest.raises(ValueError, match=r"delta has shape \(3, 6, 128\) but Embedding outputs \(3, 7, 128\)"):
        with embedding_perturbation(point, torch.zeros(3, 6, 128)):
            model(ids, padding_mask=padding)
    assert not point._forward_hooks  # removed although the block raised


def test_pgd_stays_in_its_ball_masks_exactly_and_leaves_no_grad():
    model = _bert()
    ids, padding, targets, mask = _batch()
    point = model.embedding_output()
    clean = point(ids).detach()
    delta = embedding_pgd(_loss(model, ids, padding, targets), point, mask, radius=0.1, steps=5, random_start=True)
    assert delta.shape == clean.shape and not delta.requires_grad
    norms, limits = delta.norm(dim=-1), 0.1 * clean.norm(dim=-1)
    assert (norms <= limits * (1 + 1e-5)).all()
    assert (norms[mask] >= 0.5 * limits[mask]).all()  # 12.5% steps from inside the ball reach its edge
    assert torch.equal(delta[~mask], torch.zeros_like(delta[~mask]))  # padding, [CLS]: exactly zero
    assert all(p.grad is None for p in model.parameters())
    assert not point._forward_hooks


def test_pgd_loss_rises_with_steps():
    model = _bert()
    ids, padding, targets, mask = _batch()
    point = model.embedding_output()
    loss = _loss(model, ids, padding, targets)
    values = [loss().item()]
    for steps in (1, 3, 10):
        delta = embedding_pgd(loss, point, mask, radius=0.5, steps=steps)
        with embedding_perturbation(point, delta), torch.no_grad():
            values.append(loss().item())
    assert values == sorted(values) and values[-1] > values[0] + 0.1, values


def test_one_step_is_miyatos_perturbation():
    # steps=1 from zero: r_t = radius * ||e_t|| * g_t / ||g_t||, per token
    model = _bert()
    ids, padding, targets, mask = _batch()
    point = model.embedding_output()
    loss = _loss(model, ids, padding, targets)
    delta = embedding_pgd(loss, point, mask, radius=0.2, steps=1)
    zero = torch.zeros(3, 7, 128, requires_grad=True)
    with embedding_perturbation(point, zero):
        (g,) = torch.autograd.grad(loss(), zero)
    expected = 0.2 * point(ids).detach().norm(dim=-1, keepdim=True) * g / g.norm(dim=-1, keepdim=True)
    expected[~mask] = 0
    torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(radius=0.0), "radius must be > 0"),
        (dict(radius=-1.0), "radius must be > 0"),
        (dict(steps=0), "steps must be >= 1"),
        (dict(mask=torch.ones(3, 7, dtype=torch.long)), "mask must be bool"),
        (dict(mask=torch.ones(3, 6, dtype=torch.bool)),
         r"mask has shape \(3, 6\) but the embeddings are \(3, 7, 128\)"),
    ],
)
def test_pgd_errors(kwargs, message):
    model = _bert()
    ids, padding, targets, mask = _batch()
    args = dict(radius=0.1, steps=2, mask=mask) | kwargs
    m = args.pop("mask")
    with pytest.raises(ValueError, match=message):
        embedding_pgd(_loss(model, ids, padding, targets), model.embedding_output(), m, **args)


def test_freelb_init_and_update():
    torch.manual_seed(0)
    _, _, _, mask = _batch()
    delta = freelb_init((3, 7, 16), mask, 0.3)
    assert torch.equal(delta[~mask], torch.zeros_like(delta[~mask]))
    n = mask.sum(1)
    assert (delta.abs().amax((1, 2)) <= 0.3 / (n * 16).sqrt() + 1e-7).all()  # uniform of half-width init/sqrt(n D)
    grad = torch.randn(3, 7, 16)
    new = freelb_update(delta, grad, mask, step_size=0.1, eps=0.12)
    assert torch.equal(new[~mask], torch.zeros_like(new[~mask]))
    assert (new.flatten(1).norm(dim=1) <= 0.12 + 1e-6).all()
    # inside the ball: exactly delta + lr * g / ||g||_F over the masked gradient
    big = freelb_update(delta, grad, mask, step_size=0.1, eps=100.0)
    g = grad * mask[..., None]
    torch.testing.assert_close(big, delta + 0.1 * g / g.flatten(1).norm(dim=1)[:, None, None])
    assert torch.equal(freelb_init((3, 7, 16), mask, 0.0), torch.zeros(3, 7, 16))
