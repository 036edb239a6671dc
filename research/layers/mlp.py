"""The transformer's position-wise feed-forward network (Vaswani et al. 2017, Sec. 3.3)."""

from __future__ import annotations

from torch import Tensor, nn


class Mlp(nn.Module):
    """Linear -> activation -> dropout -> linear -> dropout, with timm's names (``fc1``, ``fc2``).

    Args:
        in_features: input width C.
        hidden_features: hidden width (default ``in_features``; ViT uses 4C).
        out_features: output width (default ``in_features``).
        act_layer: activation class, instantiated without arguments.
        drop: dropout after the activation and after ``fc2`` (ViT paper, App. B.1: after every
            dense layer).

    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        *,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP to each token independently.

        Args:
            x: (..., in_features), e.g. (B, N, C).

        Returns:
            (..., out_features).

        """
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
