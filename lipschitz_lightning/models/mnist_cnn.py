"""The custom MNIST CNN of the LipschitzLR paper (Yedida & Saha, Table 4)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lipschitz_lightning.models._common import LOSSES, check_image_shape, check_num_outputs, he_normal_conv_init

# Two valid 3x3 convs shrink each side by 4, then two 2x2 max-pools must leave at least 1 pixel.
_MIN_SIDE = 8


class MnistCNN(nn.Module):
    """CNN of Table 4 (section 7.3.1), the paper's "custom" MNIST architecture.

    Conv3x3(32, valid)-ReLU, Conv3x3(32, valid)-ReLU, MaxPool2, Dropout(0.2),
    Conv3x3(64, same)-ReLU, Conv3x3(64, same)-ReLU, MaxPool2, Dropout(0.25),
    Conv3x3(128, same)-ReLU, Dropout(0.25), Flatten, Linear(128)-ReLU, BatchNorm1d,
    Dropout(0.25), head Linear(num_outputs). No softmax: ``forward`` returns logits.

    For ``(1, 28, 28)`` inputs and 10 outputs it has 730,346 trainable parameters (the paper's
    "730K"; Keras would report 730,602 because it also counts the 256 BatchNorm running stats).

    BatchNorm normalizes a training batch by its own mean and variance, so the training app
    refuses ``batch_size=1`` (:attr:`min_batch_size`). A last, partial batch of one sample (the
    dataset size, or a DDP rank's share, is one more than a multiple of the batch size) has no
    batch statistics either: it is normalized with the running statistics, as in evaluation, and
    leaves them as they are (PyTorch's BatchNorm would stop the run; Keras' would turn the sample
    into a constant).

    Args:
        input_shape: ``(C, H, W)``; H and W must be at least 8 (two valid convs, two pools).
        num_outputs: Head size.

    Raises:
        ValueError: On a non-image shape, an image smaller than 8x8 or ``num_outputs < 1``.
    """

    supported_losses: tuple[str, ...] = LOSSES
    #: Smallest ``batch_size`` it trains with (checked by the training app before anything is built).
    min_batch_size = 2
    min_batch_size_reason = "its BatchNorm normalizes each training batch by the batch's own mean and variance"

    def __init__(self, input_shape: Sequence[int], num_outputs: int) -> None:
        super().__init__()
        channels, height, width = check_image_shape("MnistCNN", input_shape)
        if height < _MIN_SIDE or width < _MIN_SIDE:
            raise ValueError(
                f"MnistCNN needs images of at least {_MIN_SIDE}x{_MIN_SIDE} (two valid 3x3 convs and "
                f"two 2x2 max-pools); got input_shape {tuple(input_shape)!r}"
            )
        check_num_outputs("MnistCNN", num_outputs)
        out_h = (height - 4) // 2 // 2
        out_w = (width - 4) // 2 // 2
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Dropout(0.2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Dropout(0.25),
            nn.Flatten(),
            nn.Linear(128 * out_h * out_w, 128),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(128),
            nn.Dropout(0.25),
        )
        self.head = nn.Linear(128, num_outputs)
        he_normal_conv_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch, num_outputs)``."""
        if not (self.training and x.shape[0] == 1):
            return self.head(self.features(x))
        for layer in self.features:
            if isinstance(layer, nn.BatchNorm1d):  # one sample: no batch statistics to normalize with
                x = nn.functional.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias,
                                             training=False, eps=layer.eps)
            else:
                x = layer(x)
        return self.head(x)
