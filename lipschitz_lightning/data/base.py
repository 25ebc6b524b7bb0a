"""Shared pieces of the datamodules: the base class, in-memory image dataset and errors.

Contract relied on by the training app: right after ``__init__`` (no file access) a datamodule
has ``input_shape``, ``num_outputs`` (classes for multiclass, 1 for binary and regression),
``loss`` (``"softmax_ce"``, ``"bce"`` or ``"mse"``) and ``batch_size``. After ``setup``,
``train_dataloader`` (shuffled, augmented), ``val_dataloader`` and ``test_dataloader`` (both
the test split: the paper reports test accuracy as "validation") and ``probe_dataloader`` (the
training split without augmentation, not shuffled; used by the LipschitzLR "probe" mode) work.
Targets are int64 class indices for ``softmax_ce`` and float32 of shape ``(N, 1)`` otherwise.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
from collections.abc import Callable, Iterator, Sequence, Sized
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, RandomSampler

from lipschitz_lightning.app.signals import workers_ignore_stop_signals
from lipschitz_lightning.math.losses import get_loss


class DatasetNotFoundError(RuntimeError):
    """The dataset is not on disk and could not be downloaded; the message says what to put where."""


class SettingError(ValueError):
    """A datamodule argument with a value it cannot take: ``setting`` names the argument, ``value``
    is what it got (the application names its own config key in its message)."""

    def __init__(self, message: str, setting: str = "", value: Any = None) -> None:
        super().__init__(message)
        self.setting, self.value = setting, value


class DatasetCorruptError(RuntimeError):
    """A dataset file exists but fails its checksum or format check; the message names the file."""


def file_md5(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Return the hex md5 digest of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: str | os.PathLike[str], expected: str) -> None:
    """Check a file against its expected md5.

    Args:
        path: File to hash.
        expected: Expected hex digest.

    Raises:
        DatasetCorruptError: If the digest differs, naming the file and both digests.
    """
    actual = file_md5(path)
    if actual != expected:
        raise DatasetCorruptError(
            f"corrupt file: {path} (md5 {actual}, expected {expected}); delete it and download it again"
        )


#: The largest seed numpy (and so Lightning's ``seed_everything`` and scikit-learn) accepts.
MAX_SEED = 2**32 - 1

#: errno values of a write that failed because of the folder, not of the data being written.
WRITE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})


def ensure_data_dir(path: str | os.PathLike[str], dataset: str) -> None:
    """Create the data folder ``path`` if needed (before anything is downloaded or extracted into it).

    Raises:
        DatasetNotFoundError: If ``path`` (or a folder above it) is a file, or it cannot be created;
            the message names the path and the setting to change.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise DatasetNotFoundError(
            f"the {dataset} data folder {path} is a file, not a folder: set paths.data_dir (or dataset.data_dir) "
            "to the folder that holds the dataset, or to a new folder to put it in"
        )
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise DatasetNotFoundError(
            f"cannot create the {dataset} data folder {path} ({error.strerror}"
            f"{': ' + str(error.filename) if error.filename and str(error.filename) != path else ''}); "
            "set paths.data_dir (or dataset.data_dir) to a folder that exists or can be created"
        ) from error


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


