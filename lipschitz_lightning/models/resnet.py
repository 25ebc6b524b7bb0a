"""CIFAR residual networks: ResNet v1 (basic blocks) and pre-activation ResNet v2 (bottleneck).

References:
    He, Zhang, Ren, Sun. "Deep Residual Learning for Image Recognition", CVPR 2016 (v1).
    He, Zhang, Ren, Sun. "Identity Mappings in Deep Residual Networks", ECCV 2016 (v2).
    The LipschitzLR paper (section 7.4, Appendix A) trained the Keras CIFAR-10 ResNet example.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lipschitz_lightning.models._common import LOSSES, check_image_shape, check_num_outputs, he_normal_conv_init


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet v1 basic block: conv3x3-BN-ReLU-conv3x3-BN, add shortcut, ReLU.

    When the shape changes the shortcut is a strided 1x1 convolution. As in the Keras CIFAR-10
    ResNet example (``resnet_layer(..., kernel_size=1, activation=None,
    batch_normalization=False)``) that projection has a bias and no BatchNorm, unless
    ``shortcut_bn`` is set.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first conv (2 to downsample).
        shortcut_bn: Follow the projection shortcut with BatchNorm (torchvision style).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut_bn: bool = False) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            projection: list[nn.Module] = [
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=not shortcut_bn)
            ]
            if shortcut_bn:
                projection.append(nn.BatchNorm2d(out_channels))
            self.shortcut = nn.Sequential(*projection)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet v1 (He et al. 2016), e.g. ResNet20 as used for CIFAR-10 in the paper.

    Stem conv3x3(16)-BN-ReLU, three stages of ``n = (depth - 2) / 6`` basic blocks with 16, 32,
    64 channels (stages 2 and 3 start with stride 2), global average pooling, head Linear. Convs
    use Kaiming-normal (fan-in) init like the Keras example's ``he_normal``.

    Trainable parameters for ``(3, 32, 32)`` and 10 outputs: ResNet20 272,378 (0.27M), ResNet56
    855,674 (0.85M); with ``shortcut_bn=True`` 96 more (BN replaces the projection biases).

    Args:
        input_shape: ``(C, H, W)``.
        num_outputs: Head size.
        depth: Total depth ``6n + 2`` (20, 32, 44, 56, 110, ...).
        shortcut_bn: BatchNorm after the 1x1 projection shortcuts (the Keras example has none).

    Raises:
        ValueError: On a non-image shape, ``num_outputs < 1`` or a depth not of the form 6n+2.
    """

    supported_losses: tuple[str, ...] = LOSSES

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        depth: int = 20,
        shortcut_bn: bool = False,
    ) -> None:
        super().__init__()
        channels, _, _ = check_image_shape("ResNet", input_shape)
        check_num_outputs("ResNet", num_outputs)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"ResNet (v1) depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...); got {depth!r}")
        blocks_per_stage = (depth - 2) // 6
        layers: list[nn.Module] = [_conv3x3(channels, 16), nn.BatchNorm2d(16), nn.ReLU(inplace=True)]
        in_channels = 16
        for stage, width in enumerate((16, 32, 64)):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_channels, width, stride, shortcut_bn))
                in_channels = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_channels, num_outputs)
        he_normal_conv_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch, num_outputs)``."""
        return self.head(self.features(x))


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: [BN-ReLU]-conv1x1(w)-BN-ReLU-conv3x3(w, stride)-BN-ReLU-conv1x1(4w).

    The projection shortcut (first block of a stage) is a strided 1x1 conv applied to the
    pre-activated input, as in fb.resnet.torch ``preresnet.lua``. The very first block of the
    network skips its own BN-ReLU because the stem already ends with one (``preact=False``).

    Args:
        in_channels: Input channels.
        width: Bottleneck width; the block outputs ``4 * width`` channels.
        stride: Stride of the 3x3 conv.
        preact: Apply BN-ReLU to the input (False only right after the stem).
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, preact: bool = True) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.preact: nn.Module = (
            nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True)) if preact else nn.Identity()
        )
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            _conv3x3(width, width, stride),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out_channels, 1, bias=False),
        )
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.preact(x)
        # The identity path carries the raw input; a projection sees the pre-activated one.
        skip = x if self.shortcut is None else self.shortcut(activated)
        return self.residual(activated) + skip


class PreActResNet(nn.Module):
    """CIFAR pre-activation ResNet v2 with bottleneck blocks (He et al., "Identity Mappings").

    Stem conv3x3(16)-BN-ReLU, three stages of ``n = (depth - 2) / 9`` bottleneck blocks of
    width 16, 32, 64 (outputs 64, 128, 256 channels; stages 2 and 3 downsample), final
    BN-ReLU, global average pooling, head Linear. ResNet164 is the paper's CIFAR-100 network.

    Trainable parameters for ``(3, 32, 32)`` and 10 outputs: ResNet164 1,703,258 (1.7M, as He
    et al. report). Note: the Keras example the paper cites widens stages 2 and 3 (bottleneck
    width 64 and 128); this class follows He et al.

    Args:
        input_shape: ``(C, H, W)``.
        num_outputs: Head size.
        depth: Total depth ``9n + 2`` (29, 56, 110, 164, ...).

    Raises:
        ValueError: On a non-image shape, ``num_outputs < 1`` or a depth not of the form 9n+2.
    """

    supported_losses: tuple[str, ...] = LOSSES

    def __init__(self, input_shape: Sequence[int], num_outputs: int, depth: int = 164) -> None:
        super().__init__()
        channels, _, _ = check_image_shape("PreActResNet", input_shape)
        check_num_outputs("PreActResNet", num_outputs)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 11 or (depth - 2) % 9 != 0:
            raise ValueError(
                f"PreActResNet (v2, bottleneck) depth must be 9n+2 with n >= 1 (29, 56, 110, 164, ...); got {depth!r}"
            )
        blocks_per_stage = (depth - 2) // 9
        layers: list[nn.Module] = [_conv3x3(channels, 16), nn.BatchNorm2d(16), nn.ReLU(inplace=True)]
        in_channels = 16
        for stage, width in enumerate((16, 32, 64)):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                preact = not (stage == 0 and block == 0)
                layers.append(PreActBottleneck(in_channels, width, stride, preact))
                in_channels = width * PreActBottleneck.expansion
        layers += [
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_channels, num_outputs)
        he_normal_conv_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch, num_outputs)``."""
        return self.head(self.features(x))
