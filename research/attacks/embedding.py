"""Attacks in embedding space for models whose inputs are token ids: perturb the embeddings, not the ids.

A token id cannot be moved by a small amount, but its embedding can. Miyato, Dai & Goodfellow 2017,
"Adversarial Training Methods for Semi-Supervised Text Classification" (arXiv:1605.07725, Sec. 3),
add an L2-bounded perturbation to the word embeddings; Zhu et al. 2020, "FreeLB: Enhanced
Adversarial Training for Natural Language Understanding" (arXiv:1909.11764), take K projected
ascent steps on it. Both need the model's forward to see ``embeddings + delta``: the model names the
module whose output is those embeddings (its ``embedding_output``, :class:`~research.models.protocols.EmbeddingInputs`)
and :func:`embedding_perturbation` adds ``delta`` there with a forward hook, so the model's own
``forward`` (masks, positions, everything after the embedding) runs unchanged.

Threat model of :func:`embedding_pgd`: each perturbable token t of each sequence may move by at
most ``radius * ||e_t||_2``, its clean embedding's L2 norm, in L2. Miyato et al. bound the L2
norm of the whole sequence's perturbation (``_scale_l2`` over axes (1, 2) in their
``research/adversarial_text/adversarial_losses.py``, github.com/tensorflow/models) on embeddings
they normalise to zero mean and unit variance (``layers.Embedding(normalize=True)``), so their
epsilon is in units of the embedding's scale. We keep their L2 norm and their scaling to the
embedding, but per token and relative to each token's own norm: a radius then means the same for
BERT (norms about 1), the Transformer (sqrt(d)-scaled) and the GRUs, and a sequence's padding or
length does not dilute it. Their single step (``adversarial_loss``: ``epsilon * g / ||g||``) is
our ``steps=1, step_size=radius``; more steps are PGD (Madry et al. 2018) in that ball.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

_TINY = 1e-12  # keeps a zero gradient or a zero embedding from dividing by zero


@contextmanager
def embedding_perturbation(point: nn.Module, delta: Tensor) -> Iterator[None]:
    """Add ``delta`` to ``point``'s output for every forward inside the block.

    Args:
        point: the module whose output is the (B, T, D) embeddings to perturb (a model's
            ``embedding_output()``).
        delta: (B, T, D) perturbation, added in the output's dtype (gradients reach ``delta``
            when it requires them).

    Raises:
        ValueError: ``delta`` is not 3-D, or (at the forward) its shape differs from ``point``'s output.

    The hook is removed on exit, also when the block raises.
    """
    if delta.ndim != 3:
        raise ValueError(f"embedding_perturbation: delta must be (B, T, D), got shape {tuple(delta.shape)}")

    def add(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        if output.shape != delta.shape:
            raise ValueError(
                f"embedding_perturbation: delta has shape {tuple(delta.shape)} but {type(module).__name__} "
                f"outputs {tuple(output.shape)}; build delta for this batch's (B, T, D) embeddings"
            )
        return output + delta.to(output.dtype)

    handle = point.register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


def _token_norms(x: Tensor) -> Tensor:
    """L2 norm of each token's vector, (B, T, D) -> (B, T, 1), in float32."""
    return torch.linalg.vector_norm(x.float(), dim=-1, keepdim=True)


def _project(delta: Tensor, radii: Tensor) -> Tensor:
    """Scale each token's perturbation back onto its ball of radius ``radii`` (B, T, 1) where it lies outside."""
    return delta * (radii / _token_norms(delta).clamp_min(_TINY)).clamp(max=1.0)


