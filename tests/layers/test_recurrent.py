"""gru_over_lengths: the numbers of a packed nn.GRU, step by step on the CPU, from the module's own parameters."""

import pytest
import torch

from research.layers.recurrent import _packed, _steps, gru_over_lengths


def _case(layers: int, bidirectional: bool, bias: bool, seed: int = 0):
    torch.manual_seed(seed)
    gru = torch.nn.GRU(5, 7, num_layers=layers, batch_first=True, bidirectional=bidirectional, bias=bias)
    lengths = torch.tensor([3, 6, 1, 6, 2, 5, 3, 1, 4])  # ties, a length-1 row, the longest not first
    inputs = torch.randn(len(lengths), 8, 5, requires_grad=True)  # padded wider than the longest sequence
    return gru, inputs, lengths


@pytest.mark.parametrize(("layers", "bidirectional", "bias"), [(1, True, True), (2, True, True), (3, False, True),
                                                               (2, True, False)])
def test_matches_a_packed_gru_in_value_and_gradient(layers, bidirectional, bias):
    gru, inputs, lengths = _case(layers, bidirectional, bias)
    results = []
    for run in (_packed, _steps):
        states, last = run(gru, inputs, lengths, True)
        loss = states.sin().sum() + last.cos().sum()  # every state and final state reaches the loss
        results.append((states, last, *torch.autograd.grad(loss, [inputs, *gru.parameters()])))
    assert results[1][0].shape == (9, 8, 7 * (1 + bidirectional))
    for ours, reference in zip(results[1], results[0]):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    assert results[1][0][0, 3:].abs().max() == 0  # zero beyond a sequence's length, as pad_packed_sequence


def test_final_states_only_on_request():
    gru, inputs, lengths = _case(2, True, True)
    states, last = gru_over_lengths(gru, inputs, lengths, outputs=False)
    assert states is None
    torch.testing.assert_close(last, _packed(gru, inputs, lengths, False)[1], rtol=1e-5, atol=1e-6)


def test_padding_is_never_read():
    gru, inputs, lengths = _case(2, True, True)
    garbage = inputs.detach().clone()
    for row, n in enumerate(lengths):
        garbage[row, n:] = 1e3
    for a, b in zip(gru_over_lengths(gru, inputs, lengths), gru_over_lengths(gru, garbage, lengths)):
        torch.testing.assert_close(a, b)


def test_dropout_between_layers_in_training_only():
    gru, inputs, lengths = _case(2, True, True)
    gru.dropout = 0.5
    gru.eval()
    torch.testing.assert_close(gru_over_lengths(gru, inputs, lengths)[1], _packed(gru, inputs, lengths, False)[1],
                               rtol=1e-5, atol=1e-6)
    gru.train()
    first_layer = slice(0, 2)  # layer 0 reads the inputs, which nn.GRU never drops
    a, b = gru_over_lengths(gru, inputs, lengths)[1], gru_over_lengths(gru, inputs, lengths)[1]
    torch.testing.assert_close(a[first_layer], b[first_layer])
    assert not torch.allclose(a[2:], b[2:])


def test_refuses_a_time_major_gru():
    gru = torch.nn.GRU(5, 7)
    with pytest.raises(ValueError, match="batch_first=True"):
        gru_over_lengths(gru, torch.randn(2, 3, 5), torch.tensor([3, 2]))
