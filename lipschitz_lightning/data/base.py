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

import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lipschitz_lightning.math.bounds import LOSSES



class DatasetNotFoundError(RuntimeError):
    """The dataset is not on disk and could not be downloaded; the message says what to put where."""


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


class ImageTensorDataset(Dataset):
    """In-memory uint8 images with preprocessing and optional augmentation per sample.

    A sample is ``(x - mean) / 255`` as float32, where ``mean`` is the per-channel mean in raw
    pixel units (0 when not given, i.e. plain ``/255`` scaling). Several views (augmented
    training set, probe set) can share one image tensor without copies.

    Args:
        images: ``uint8`` tensor ``(N, C, H, W)``.
        targets: ``int64`` tensor ``(N,)``.
        mean: Per-channel mean to subtract, in pixel units (0-255), or None.
        pil_transform: Augmentation applied to a PIL image before scaling (e.g. RandomAffine,
            which is faster on PIL than on tensors).
        transform: Augmentation applied to the scaled float tensor (e.g. RandomCrop, flips).

    Raises:
        ValueError: If shapes or dtypes do not match.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        mean: Sequence[float] | None = None,
        pil_transform: Callable[[Image.Image], Image.Image] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
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
        self.pil_transform = pil_transform
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.pil_transform is not None:
            array = image.permute(1, 2, 0).numpy()
            pil = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
            array = np.asarray(self.pil_transform(pil), dtype=np.uint8).reshape(array.shape)
            image = torch.from_numpy(array.copy()).permute(2, 0, 1)
        x = (image.to(torch.float32) - self.mean) / 255.0
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[index]


class BaseDataModule(pl.LightningDataModule):
    """Common arguments, checks and dataloaders of every datamodule in this package.

    Subclasses set ``input_shape``, ``num_outputs`` and ``loss`` in ``__init__`` and fill
    ``train_dataset``, ``probe_dataset`` and ``test_dataset`` in ``setup``.

    Args:
        data_dir: Folder holding (or receiving) the dataset files.
        batch_size: Samples per batch for every dataloader.
        num_workers: DataLoader worker processes (persistent when > 0).
        seed: Seed of the training shuffle order (and, where relevant, of splits / generation).
        pin_memory: Pin host memory in the dataloaders.
        shuffle: Shuffle the training split (False gives a fixed order, e.g. for tests).

    Raises:
        ValueError: If ``batch_size < 1`` or ``num_workers < 0``.
    """

    input_shape: tuple[int, ...]
    num_outputs: int
    loss: str

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
            raise ValueError(f"{name}: batch_size must be an int >= 1; got {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"{name}: num_workers must be an int >= 0; got {num_workers!r}")
        self.data_dir = str(data_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = int(seed)
        self.pin_memory = pin_memory
        self.shuffle = shuffle
        self.train_dataset: Dataset | None = None
        self.probe_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        # Own generator: the shuffle order depends on `seed` only, and advances epoch to epoch.
        self._shuffle_generator = torch.Generator().manual_seed(self.seed)

    def __getstate__(self) -> dict[str, Any]:
        # torch.Generator does not pickle, and ddp_spawn pickles the datamodule into each process;
        # plain bytes rather than a tensor, which spawn would try to pass through shared memory.
        state = self.__dict__.copy()
        state["_shuffle_generator"] = self._shuffle_generator.get_state().numpy().tobytes()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator_state = state.pop("_shuffle_generator")
        self.__dict__.update(state)
        self._shuffle_generator = torch.Generator()
        self._shuffle_generator.set_state(torch.frombuffer(bytearray(generator_state), dtype=torch.uint8))

    def _loader(self, dataset: Dataset | None, split: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for the {split} dataloader")
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0:
            kwargs["persistent_workers"] = True
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=self._shuffle_generator if shuffle else None,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        """Training split, augmented, shuffled unless ``shuffle=False``."""
        return self._loader(self.train_dataset, "train", self.shuffle)

    def val_dataloader(self) -> DataLoader:
        """The test split (the paper reports test accuracy as "validation accuracy")."""
        return self._loader(self.test_dataset, "val", False)

    def test_dataloader(self) -> DataLoader:
        """The test split."""
        return self._loader(self.test_dataset, "test", False)

    def probe_dataloader(self) -> DataLoader:
        """Training split without augmentation and without shuffling, same batch size."""
        return self._loader(self.probe_dataset, "probe", False)


def class_targets(labels: np.ndarray | torch.Tensor, loss: str) -> torch.Tensor:
    """Targets in the form the loss expects.

    Args:
        labels: Class indices or regression values, shape ``(N,)``.
        loss: ``"softmax_ce"`` gives int64 ``(N,)``; ``"bce"`` and ``"mse"`` float32 ``(N, 1)``.

    Raises:
        ValueError: On an unknown loss name.
    """
    tensor = torch.as_tensor(np.asarray(labels))
    if loss == "softmax_ce":
        return tensor.to(torch.int64)
    if loss in ("bce", "mse"):
        return tensor.to(torch.float32).reshape(-1, 1)
    raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
