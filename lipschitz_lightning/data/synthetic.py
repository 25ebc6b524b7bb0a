"""Generated, learnable data for tests and smoke runs (no files)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from lipschitz_lightning.data.base import BaseDataModule
from lipschitz_lightning.math.losses import get_loss


class SyntheticDataModule(BaseDataModule):
    """Gaussian clusters (classification) or a noisy linear target (regression), seeded.

    Classification: each class has a prototype (for images, smooth: drawn on a grid 4x coarser
    and upsampled, so convolutional nets can pick it up) and a sample is its class prototype plus
    ``noise_std`` Gaussian noise; classes are balanced. ``softmax_ce`` uses ``num_classes``
    classes and int64 targets; ``bce`` uses two classes and float targets 0/1 of shape
    ``(N, 1)`` (``num_classes`` is ignored). ``mse``: ``x ~ N(0, 1)``,
    ``y = x . w / sqrt(d) + 0.1 * noise``, shape ``(N, 1)``. Train and test share prototypes
    (or ``w``) and differ in samples. The same ``seed`` gives the same tensors.

    Args:
        input_shape: Per-sample shape, ``(C, H, W)`` or ``(features,)``.
        num_classes: Classes for ``softmax_ce`` (>= 2).
        num_train: Training samples.
        num_test: Test samples.
        loss: ``"softmax_ce"``, ``"bce"`` or ``"mse"``.
        noise_std: Standard deviation of the per-feature noise around the class prototypes.
        data_dir: Unused; kept for a uniform signature.
        batch_size: Samples per batch.
        num_workers: DataLoader workers.
        seed: Seed of the generated data and of the shuffle order.
        pin_memory: Pin host memory.
        shuffle: Shuffle the training split.

    Raises:
        ValueError: On a bad shape, loss, class count, sample count or noise level.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        num_train: int = 512,
        num_test: int = 128,
        loss: str = "softmax_ce",
        noise_std: float = 1.0,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
        shuffle: bool = True,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, seed, pin_memory, shuffle)
        shape = tuple(input_shape)
        if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
            raise ValueError(f"SyntheticDataModule: input_shape must be positive ints; got {input_shape!r}")
        spec = get_loss(loss, "SyntheticDataModule")
        if spec.output_per_class and (not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(f"SyntheticDataModule: num_classes must be >= 2 for {loss}; got {num_classes!r}")
        for arg, value in (("num_train", num_train), ("num_test", num_test)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SyntheticDataModule: {arg} must be an int >= 1; got {value!r}")
        if noise_std < 0:
            raise ValueError(f"SyntheticDataModule: noise_std must be >= 0; got {noise_std!r}")
        self.input_shape: tuple[int, ...] = shape
        self.loss = loss
        self.num_classes = spec.num_classes(num_classes)
        self.num_outputs = spec.num_outputs(num_classes)
        self.num_train = num_train
        self.num_test = num_test
        self.noise_std = float(noise_std)

    def _prototypes(self, generator: torch.Generator) -> torch.Tensor:
        shape = self.input_shape
        if len(shape) == 3 and shape[1] > 1 and shape[2] > 1:
            coarse = (math.ceil(shape[1] / 4), math.ceil(shape[2] / 4))
            grid = torch.randn(self.num_classes, shape[0], *coarse, generator=generator)
            return F.interpolate(grid, size=shape[1:], mode="nearest")
        return torch.randn(self.num_classes, *shape, generator=generator)

    def generate(self) -> tuple[TensorDataset, TensorDataset]:
        """Return ``(train, test)`` datasets; a pure function of the arguments and ``seed``."""
        generator = torch.Generator().manual_seed(self.seed)
        sizes = (self.num_train, self.num_test)
        spec = get_loss(self.loss)
        if not spec.is_classification:
            dim = math.prod(self.input_shape)
            weight = torch.randn(dim, generator=generator) / math.sqrt(dim)
            splits = []
            for n in sizes:
                x = torch.randn(n, *self.input_shape, generator=generator)
                y = x.reshape(n, -1) @ weight + 0.1 * torch.randn(n, generator=generator)
                splits.append(TensorDataset(x, y.reshape(n, 1)))
            return splits[0], splits[1]
        prototypes = self._prototypes(generator)
        splits = []
        for n in sizes:
            labels = torch.arange(n) % self.num_classes
            labels = labels[torch.randperm(n, generator=generator)]
            x = prototypes[labels] + self.noise_std * torch.randn(n, *self.input_shape, generator=generator)
            y = spec.targets(labels)
            splits.append(TensorDataset(x, y))
        return splits[0], splits[1]

    def setup(self, stage: str | None = None) -> None:
        """Generate the data (once)."""
        if self.train_dataset is not None:
            return
        self.train_dataset, self.test_dataset = self.generate()
        self.probe_dataset = self.train_dataset  # no augmentation
