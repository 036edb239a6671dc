"""The token side of :class:`~research.callbacks.AdversarialTraining`: perturb input embeddings, not token ids.

Two recipes, both run inside the task's (wrapped) ``training_step``, where the strategy has opened
its autocast and, under DDP, the step's forward is in progress:

- ``pgd``: PGD in embedding space (:func:`research.attacks.embedding_pgd`): per-token L2 balls of
  radius ``eps`` times each token's clean embedding norm (Miyato, Dai & Goodfellow 2017,
  arXiv:1605.07725, made per token; see research/attacks/embedding.py). ``steps=1`` from zero is
  their one-step perturbation; more steps start at a random point of the ball (Madry et al. 2018).
  The objective is a config line (``objective``):

  - ``"adversarial"`` (Madry et al.): the task's own training step runs on the perturbed
    embeddings, so its ``train/loss`` is the adversarial loss;
  - ``"clean+adversarial"`` (Miyato et al. eq. 2 with their ``adv_reg_coeff`` = 1, the default of
    ``research/adversarial_text/train_classifier.py``): the task's step runs on the clean batch
    and ``adversarial_loss`` on the perturbed one is added; logged as ``train/adversarial_loss``.

  The attack's passes take gradients with respect to the perturbation only.
- ``freelb``: FreeLB (Zhu et al. 2020, arXiv:1909.11764, Algorithm 1; reference
  github.com/zhuchen03/FreeLB, ``huggingface-transformers/examples/run_glue_freelb.py``). K =
  ``steps`` forward/backward passes in train mode on embeddings + delta, each contributing the
  gradient of ``loss_k / K`` to the parameters; between passes delta moves by ``step_size``
  (``adv_lr``) along its Frobenius-normalised gradient and is rescaled into the Frobenius ball of
  radius ``eps`` (``adv_max_norm``) per sequence; it starts uniform of magnitude ``init_eps``
  (``adv_init_mag``) (:func:`~research.attacks.freelb_init`, :func:`~research.attacks.freelb_update`).

FreeLB under Lightning's automatic optimisation. Lightning zeroes the gradients after
``training_step`` and before its one backward (``loops/optimization/automatic.py``: the closure
runs the step, then ``zero_grad``, then ``backward``), so gradients accumulated inside the step
would be wiped, and a DDP reducer must see exactly one backward per step. Passes 1..K-1 therefore
take ``torch.autograd.grad(loss_k / K, params + [delta])`` (no ``AccumulateGrad``, so DDP's hooks
stay silent) and keep the parameter gradients; pass K is the task's own ``training_step`` on the
final delta, and the step returns ``loss_K / K + (s - s.detach())`` with
``s = sum_p (p * g_p).sum()``, g_p the kept gradients: its value is ``loss_K / K`` and the one
backward that Lightning runs gives ``grad(loss_K) / K + sum_k g_k``, the sum of all K passes'
gradients, which DDP's reducer all-reduces once. Dropout: the K passes of a step share their
dropout masks, as FreeLB's Sec. 3.2 prescribes (the reference threads ``dp_masks`` through a patched
model): each pass starts from the random-number state of the first (CPU and the accelerator's), so
the same dropout calls draw the same masks, for any model. Under FSDP2
(sharded parameters) ``torch.autograd.grad`` reaches the gathered, unsharded parameters and not the
sharded leaves, so the ascent passes' gradients would be lost: ``freelb`` stops there with one
line; ``pgd`` needs no parameter gradient and runs (2 gloo processes, 2 BERT-tiny MLM steps: the
same weights as under DDP, bit for bit; FreeLB's differed by 0.012 before this check).

Never perturbed: padding and special tokens (the task's ``perturbable_tokens``); FreeLB's
reference perturbs [CLS] and [SEP] too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from research.attacks import attack_mode, embedding_perturbation, embedding_pgd, freelb_init, freelb_update
from research.tasks.token_inputs import HOOKS, has_token_inputs

Objective = Literal["adversarial", "clean+adversarial"]
TOKEN_ATTACKS = ("pgd", "freelb")


def check_token_task(owner: str, pl_module: L.LightningModule, attack: str, include_position: bool) -> None:
    """Stop with one line when ``pl_module`` cannot be trained with ``attack`` on its token embeddings.

    Raises:
        ValueError: the task lacks the hooks, its model the EmbeddingInputs interface, or positions.
    """
    if not has_token_inputs(pl_module):
        raise ValueError(
            f"{owner}: inputs='tokens' (attack={attack!r}) needs a task with token inputs and the hooks {list(HOOKS)} "
            f"(MaskedLanguageModelling, SequenceClassification, Translation); {type(pl_module).__name__} has none"
        )
    if getattr(pl_module, "model", None) is None:  # built from the data's sizes at configure_model: checked later
        return
    if attack == "freelb" and any(isinstance(p, DTensor) for p in pl_module.parameters()):
        # torch.autograd.grad reaches FSDP2's unsharded parameters, not the sharded leaves: passes 1..K-1 would
        # add no gradient (measured: 34 of 34 parameter gradients None on 2 gloo processes)
        raise ValueError(f"{owner}: attack='freelb' cannot run on FSDP2-sharded parameters (its ascent passes' "
                         "gradients would be lost); use strategy 'ddp', or attack='pgd'")
    try:
        pl_module.embedding_point(include_position)
    except ValueError as error:
        raise ValueError(f"{owner}: {error}") from None


def check_token_norm(owner: str, norm: str | None) -> None:
    """Stop with one line on ``norm="linf"`` for token inputs, whose attacks are L2 (per token, or per sequence)."""
    if norm == "linf":
        raise ValueError(f"{owner}: norm='linf' does not apply to token inputs: embedding-space attacks are L2 "
                         "(per token for pgd, per sequence for freelb); remove norm")


def check_token_options(owner: str, attack: str, inputs: str, embeddings: str, init_eps: float | None,
                        objective: str | None, fraction: float, norm: str | None = None) -> None:
    """The constructor checks of AdversarialTraining's token options (those that need no task)."""
    if inputs not in ("auto", "images", "tokens"):
        raise ValueError(f"{owner}: unknown inputs {inputs!r}; choose 'auto', 'images' or 'tokens'")
    if embeddings not in ("token", "token+position"):
        raise ValueError(f"{owner}: unknown embeddings {embeddings!r}; choose 'token' or 'token+position'")
    if attack == "freelb" and inputs == "images":
        raise ValueError(f"{owner}: attack='freelb' perturbs token embeddings and has no image form; "
                         "use inputs='tokens' (or 'auto') on a text task")
    if inputs == "tokens" and attack not in TOKEN_ATTACKS:
        raise ValueError(f"{owner}: attack={attack!r} is an image recipe; on tokens use attack='pgd' or 'freelb'")
    if init_eps is not None and attack != "freelb":
        raise ValueError(f"{owner}: init_eps is an option of attack='freelb' only; remove it for {attack!r}")
    if init_eps is not None and not init_eps >= 0:
        raise ValueError(f"{owner}: init_eps must be >= 0 (FreeLB's adv_init_mag), got {init_eps}")
    if objective is not None and (attack != "pgd" or inputs == "images"):
        raise ValueError(f"{owner}: objective is an option of attack='pgd' on tokens only; remove it")
    if objective is not None and objective not in ("adversarial", "clean+adversarial"):
        raise ValueError(f"{owner}: unknown objective {objective!r}; choose 'adversarial' or 'clean+adversarial'")
    if inputs == "tokens" and fraction != 1:
        raise ValueError(f"{owner}: fraction is an image option; token attacks perturb every sequence")
    if inputs == "tokens" or attack == "freelb":
        check_token_norm(owner, norm)


