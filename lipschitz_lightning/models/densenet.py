"""DenseNet for CIFAR (Huang, Liu, van der Maaten, Weinberger, "Densely Connected Convolutional
Networks", CVPR 2017): the basic (no bottleneck, no compression) L=40, k=12 network the
LipschitzLR paper trained on CIFAR-10 and CIFAR-100 (section 7.3, Table 3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lipschitz_lightning.models._common import LOSSES, check_image_shape, check_num_outputs, he_normal_conv_init


class DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3(growth_rate) [-Dropout]; its output is concatenated to its input.

    Args:
        in_channels: Input channels.
        growth_rate: New channels produced (k).
        dropout: Dropout probability after the conv (0 disables it).
    """

    def __init__(self, in_channels: int, growth_rate: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, growth_rate, 3, padding=1, bias=False),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.layers(x)], dim=1)


class Transition(nn.Sequential):
    """BN-ReLU-Conv1x1 (same channels: no compression) [-Dropout]-AvgPool2."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.AvgPool2d(2),
        )


class DenseNet(nn.Module):
    """Basic CIFAR DenseNet: conv3x3(16), three dense blocks of ``(depth - 4) / 3`` layers
    joined by transitions, final BN-ReLU, global average pooling, head Linear.

    DenseNet-40 (k=12) has 1,019,722 trainable parameters for ``(3, 32, 32)`` and 10 outputs
    (Huang et al. report 1.0M); the head sees ``16 + 3 * 12 * 12 = 448`` features.

    Args:
        input_shape: ``(C, H, W)``; H and W must be at least 4 (two 2x2 average pools).
        num_outputs: Head size.
        depth: Total depth ``3n + 4`` (40, 100, ...).
        growth_rate: Channels added by each dense layer (k).
        dropout: Dropout after each conv, as Huang et al. use without augmentation (default 0).

    Raises:
        ValueError: On a non-image shape or one smaller than 4x4, ``num_outputs < 1``, a depth
            not of the form 3n+4, ``growth_rate < 1`` or dropout outside [0, 1).
    """

    supported_losses: tuple[str, ...] = LOSSES

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        depth: int = 40,
        growth_rate: int = 12,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels, height, width = check_image_shape("DenseNet", input_shape)
        if height < 4 or width < 4:
            raise ValueError(
                f"DenseNet needs images of at least 4x4 (two 2x2 average-pool transitions); "
                f"got input_shape {tuple(input_shape)!r}"
            )
        check_num_outputs("DenseNet", num_outputs)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 7 or (depth - 4) % 3 != 0:
            raise ValueError(f"DenseNet depth must be 3n+4 with n >= 1 (40, 100, ...); got {depth!r}")
        if isinstance(growth_rate, bool) or not isinstance(growth_rate, int) or growth_rate < 1:
            raise ValueError(f"DenseNet growth_rate must be an int >= 1; got {growth_rate!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"DenseNet dropout must be in [0, 1); got {dropout!r}")
        layers_per_block = (depth - 4) // 3
        num_channels = 16
        layers: list[nn.Module] = [nn.Conv2d(channels, num_channels, 3, padding=1, bias=False)]
        for block in range(3):
            for _ in range(layers_per_block):
                layers.append(DenseLayer(num_channels, growth_rate, dropout))
                num_channels += growth_rate
            if block < 2:
                layers.append(Transition(num_channels, dropout))
        layers += [
            nn.BatchNorm2d(num_channels),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(num_channels, num_outputs)
        he_normal_conv_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch, num_outputs)``."""
        return self.head(self.features(x))
