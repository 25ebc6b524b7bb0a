"""How the samples of a split reach a batch: the epoch-seeded training order, the resumable
loader and the in-memory image dataset. Everything random about the training data is a pure
function of (seed, epoch, batch), so an interrupted run resumes with exactly the data it would
have seen."""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from lipschitz_lightning.app.signals import workers_ignore_stop_signals


# Lightning's loop counters tell which epoch and which batch of it runs; everything random about
# the training data is a pure function of (seed, epoch, batch), so a run resumed from any
# checkpoint, with any number of workers or processes, sees exactly the data it would have seen.
def stream_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (splitmix64 steps): distinct tuples give unrelated streams."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value = (value ^ (value >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return value >> 1


class EpochShuffleSampler(RandomSampler):
    """A random order that depends on ``(seed, epoch)`` only; Lightning calls ``set_epoch``.

    A ``RandomSampler`` for Lightning: under DDP it puts its own ``DistributedSampler`` in its
    place, which is seeded by epoch the same way.
    """

    def __init__(self, data_source: Sized, seed: int) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch))
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose next iteration first skips ``skip_batches`` batches.

    Lightning resumes a checkpoint written mid-epoch by iterating the loader afresh for the
    batches that remain; skipping the finished ones makes them the same batches.
    """

    def __init__(self, *args: Any, skip_batches: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skip_batches = skip_batches

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing is drawn from the sampler before the first batch is asked for,
        # that is after Lightning's set_epoch (it creates the iterator of a resumed epoch before).
        skip, self.skip_batches = self.skip_batches, 0
        # Workers (started here) ignore SIGTERM and SIGINT: a scheduler, `timeout` or a terminal
        # signals the whole process group, and only this process stops the run (and then them).
        with workers_ignore_stop_signals(self):
            iterator = super().__iter__()
        for _ in range(skip):
            next(iterator)
        yield from iterator


class ImageTensorDataset(Dataset):
    """In-memory uint8 images, served as ``(x - mean) / 255`` float32 (no augmentation here).

    ``mean`` is the per-channel mean in raw pixel units (0 when not given: plain ``/255``).
    Several views (training set, probe set) can share one image tensor without copies. Training
    augmentation is applied per batch by the datamodule (:meth:`BaseDataModule.on_before_batch_transfer`).

    Args:
        images: ``uint8`` tensor ``(N, C, H, W)``.
        targets: ``int64`` tensor ``(N,)``.
        mean: Per-channel mean to subtract, in pixel units (0-255), or None.

    Raises:
        ValueError: If shapes or dtypes do not match.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, mean: Sequence[float] | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W); got {images.dtype} {tuple(images.shape)}")
        if targets.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {targets.shape[0]} targets")
        self.images = images
        self.targets = targets
        channels = images.shape[1]
        mean_values = [0.0] * channels if mean is None else [float(m) for m in mean]
        if len(mean_values) != channels:
            raise ValueError(f"mean has {len(mean_values)} entries for {channels} channels")
        self.mean = torch.tensor(mean_values, dtype=torch.float32).view(channels, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.images[index].to(torch.float32) - self.mean) / 255.0, self.targets[index]