def token_training(owner: str, options: Any, pl_module: L.LightningModule) -> EmbeddingTraining | None:
    """The token side for ``pl_module`` under AdversarialTraining ``options``, or None when its inputs are images.

    ``inputs="auto"`` picks tokens when the task has the token hooks. Stops with one line on a
    recipe that does not fit the task's input kind.
    """
    name = type(pl_module).__name__
    tokens = options.inputs == "tokens" or (options.inputs == "auto" and has_token_inputs(pl_module))
    if not tokens:
        if options.attack == "freelb":
            raise ValueError(f"{owner}: attack='freelb' needs token inputs, but {name} has none "
                             "(FreeLB perturbs token embeddings)")
        if options.objective is not None or options.embeddings != "token":
            raise ValueError(f"{owner}: objective and embeddings are token options; {name} has image inputs")
        return None
    if options.attack not in TOKEN_ATTACKS:
        raise ValueError(f"{owner}: attack={options.attack!r} is an image recipe, but {name} has token inputs; "
                         "use attack='pgd' or 'freelb'")
    if options.fraction != 1:
        raise ValueError(f"{owner}: fraction is an image option; token attacks perturb every sequence")
    check_token_norm(owner, options.norm_given)
    check_token_task(owner, pl_module, options.attack, include_position=False)
    return EmbeddingTraining(
        attack=options.attack, eps=options.eps, step_size=options.step_size, steps=options.steps,
        init_eps=options.init_eps or 0.0, objective=options.objective or "adversarial",
        include_position=options.embeddings == "token+position", attack_in_eval_mode=options.attack_in_eval_mode,
    )


