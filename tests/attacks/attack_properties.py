"""What the property tests of the attacks share: random tiny problems, threat models, the model's state, the checks.

Used by test_pgd_properties.py, test_fab.py and test_square.py (hypothesis strategies, not pytest fixtures:
hypothesis draws a new problem per example).
"""

import torch
from hypothesis import strategies as st
from tiny_classifiers import tiny_cnn
from torch import nn

from research.attacks.balls import l2_norm


@st.composite
def problems(draw, *, batch_norm=None, min_side=3, max_side=7, dropout=False, clean_correct=False):
    """A random tiny CNN with a batch of images in [0, 1] and labels.

    Args:
        batch_norm: with or without BatchNorm; None draws it.
        min_side, max_side: the range of the image height and width (Square's L2 start needs 5).
        dropout: also draw a dropout of 0 or 0.5.
        clean_correct: labels mostly the model's clean predictions (70%), so that attacks have examples to
            break; otherwise uniform. The model is then returned in eval mode.
    """
    in_chans = draw(st.integers(1, 3))
    height, width = draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))
    num_classes, batch = draw(st.integers(2, 5)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    bn = draw(st.booleans()) if batch_norm is None else batch_norm
    model = tiny_cnn(in_chans=in_chans, height=height, width=width, num_classes=num_classes, seed=seed,
                     batch_norm=bn, dropout=draw(st.sampled_from([0.0, 0.5])) if dropout else 0.0)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, in_chans, height, width, generator=g)
    # Some pixels exactly at 0 and 1, where the clamp to [0, 1] matters most.
    x = torch.where(torch.rand(x.shape, generator=g) < 0.2, x.round(), x)
    if clean_correct:
        with torch.no_grad():
            y = model.eval()(x).argmax(1)
        y = torch.where(torch.rand(batch, generator=g) < 0.3, torch.randint(0, num_classes, (batch,), generator=g), y)
    else:
        y = torch.randint(0, num_classes, (batch,), generator=g)
    return model, x, y


norms_and_eps = st.sampled_from(["linf", "l2"]).flatmap(
    lambda norm: st.tuples(st.just(norm), st.floats(0.0, 0.5 if norm == "linf" else 3.0))
)


def distance(x_adv, x, norm):
    """Per-example distance in ``norm``. Shape: (B, ...) -> (B,)."""
    delta = x_adv - x
    return delta.flatten(1).abs().amax(1) if norm == "linf" else l2_norm(delta)


def set_state(model: nn.Module, *, modes: str, momentum, grads: str, frozen: bool = False) -> None:
    """Put ``model`` (a :func:`tiny_cnn` with BatchNorm) in a state an attack must leave as it found it.

    ``modes``: "train", "eval" or "mixed" (a frozen BatchNorm in a model that trains); ``momentum`` of
    BatchNorm, None being a cumulative average that reads num_batches_tracked; ``grads`` "none" or
    "existing" (parameter gradients already there); ``frozen``: the first layer without requires_grad.
    """
    model.train(modes != "eval")
    if modes == "mixed":
        model[1].eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum
    if grads == "existing":
        for p in model.parameters():
            p.grad = torch.randn_like(p)
    if frozen:
        model[0].requires_grad_(False)


def assert_in_the_ball_and_every_changed_point_fools(model, x, y, x_adv, *, norm, eps, tolerance=0.0):
    """The minimum-search attacks' contract (FAB-T, Square): in the ball and [0, 1], an example changed only to fool."""
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert (distance(x_adv, x, norm) <= eps + tolerance).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        clean_wrong, adv_wrong = model(x).argmax(1) != y, model(x_adv).argmax(1) != y
    changed = (x_adv != x).flatten(1).any(1)
    assert adv_wrong[changed].all(), "a returned point does not fool the model"
    assert not changed[clean_wrong].any(), "an example misclassified from the start was changed"
    assert (adv_wrong >= clean_wrong).all()