def embedding_pgd(
    loss: Callable[[], Tensor],
    point: nn.Module,
    mask: Tensor,
    *,
    radius: float,
    steps: int,
    step_size: float | None = None,
    random_start: bool = False,
) -> Tensor:
    """Maximise ``loss()`` over a perturbation of ``point``'s output, per-token L2 balls scaled to the embedding norm.

    Token t of sequence b may move by at most ``radius * ||e_bt||_2`` (see the module docstring);
    ``e`` is what ``point`` outputs on the first pass (the clean embeddings of the batch). Each
    step moves every token along its own normalised gradient by ``step_size * ||e_bt||_2`` and
    projects back onto its ball (L2 PGD, token by token). Gradients are taken with respect to the
    perturbation only (``torch.autograd.grad``): no parameter's ``.grad`` is written, so a DDP
    gradient reducer never sees the attack. The caller chooses train or eval mode
    (:func:`~research.attacks.attack_mode`) and autocast.

    Args:
        loss: a closure that runs the model's forward on the batch (through ``point`` exactly
            once) and returns a scalar to maximise, e.g. a task's ``adversarial_loss(batch)``.
        point: the module whose (B, T, D) output is perturbed (a model's ``embedding_output()``).
        mask: bool (B, T), True where a token may be perturbed; elsewhere (padding, special
            tokens) the perturbation is exactly zero.
        radius: the ball's radius relative to each token's embedding norm, > 0 (Miyato et al.'s
            epsilon, made relative).
        steps: ascent steps, >= 1 (forward and backward passes of the attack).
        step_size: step relative to each token's embedding norm; default ``2.5 * radius / steps``
            (Madry's lab's rule, as for images) for ``steps > 1`` and ``radius`` for ``steps=1``
            (Miyato et al.'s one-step perturbation, ``epsilon * g / ||g||``).
        random_start: start from a point drawn uniformly in each token's ball (global RNG), else from 0.

    Returns:
        The final perturbation (B, T, D), float32, detached, zero where ``mask`` is False.

    Raises:
        ValueError: radius <= 0, steps < 1, step_size <= 0, a mask that is not bool (B, T) or does
            not match the embeddings, or a ``loss`` that does not run ``point``.
    """
    if not radius > 0:
        raise ValueError(f"embedding_pgd: radius must be > 0 (relative to each token's embedding norm), got {radius}")
    if steps < 1:
        raise ValueError(f"embedding_pgd: steps must be >= 1, got {steps}")
    if step_size is None:
        step_size = 2.5 * radius / steps if steps > 1 else radius
    if not step_size > 0:
        raise ValueError(f"embedding_pgd: step_size must be > 0, got {step_size}")
    if mask.dtype != torch.bool or mask.ndim != 2:
        raise ValueError(f"embedding_pgd: mask must be bool (B, T), got {mask.dtype} of shape {tuple(mask.shape)}")

    state: dict[str, Tensor] = {}

    def perturb(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        if "delta" not in state:  # the first pass: the clean embeddings fix the balls
            if output.shape[:2] != mask.shape:
                raise ValueError(
                    f"embedding_pgd: mask has shape {tuple(mask.shape)} but the embeddings are "
                    f"{tuple(output.shape)}; the mask needs one entry per token (B, T)"
                )
            keep = mask[..., None].to(torch.float32)
            state["scale"] = _token_norms(output.detach()) * keep  # ||e_bt||, 0 where not perturbed
            delta = torch.zeros(output.shape, dtype=torch.float32, device=output.device)
            if random_start:  # uniform in the ball: a uniform direction, radius * U^(1/D)
                direction = torch.randn_like(delta)
                direction = direction / _token_norms(direction).clamp_min(_TINY)
                u = torch.rand(*output.shape[:2], 1, device=output.device) ** (1.0 / output.shape[-1])
                delta = direction * u * radius * state["scale"]
            state["delta"] = delta.requires_grad_(True)
        return output + state["delta"].to(output.dtype)

    handle = point.register_forward_hook(perturb)
    try:
        for _ in range(steps):
            with torch.enable_grad():
                value = loss()
                if "delta" not in state:
                    raise ValueError(f"embedding_pgd: loss() never ran {type(point).__name__}, the embedding point")
                delta = state["delta"]
                (grad,) = torch.autograd.grad(value, delta, allow_unused=True)
            if grad is None:  # the loss does not depend on the perturbed tokens
                grad = torch.zeros_like(delta)
            scale = state["scale"]
            grad = grad.float().nan_to_num_(0.0)
            step = step_size * scale * grad / _token_norms(grad).clamp_min(_TINY)
            state["delta"] = _project(delta.detach() + step, radius * scale).requires_grad_(True)
    finally:
        handle.remove()
    return state["delta"].detach()


# -- FreeLB's perturbation (Zhu et al. 2020, Algorithm 1; reference run_glue_freelb.py) ------------


def _sequence_norms(x: Tensor) -> Tensor:
    """Frobenius norm of each sequence's (T, D) block, (B, T, D) -> (B, 1, 1), in float32."""
    return torch.linalg.vector_norm(x.float(), dim=(1, 2), keepdim=True)


def freelb_init(shape: tuple[int, int, int], mask: Tensor, init_eps: float, *,
                device: torch.device | str | None = None) -> Tensor:
    """FreeLB's random start: uniform in [-1, 1] on the perturbable tokens, scaled by ``init_eps / sqrt(n * D)``.

    As ``run_glue_freelb.py`` (github.com/zhuchen03/FreeLB, huggingface-transformers/examples,
    ``adv_init_mag`` with ``norm_type == "l2"``): n is the number of perturbable tokens of the
    sequence, so the Frobenius norm of the start is about ``init_eps / sqrt(3)``. The reference
    masks with the attention mask (so [CLS] and [SEP] move too); ``mask`` here also excludes the
    special tokens.

    Args:
        shape: (B, T, D) of the embeddings.
        mask: bool (B, T), True where a token may be perturbed.
        init_eps: the reference's ``adv_init_mag``; 0 starts from zero.
        device: where to draw (global RNG of that device).

    Returns:
        (B, T, D) float32, zero where ``mask`` is False.
    """
    if init_eps == 0:
        return torch.zeros(shape, device=device)
    keep = mask.to(device=device, dtype=torch.float32)[..., None]
    delta = torch.empty(shape, device=device).uniform_(-1, 1) * keep
    dims = keep.sum((1, 2), keepdim=True) * shape[-1]
    return delta * init_eps / dims.clamp_min(1).sqrt()


def freelb_update(delta: Tensor, grad: Tensor, mask: Tensor, *, step_size: float, eps: float) -> Tensor:
    """One FreeLB ascent step: ``delta + step_size * g / ||g||_F``, then back into the Frobenius ball of radius ``eps``.

    Per sequence, as ``run_glue_freelb.py`` (``norm_type == "l2"``: ``adv_lr`` and ``adv_max_norm``;
    the ball is applied as there, by rescaling a sequence whose norm exceeds ``eps``). ``grad`` is
    zeroed outside ``mask`` first, so padding and special tokens never move.

    Args:
        delta: (B, T, D) current perturbation.
        grad: (B, T, D) gradient of the loss with respect to ``delta`` (any positive scale).
        mask: bool (B, T), True where a token may be perturbed.
        step_size: the reference's ``adv_lr``.
        eps: the reference's ``adv_max_norm``, > 0.

    Returns:
        The new perturbation (B, T, D), float32, detached.
    """
    grad = grad.detach().float().nan_to_num(0.0) * mask[..., None]
    delta = delta.detach().float() + step_size * grad / _sequence_norms(grad).clamp_min(1e-8)
    return delta * (eps / _sequence_norms(delta).clamp_min(_TINY)).clamp(max=1.0)
