"""The base class of the datamodules, and the contract every datamodule keeps.

Contract relied on by the training app: right after ``__init__`` (no file access) a datamodule
has ``input_shape``, ``num_outputs`` (classes for multiclass, 1 for binary and regression),
``loss`` (``"softmax_ce"``, ``"bce"`` or ``"mse"``) and ``batch_size``. After ``setup``,
``train_dataloader`` (shuffled, augmented), ``val_dataloader`` and ``test_dataloader`` (both
the test split: the paper reports test accuracy as "validation") and ``probe_dataloader`` (the
training split without augmentation, not shuffled; used by the LipschitzLR "probe" mode) work.
Targets are int64 class indices for ``softmax_ce`` and float32 of shape ``(N, 1)`` otherwise.

The errors and argument checks live in :mod:`~lipschitz_lightning.data.checks`, the training
order, loader and image dataset in :mod:`~lipschitz_lightning.data.loading`, the augmentations in
:mod:`~lipschitz_lightning.data.augment`; their names are importable from here as before.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from lipschitz_lightning.data.augment import random_affine, random_crop_flip
from lipschitz_lightning.data.checks import (
    MAX_SEED,
    WRITE_ERRNOS,
    DatasetCorruptError,
    DatasetNotFoundError,
    SettingError,
    ensure_data_dir,
    file_md5,
    verify_md5,
)
from lipschitz_lightning.data.loading import EpochShuffleSampler, ImageTensorDataset, ResumableDataLoader, stream_seed
from lipschitz_lightning.math.losses import get_loss

__all__ = [
    "MAX_SEED",
    "WRITE_ERRNOS",
    "BaseDataModule",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "EpochShuffleSampler",
    "ImageTensorDataset",
    "ResumableDataLoader",
    "SettingError",
    "class_targets",
    "ensure_data_dir",
    "file_md5",
    "random_affine",
    "random_crop_flip",
    "stream_seed",
    "verify_md5",
]


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
