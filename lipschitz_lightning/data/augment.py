"""The training augmentations, applied per batch (a batch function of ``(x, generator)``)."""

from __future__ import annotations

import torch


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """He et al.'s CIFAR augmentation on a batch: a random crop of the zero-padded image, then a
    horizontal flip with probability 1/2, drawn per sample from ``generator``."""
    batch, channels, height, width = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator)
    flips = torch.rand(batch, generator=generator) < 0.5
    rows = (offsets[:, 0:1] + torch.arange(height)).view(batch, 1, height, 1)
    cols = (offsets[:, 1:2] + torch.arange(width)).view(batch, 1, 1, width)
    cols = torch.where(flips.view(batch, 1, 1, 1), cols.flip(-1), cols)
    index = torch.arange(batch).view(batch, 1, 1, 1), torch.arange(channels).view(1, channels, 1, 1)
    return padded.to(x.device)[index[0], index[1], rows, cols]


def random_affine(
    x: torch.Tensor,
    generator: torch.Generator,
    degrees: float = 15.0,
    translate: float = 0.1,
    scale: tuple[float, float] = (0.9, 1.1),
) -> torch.Tensor:
    """Random rotation (+-``degrees``), shift (up to ``translate`` of the size) and zoom per sample,
    bilinear, zero fill: the paper's MNIST augmentation (Keras' ImageDataGenerator) on a batch."""
    batch = x.shape[0]
    uniform = torch.rand(batch, 4, generator=generator, dtype=torch.float64)
    angle = torch.deg2rad((uniform[:, 0] * 2 - 1) * degrees)
    zoom = scale[0] + uniform[:, 1] * (scale[1] - scale[0])
    shift = (uniform[:, 2:] * 2 - 1) * translate * 2  # affine_grid coordinates span 2 per image side
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid.to(x.device), mode="bilinear", padding_mode="zeros", align_corners=False)
