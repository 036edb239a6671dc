"""Fast gradient sign method: "Explaining and Harnessing Adversarial Examples".

Goodfellow, Shlens and Szegedy, ICLR 2015, https://arxiv.org/abs/1412.6572, section 3, eq. 3:
``x_adv = x + eps * sign(grad_x J(theta, x, y))``, clamped to [0, 1]. It is one PGD step of size
``eps`` from ``x`` itself, and is computed as exactly that, so it shares PGD's contract (input
gradients only, modes and BatchNorm statistics restored, argument checks).
"""

from __future__ import annotations

from torch import Tensor, nn

from research.attacks.pgd import LossFn, pgd


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    targeted: bool = False,
    loss_fn: LossFn | None = None,
    eval_mode: bool = True,
) -> Tensor:
    """One signed-gradient step of size ``eps`` (L-inf), clamped to [0, 1].

    Args:
        model: maps (B, C, H, W) images in [0, 1] to (B, num_classes) logits.
        x: (B, C, H, W) images in [0, 1].
        y: (B,) labels (the targets when ``targeted``).
        eps: L-inf radius in pixel units.
        targeted: step down the loss to ``y`` instead of up the loss of ``y``.
        loss_fn: ``loss_fn(logits, y)`` returning per-example losses of shape (B,); default
            cross-entropy.
        eval_mode: attack in eval mode (default), or in each module's current mode.

    Returns:
        (B, C, H, W) adversarial images in [0, 1], in ``x``'s dtype.

    Raises:
        ValueError: as :func:`~research.attacks.pgd.pgd`.

    """
    # With eps = 0 any step is projected back onto x; pgd only needs a positive step_size.
    step_size = eps if isinstance(eps, int | float) and eps > 0 else 1.0
    return pgd(model, x, y, eps=eps, step_size=step_size, steps=1, norm="linf", random_start=False,
               targeted=targeted, loss_fn=loss_fn, eval_mode=eval_mode)