class BaseDataModule(pl.LightningDataModule):
    """Common arguments, checks and dataloaders of every datamodule in this package.

    Subclasses set ``input_shape``, ``num_outputs`` and ``loss`` in ``__init__`` (and
    ``augmentation``, a batch function, where they augment) and fill ``train_dataset``,
    ``probe_dataset`` and ``test_dataset`` in ``setup``.

    Exact resume: the training order is a pure function of ``(seed, epoch)`` and the augmentation
    of ``(seed, epoch, batch, rank)``; :meth:`state_dict` adds how many batches of the current
    epoch had finished and the global random states (dropout), so a run resumed from
    ``last.ckpt`` or a mid-epoch ``on_exception.ckpt`` continues with exactly the data and the
    randomness of the uninterrupted run.

    Args:
        data_dir: Folder holding (or receiving) the dataset files.
        batch_size: Samples per batch for every dataloader.
        num_workers: DataLoader worker processes (persistent when > 0).
        seed: Seed of the training order and augmentation (and, where relevant, of splits / generation).
        pin_memory: Pin host memory in the dataloaders.
        shuffle: Shuffle the training split (False gives a fixed order, e.g. for tests).

    Raises:
        ValueError: If ``batch_size < 1`` or ``num_workers < 0``.
    """

    input_shape: tuple[int, ...]
    num_outputs: int
    loss: str
    augmentation: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SettingError(f"{name}: batch_size must be an int >= 1; got {batch_size!r}", "batch_size", batch_size)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"{name}: num_workers must be an int >= 0; got {num_workers!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            # numpy's and scikit-learn's generators (splits, generated data) take 0..2**32-1 only.
            raise SettingError(f"{name}: seed must be an integer from 0 to {MAX_SEED}; got {seed!r}", "seed", seed)
        self.data_dir = str(data_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = pin_memory
        self.shuffle = shuffle
        self.train_dataset: Dataset | None = None
        self.probe_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self._skip_batches = 0  # finished batches of a resumed epoch (from load_state_dict)

    def _loader(self, dataset: Dataset | None, split: str, **kwargs: Any) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for the {split} dataloader")
        workers = self.worker_count()
        if workers > 0:
            kwargs["persistent_workers"] = True
        # A generator of its own: creating the iterator then draws nothing from the global stream.
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=workers,
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(self.seed),
            **kwargs,
        )

    def worker_count(self) -> int:
        """``num_workers``, at most this process's share of the machine's cores (processes per
        machine: the trainer's devices), so a config made for a big machine does not oversubscribe a small one."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        processes = self.trainer.num_devices if self.trainer is not None else 1
        share = max(1, cores // max(1, processes))
        if self.num_workers > share and not getattr(self, "_said_workers", False):
            self._said_workers = True
            rank_zero_info(f"{type(self).__name__}: num_workers={self.num_workers} lowered to {share} "
                           f"({cores} cores, {processes} process(es) per machine)")
        return min(self.num_workers, share)

    def train_dataloader(self) -> DataLoader:
        """Training split, shuffled by epoch unless ``shuffle=False`` (augmented per batch)."""
        sampler = EpochShuffleSampler(self.train_dataset, self.seed) if self.shuffle and self.train_dataset else None
        skip, self._skip_batches = self._skip_batches, 0
        return self._loader(self.train_dataset, "train", sampler=sampler, skip_batches=skip)

    def val_dataloader(self) -> DataLoader:
        """The test split (the paper reports test accuracy as "validation accuracy")."""
        return self._loader(self.test_dataset, "val")

    def test_dataloader(self) -> DataLoader:
        """The test split."""
        return self._loader(self.test_dataset, "test")

    def probe_dataloader(self) -> DataLoader:
        """Training split without augmentation and without shuffling, same batch size."""
        return self._loader(self.probe_dataset, "probe")

    def augment_batch(self, x: torch.Tensor, epoch: int, batch: int, rank: int = 0) -> torch.Tensor:
        """The training augmentation of one batch: a pure function of ``(seed, epoch, batch, rank)``."""
        if self.augmentation is None:
            return x
        generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch, batch, rank))
        return self.augmentation(x, generator)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment training batches (only those of the training loop: not validation, not the probe)."""
        trainer = self.trainer
        if self.augmentation is None or trainer is None or not trainer.training:
            return batch
        # The batch's index in its epoch: Lightning counts it "ready" right after this hook.
        index = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        x = self.augment_batch(batch[0], trainer.current_epoch, index, trainer.global_rank)
        return (x, *batch[1:])

    # ------------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict[str, Any]:
        """The seed, the batch size and process count, the finished batches of an unfinished
        epoch, and the global random states."""
        trainer = self.trainer
        state: dict[str, Any] = {"seed": self.seed, "batches_done": 0, "rng": _rng_states(),
                                 "batch_size": self.batch_size,
                                 "world_size": int(trainer.world_size) if trainer is not None else 1}
        if trainer is not None and trainer.training:
            done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
            if done < trainer.num_training_batches:
                state["batches_done"] = int(done)
        return state

    def check_resume(self, state_dict: dict[str, Any], world_size: int | None = None) -> None:
        """Whether a checkpoint's datamodule state (:meth:`state_dict`) can continue in this run,
        checked before anything is written: the same seed, the same batch size and, when
        ``world_size`` is given, the same number of processes (each decides which samples the
        rest of the run sees, and the finished batches of an interrupted epoch). Keys an older
        checkpoint lacks are not checked.

        Raises:
            ValueError: naming the setting and the value to resume with.
        """
        seed = state_dict.get("seed", self.seed)
        if seed != self.seed:
            raise ValueError(f"it was trained with seed={seed}, this run has seed={self.seed}: resume with seed={seed}")
        batch_size = state_dict.get("batch_size", self.batch_size)
        if batch_size != self.batch_size:
            raise ValueError(f"it was trained with dataset.batch_size={batch_size}, this run has "
                             f"dataset.batch_size={self.batch_size}: resume with dataset.batch_size={batch_size}")
        saved = state_dict.get("world_size")
        if world_size is not None and saved is not None and int(saved) != int(world_size):
            raise ValueError(f"it was trained by {saved} process(es) (devices x nodes), this run has {world_size}: "
                             f"resume with the run's own trainer= and trainer.devices=")

    def check_checkpoint(self, checkpoint: dict[str, Any], world_size: int | None = None) -> None:
        """Whether a whole Lightning checkpoint continues in this run: :meth:`check_resume` of the
        state this class saved in it. A checkpoint of another datamodule class is checked by the
        seed of the datamodule state it holds (the training order and the augmentation follow it).

        Raises:
            ValueError: naming the setting and the value to resume with.
        """
        state = checkpoint.get(type(self).__qualname__)
        if isinstance(state, dict):
            self.check_resume(state, world_size=world_size)
            return
        for state in checkpoint.values():
            if isinstance(state, dict) and "batches_done" in state and state.get("seed", self.seed) != self.seed:
                self.check_resume({"seed": state["seed"]})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue where :meth:`state_dict` left off (older checkpoints: from the epoch's start).

        Raises:
            ValueError: If the checkpoint was written with another seed.
        """
        seed = state_dict.get("seed", self.seed)
        if seed != self.seed:
            raise ValueError(
                f"the checkpoint was trained with seed={seed}, this run has seed={self.seed}: "
                f"resume with seed={seed}, or start a new run"
            )
        self._skip_batches = int(state_dict.get("batches_done", 0))
        if "rng" in state_dict:
            _set_rng_states(state_dict["rng"])


def _rng_states() -> dict[str, Any]:
    # Plain values and tensors only: checkpoints load with torch.load(weights_only=True).
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, key, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def class_targets(labels: np.ndarray | torch.Tensor, loss: str) -> torch.Tensor:
    """Targets in the form the loss expects.

    Args:
        labels: Class indices or regression values, shape ``(N,)``.
        loss: ``"softmax_ce"`` gives int64 ``(N,)``; ``"bce"`` and ``"mse"`` float32 ``(N, 1)``.

    Raises:
        ValueError: On an unknown loss name.
    """
    return get_loss(loss).targets(labels)