class EmbeddingTraining:
    """Adversarial training on token embeddings: the wrapped ``training_step`` of ``AdversarialTraining``.

    Args:
        attack: "pgd" or "freelb".
        eps: pgd: radius relative to each token's embedding norm; freelb: the Frobenius radius per sequence.
        step_size: step at full ``eps`` (scaled with eps during warm-up), in the same units.
        steps: pgd: attack steps; freelb: K, the ascent passes (also the parameter-gradient passes).
        init_eps: freelb's random-start magnitude at full ``eps``.
        objective: pgd's objective (see the module docstring).
        include_position: perturb token + position embeddings instead of token embeddings.
        attack_in_eval_mode: pgd's attack passes in eval mode (dropout off); freelb's passes are
            training passes and always run in train mode.
    """

    def __init__(self, *, attack: str, eps: float, step_size: float, steps: int, init_eps: float,
                 objective: Objective, include_position: bool, attack_in_eval_mode: bool) -> None:
        self.attack, self.eps, self.step_size, self.steps = attack, eps, step_size, steps
        self.init_eps, self.objective, self.include_position = init_eps, objective, include_position
        self.attack_in_eval_mode = attack_in_eval_mode
        self.perturbed_batches = 0  # steps whose perturbation was non-zero: what tests and users can check

    def training_step(self, step: Callable, pl_module: L.LightningModule, batch: Any, eps: float, *args: Any,
                      **kwargs: Any) -> Any:
        """Run the task's ``step`` on the batch with its embeddings perturbed, returning what the step must return."""
        if eps == 0:  # warm-up: the task's own step
            return step(batch, *args, **kwargs)
        point = pl_module.embedding_point(self.include_position)
        mask = pl_module.perturbable_tokens(batch)
        scale = eps / self.eps
        if self.attack == "freelb":
            return self._freelb(step, pl_module, batch, point, mask, eps, scale, *args, **kwargs)
        with attack_mode(pl_module, eval_mode=self.attack_in_eval_mode):
            delta = embedding_pgd(lambda: pl_module.adversarial_loss(batch), point, mask, radius=eps,
                                  steps=self.steps, step_size=self.step_size * scale, random_start=self.steps > 1)
        self._record(pl_module, delta, mask)
        if self.objective == "adversarial":
            with embedding_perturbation(point, delta):
                return step(batch, *args, **kwargs)
        out = step(batch, *args, **kwargs)  # the clean loss, logged by the task
        with embedding_perturbation(point, delta):
            adversarial = pl_module.adversarial_loss(batch)
        pl_module.log("train/adversarial_loss", adversarial.detach(), batch_size=len(mask))
        return _add_to_loss(out, adversarial, pl_module)

    def _freelb(self, step: Callable, pl_module: L.LightningModule, batch: Any, point: torch.nn.Module,
                mask: Tensor, eps: float, scale: float, *args: Any, **kwargs: Any) -> Any:
        k = self.steps
        params = [p for p in pl_module.parameters() if p.requires_grad]
        width = pl_module.model.get_input_embeddings().embedding_dim
        delta = freelb_init((*mask.shape, width), mask, self.init_eps * scale, device=mask.device)
        kept: list[Tensor | None] = [None] * len(params)
        rng = _rng_state(mask.device)  # every pass draws the first pass's dropout masks (FreeLB Sec. 3.2)
        for _ in range(k - 1):
            _set_rng_state(rng)
            delta.requires_grad_(True)
            with embedding_perturbation(point, delta):
                loss = pl_module.adversarial_loss(batch)
            *grads, delta_grad = torch.autograd.grad(loss / k, [*params, delta], allow_unused=True)
            kept = [g if s is None else s if g is None else s + g for s, g in zip(kept, grads)]
            if delta_grad is None:
                delta_grad = torch.zeros_like(delta)
            delta = freelb_update(delta, delta_grad, mask, step_size=self.step_size * scale, eps=eps)
        self._record(pl_module, delta, mask)
        _set_rng_state(rng)
        with embedding_perturbation(point, delta.detach()):
            out = step(batch, *args, **kwargs)
        loss = out.get("loss") if isinstance(out, dict) else out
        if not isinstance(loss, Tensor):
            return out  # the task skipped the batch
        total = loss / k
        pairs = [(p, g) for p, g in zip(params, kept) if g is not None]
        if pairs:
            s = sum((p * g.to(p.dtype)).sum() for p, g in pairs)
            total = total + (s - s.detach()).to(total.dtype)  # value 0; gradient sum_k g_k
        return {**out, "loss": total} if isinstance(out, dict) else total

    def _record(self, pl_module: L.LightningModule, delta: Tensor, mask: Tensor) -> None:
        norms = delta.norm(dim=-1)
        if bool((norms > 0).any()):
            self.perturbed_batches += 1
        size, kept = len(mask), mask.float()
        pl_module.log("train/perturbed_tokens", kept.mean(), batch_size=size)
        # the mean over perturbable tokens, without boolean indexing (a host sync and a copy)
        pl_module.log("train/delta_norm", (norms * kept).sum() / kept.sum().clamp_min(1), batch_size=size)


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None, torch.device]:
    """The CPU generator's state and, on CUDA, the device's: what dropout draws from."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None, device


def _set_rng_state(state: tuple[Tensor, Tensor | None, torch.device]) -> None:
    cpu, accelerator, device = state
    torch.set_rng_state(cpu)
    if accelerator is not None:
        torch.cuda.set_rng_state(accelerator, device)


def _add_to_loss(out: Any, extra: Tensor, pl_module: L.LightningModule) -> Any:
    loss = out.get("loss") if isinstance(out, dict) else out
    if not isinstance(loss, Tensor):
        raise ValueError(
            f"AdversarialTraining: objective='clean+adversarial' needs a training_step that returns its loss; "
            f"{type(pl_module).__name__}.training_step returned {type(out).__name__}"
        )
    total = loss + extra.to(loss.dtype)
    return {**out, "loss": total} if isinstance(out, dict) else total
