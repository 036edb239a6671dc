"""A ``torch.nn.GRU`` over right-padded sequences of different lengths, as a packed sequence would run it.

:func:`gru_over_lengths` gives what ``pack_padded_sequence`` -> ``nn.GRU`` -> ``pad_packed_sequence``
gives (the same numbers: tests/layers/test_recurrent.py compares outputs, final states and
gradients), with the module's own parameters, so state dicts are untouched:

- on an accelerator, exactly that call (cuDNN fuses the whole recurrence);
- on the CPU, the recurrence step by step (``torch.gru_cell``, the cell ``nn.GRU`` runs), over
  the batch sorted by length, step t on the sequences still running. torch's packed CPU kernel
  slices every step's input projection out of one (N, 3H) tensor of all N tokens, and the
  backward of each slice zero-fills and adds a gradient of that full size: O(T N H) work for T
  steps, most of a backward pass (profiled: 32 fills of (2305, 192) floats, over half the time
  of a 256-word batch's pass). Step by step, each gradient is the size of its step. An input
  gradient needs those buffers as much as a weight gradient does, so this is also what keeps an
  embedding-space attack pass cheaper than a training pass
  (benchmarks/embedding_adversarial_cost.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def gru_over_lengths(gru: nn.GRU, inputs: Tensor, lengths: Tensor, *,
                     outputs: bool = True) -> tuple[Tensor | None, Tensor]:
    """Run ``gru`` over each sequence's first ``lengths`` steps, as on a packed sequence.

    Args:
        gru: a ``batch_first`` ``nn.GRU`` (any layers, one or two directions, dropout between layers).
        inputs: (B, T, E) right-padded inputs; what lies beyond a sequence's length is never read.
        lengths: (B,) steps of each sequence, in [1, T], on any device.
        outputs: also return the per-step states (a classifier that reads the final states only
            skips assembling them).

    Returns:
        ``outputs`` (B, T, D * H): the last layer's state at each step, directions concatenated,
        zero beyond each length (as ``pad_packed_sequence(..., total_length=T)``); ``last``
        (num_layers * D, B, H): each layer and direction's final state (the forward direction at
        the sequence's last step, the backward one at its first), as ``nn.GRU`` returns it.
        ``outputs`` is None when not asked for.

    Raises:
        ValueError: ``gru`` is not batch_first.
    """
    if not gru.batch_first:
        raise ValueError("gru_over_lengths needs an nn.GRU built with batch_first=True")
    run = _steps if inputs.device.type == "cpu" else _packed
    return run(gru, inputs, lengths.cpu(), outputs)


def _packed(gru: nn.GRU, inputs: Tensor, lengths: Tensor, outputs: bool) -> tuple[Tensor | None, Tensor]:
    """``pack_padded_sequence`` -> ``gru`` -> ``pad_packed_sequence``."""
    states, last = gru(pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False))
    if not outputs:
        return None, last
    return pad_packed_sequence(states, batch_first=True, total_length=inputs.shape[1])[0], last


def _steps(gru: nn.GRU, inputs: Tensor, lengths: Tensor, outputs: bool) -> tuple[Tensor | None, Tensor]:
    """The packed recurrence step by step, on the batch sorted by length (see the module docstring)."""
    batch, width = inputs.shape[0], inputs.shape[1]
    order = lengths.argsort(descending=True, stable=True)
    sorted_lengths = lengths[order]
    running = (sorted_lengths[None] > torch.arange(int(sorted_lengths[0]))[:, None]).sum(1).tolist()  # per step
    steps = list(inputs[order, : len(running)].unbind(1))  # step t: the first running[t] rows are live
    finals = []
    for layer in range(gru.num_layers):
        if layer > 0 and gru.training and gru.dropout > 0:  # nn.GRU's dropout: on every layer's input but the first
            steps = [F.dropout(step, gru.dropout, training=True) for step in steps]
        directions = []
        for reverse in (False, True)[: 1 + gru.bidirectional]:
            suffix = f"_l{layer}{'_reverse' if reverse else ''}"
            weights = [getattr(gru, f"{name}{suffix}") if gru.bias or name.startswith("weight") else None
                       for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            states, last = _direction(steps, running, weights, gru.hidden_size, reverse)
            directions.append(states)
            finals.append(last)
        steps = [torch.cat(pair, -1) for pair in zip(*directions)] if gru.bidirectional else directions[0]
    restore = order.argsort().to(inputs.device)
    last = torch.stack(finals)[:, restore]
    if not outputs:
        return None, last
    states = torch.stack([F.pad(step, (0, 0, 0, batch - len(step))) for step in steps], 1)[restore]
    return F.pad(states, (0, 0, 0, width - len(steps))), last


def _direction(steps: list[Tensor], running: list[int], weights: list[Tensor | None], hidden: int,
               reverse: bool) -> tuple[list[Tensor], Tensor]:
    """One layer's one direction: its state at each step (running[t] rows) and each sequence's final state (B rows)."""
    states: list[Tensor] = [steps[0]] * len(steps)
    if not reverse:  # all sequences start at step 0; the shortest (last rows) stop first
        h, stopped = steps[0].new_zeros(running[0], hidden), []
        for t, n in enumerate(running):
            if n < len(h):
                stopped.append(h[n:])
                h = h[:n]
            h = states[t] = torch.gru_cell(steps[t][:n], h, *weights)
        return states, torch.cat([h, *reversed(stopped)])
    h = steps[0].new_zeros(0, hidden)  # each sequence starts at its own last step, from a zero state
    for t in reversed(range(len(steps))):
        n = running[t]
        if n > len(h):
            h = torch.cat([h, h.new_zeros(n - len(h), hidden)])
        h = states[t] = torch.gru_cell(steps[t][:n], h, *weights)
    return states, h
