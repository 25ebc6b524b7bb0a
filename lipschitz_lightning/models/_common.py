"""Argument checks and initialisation shared by the model classes.

Every model follows one contract (relied on by the training app and the LipschitzLR callback):
``__init__(input_shape, num_outputs, **specific)``; the last module in ``.modules()`` order is
the final :class:`torch.nn.Linear`, exposed as ``self.head``, whose input is the flattened (or
globally pooled) penultimate activation; ``forward`` returns raw outputs of shape
``(batch, num_outputs)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from lipschitz_lightning.math.losses import LOSSES as _REGISTRY

LOSSES: tuple[str, ...] = tuple(_REGISTRY)  # the models import it from here



def check_num_outputs(model: str, num_outputs: int) -> int:
    """Return ``num_outputs`` as an int after checking that it is at least 1.

    Args:
        model: Model name used in the error message.
        num_outputs: Requested head size.

    Raises:
        ValueError: If ``num_outputs`` is not an integer >= 1.
    """
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
        raise ValueError(f"{model} needs num_outputs >= 1 (an int); got {num_outputs!r}")
    return num_outputs


def check_shape(model: str, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Return ``input_shape`` as a tuple of positive ints.

    Args:
        model: Model name used in the error message.
        input_shape: Per-sample input shape, without the batch dimension.

    Raises:
        ValueError: If the shape is empty or has a non-positive / non-integer entry.
    """
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ValueError(f"{model} needs input_shape as a sequence of ints; got {input_shape!r}") from None
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"{model} needs input_shape of positive ints; got input_shape {shape!r}")
    return shape


def check_image_shape(model: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Return ``input_shape`` as ``(C, H, W)`` after checking it is an image shape.

    Args:
        model: Model name used in the error message.
        input_shape: Per-sample input shape.

    Raises:
        ValueError: If the shape is not 3-D ``(C, H, W)`` of positive ints.
    """
    shape = check_shape(model, input_shape)
    if len(shape) != 3:
        raise ValueError(f"{model} needs image input (C, H, W); got input_shape {shape!r}")
    return shape  # type: ignore[return-value]


def flat_size(input_shape: Sequence[int]) -> int:
    """Number of features after flattening one sample of ``input_shape``."""
    return math.prod(input_shape)


def he_normal_conv_init(module: nn.Module) -> None:
    """Kaiming (He) normal init, fan-in, for every conv in ``module`` (Keras ``he_normal``).

    Conv biases (where present) start at zero; BatchNorm keeps weight 1, bias 0; Linear layers
    keep PyTorch's default init.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
