"""Classical models of the paper's section 7.1: one linear layer on flattened input.

The loss (and thus the Lipschitz bound) is what tells them apart: multiple linear regression
(least squares), logistic regression (sigmoid + binary cross-entropy) and softmax regression
(softmax + cross-entropy). ``forward`` returns the raw linear output in every case.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lipschitz_lightning.models._common import check_num_outputs, check_shape, flat_size


class _LinearModel(nn.Module):
    """Flatten, then a single ``nn.Linear`` head (no hidden layers)."""

    supported_losses: tuple[str, ...] = ()

    def __init__(self, name: str, input_shape: Sequence[int], num_outputs: int) -> None:
        super().__init__()
        shape = check_shape(name, input_shape)
        check_num_outputs(name, num_outputs)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(flat_size(shape), num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return raw outputs of shape ``(batch, num_outputs)``."""
        return self.head(self.flatten(x))


class LinearRegression(_LinearModel):
    """Multiple linear regression trained with least squares (``"mse"``); ``d * k + k`` parameters.

    Args:
        input_shape: Per-sample input shape (flattened to d features).
        num_outputs: Number of regression targets k.

    Raises:
        ValueError: On a bad shape or ``num_outputs < 1``.
    """

    supported_losses: tuple[str, ...] = ("mse",)

    def __init__(self, input_shape: Sequence[int], num_outputs: int = 1) -> None:
        super().__init__("LinearRegression", input_shape, num_outputs)


class LogisticRegression(_LinearModel):
    """Binary logistic regression (``"bce"``): one logit per sample; ``d + 1`` parameters.

    Args:
        input_shape: Per-sample input shape (flattened to d features).
        num_outputs: Must be 1 (the logit of the positive class).

    Raises:
        ValueError: On a bad shape or ``num_outputs != 1``.
    """

    supported_losses: tuple[str, ...] = ("bce",)

    def __init__(self, input_shape: Sequence[int], num_outputs: int = 1) -> None:
        if num_outputs != 1 or isinstance(num_outputs, bool):
            raise ValueError(
                f"LogisticRegression is binary and needs num_outputs == 1; got {num_outputs!r} "
                "(use SoftmaxRegression for several classes)"
            )
        super().__init__("LogisticRegression", input_shape, num_outputs)


class SoftmaxRegression(_LinearModel):
    """Multinomial (softmax) regression (``"softmax_ce"``): one logit per class; ``d * k + k``
    parameters (7,850 for MNIST's 784 pixels and 10 classes).

    Args:
        input_shape: Per-sample input shape (flattened to d features).
        num_outputs: Number of classes k >= 2.

    Raises:
        ValueError: On a bad shape or ``num_outputs < 2``.
    """

    supported_losses: tuple[str, ...] = ("softmax_ce",)

    def __init__(self, input_shape: Sequence[int], num_outputs: int) -> None:
        if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 2:
            raise ValueError(
                f"SoftmaxRegression needs num_outputs >= 2 classes; got {num_outputs!r} "
                "(use LogisticRegression for a binary problem)"
            )
        super().__init__("SoftmaxRegression", input_shape, num_outputs)
