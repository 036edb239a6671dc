"""A multilayer perceptron for regression: linear layers with a non-linearity between them.

By the universal approximation theorem (Cybenko 1989; Hornik et al. 1989) one hidden layer of
enough sigmoidal units fits any continuous function on a compact interval; two narrower layers
fit smooth curves such as sin x on [-2 pi, 2 pi] with far fewer units in practice. The output
layer is linear (no activation), so predictions are unbounded real numbers.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from torch import Tensor, nn

from research.models.registry import register_model

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
}


class MLPRegressor(nn.Module):
    """Linear -> activation, repeated per hidden layer, then a linear output layer.

    Args:
        in_features: input width.
        hidden_sizes: width of each hidden layer, in order; empty gives linear regression.
        activation: a name in :data:`ACTIVATIONS` ("tanh", "relu", "gelu", "silu", "sigmoid", "elu").
        out_features: output width.

    """

    def __init__(
        self,
        *,
        in_features: int = 1,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        out_features: int = 1,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            close = difflib.get_close_matches(activation, ACTIVATIONS, n=2, cutoff=0.5)
            hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
            raise ValueError(f"unknown activation {activation!r}; {hint}choose one of {sorted(ACTIVATIONS)}")
        widths = [in_features, *hidden_sizes, out_features]
        if min(widths) < 1:
            raise ValueError(
                f"every width must be >= 1, got in_features={in_features}, hidden_sizes={list(hidden_sizes)}, "
                f"out_features={out_features}"
            )
        self.in_features, self.out_features = in_features, out_features
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(widths) - 2:  # no activation after the output layer
                layers.append(ACTIVATIONS[activation]())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Predictions for a batch of inputs.

        Args:
            x: (B, in_features).

        Returns:
            (B, out_features).

        """
        if x.ndim != 2 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"expected inputs of shape (B, {self.in_features}), got {tuple(x.shape)}; "
                "a 1-D batch of scalars needs x[:, None]"
            )
        return self.layers(x)


@register_model
def mlp_regressor(**kwargs) -> MLPRegressor:
    """An MLP regressor; the defaults (1 -> 64 -> 64 -> 1, tanh) fit sin x on [-2 pi, 2 pi]."""
    return MLPRegressor(**kwargs)
