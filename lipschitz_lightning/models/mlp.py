"""Fully connected network on flattened input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lipschitz_lightning.models._common import LOSSES, check_num_outputs, check_shape, flat_size


class MLP(nn.Module):
    """Flatten, then ``Linear-ReLU[-Dropout]`` per hidden size, then head Linear.

    Accepts any input shape (tabular ``(features,)`` or images ``(C, H, W)``). With the
    defaults on ``(1, 28, 28)`` / 10 outputs it has 101,770 parameters.

    Args:
        input_shape: Per-sample input shape; flattened to ``prod(input_shape)`` features.
        num_outputs: Head size.
        hidden_sizes: Width of each hidden layer; empty gives a single linear layer.
        dropout: Dropout probability after each hidden ReLU (0 disables it).

    Raises:
        ValueError: On a bad shape, ``num_outputs < 1``, a hidden size < 1 or dropout outside
            [0, 1).
    """

    supported_losses: tuple[str, ...] = LOSSES

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        hidden_sizes: Sequence[int] = (128,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        shape = check_shape("MLP", input_shape)
        check_num_outputs("MLP", num_outputs)
        sizes = tuple(hidden_sizes)
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in sizes):
            raise ValueError(f"MLP hidden_sizes must be ints >= 1; got {sizes!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLP dropout must be in [0, 1); got {dropout!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        in_features = flat_size(shape)
        for hidden in sizes:
            layers += [nn.Linear(in_features, hidden), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_features = hidden
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_features, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return raw outputs of shape ``(batch, num_outputs)``."""
        return self.head(self.features(x))
