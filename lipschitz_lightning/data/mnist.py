"""MNIST datamodule (paper section 7.3.1)."""

from __future__ import annotations

import gzip
import math
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import torch
import torchvision
from pytorch_lightning.utilities import rank_zero_info

from lipschitz_lightning.data.base import (
    WRITE_ERRNOS,
    BaseDataModule,
    DatasetCorruptError,
    DatasetNotFoundError,
    ImageTensorDataset,
    ensure_data_dir,
    random_affine,
    verify_md5,
)

MNIST_FILES: tuple[str, ...] = tuple(name for name, _ in torchvision.datasets.MNIST.resources)
# Bytes per value of the idx format's type codes (third header byte).
_IDX_ITEM_BYTES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


def idx_problem(path: str | os.PathLike[str]) -> str | None:
    """What is wrong with an extracted idx file (``train-images-idx3-ubyte``, ...), or None.

    The header gives the type and every dimension, so the size of a whole file is known: a file
    cut short (an extraction or a copy that was interrupted) is found without reading it all.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        magic = handle.read(4)
        if len(magic) < 4 or magic[0] or magic[1] or magic[2] not in _IDX_ITEM_BYTES or not 1 <= magic[3] <= 4:
            return f"{size} bytes without an idx header" if size else "empty"
        raw_dims = handle.read(4 * magic[3])
    if len(raw_dims) < 4 * magic[3]:
        return f"truncated: {size} bytes, shorter than its own header"
    dims = [int.from_bytes(raw_dims[i : i + 4], "big") for i in range(0, len(raw_dims), 4)]
    expected = 4 + len(raw_dims) + math.prod(dims) * _IDX_ITEM_BYTES[magic[2]]
    if size < expected:
        return f"truncated: {size} of the {expected} bytes its header announces"
    if size > expected:
        return f"{size} bytes, {size - expected} more than its header announces"
    return None


class MNISTDataModule(BaseDataModule):
    """MNIST (10 classes, 60,000 train / 10,000 test 28x28 grey images) via torchvision.

    Pixels are scaled to [0, 1] (``/255``). Training augmentation is the paper's: random shifts
    up to 10%, zoom up to 10% and rotations up to 15 degrees (:func:`random_affine`, per batch).

    torchvision expects ``<data_dir>/MNIST/raw/`` to hold the four official ``.gz`` files (it
    extracts them beside themselves, so that folder must be writable) or the extracted files;
    otherwise it downloads them.

    Args:
        data_dir: Folder holding ``MNIST/raw/``.
        batch_size: Samples per batch (the paper used 256).
        num_workers: DataLoader workers.
        seed: Seed of the shuffle order.
        pin_memory: Pin host memory.
        shuffle: Shuffle the training split.
        augment: Apply the random affine augmentation to the training split.

    Raises:
        ValueError: On bad batch_size / num_workers.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
        shuffle: bool = True,
        augment: bool = True,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, seed, pin_memory, shuffle)
        self.input_shape: tuple[int, ...] = (1, 28, 28)
        self.num_outputs = 10
        self.loss = "softmax_ce"
        self.augment = augment
        self.augmentation = random_affine if augment else None

    def _missing_message(self) -> str:
        raw = os.path.join(os.path.abspath(self.data_dir), "MNIST", "raw")
        return (
            f"MNIST not found in {os.path.abspath(self.data_dir)} and it could not be downloaded or extracted "
            f"(no network, or a read-only folder?). Put the four files {', '.join(MNIST_FILES)} into {raw}/ "
            "(a writable copy: torchvision extracts them beside the .gz files)"
        )

    @property
    def raw_folder(self) -> Path:
        return Path(self.data_dir) / "MNIST" / "raw"

    def _check_files(self) -> bool:
        """Check every extracted file that is there against its header; extract the missing and
        the damaged ones from their ``.gz`` (md5-checked) beside them. True if all four are there.

        Raises:
            DatasetCorruptError: naming the damaged file (and its ``.gz`` if that fails its md5 too).
            DatasetNotFoundError: If an extraction cannot be written (read-only folder, full disk).
        """
        raw = self.raw_folder
        complete = True
        for url, md5 in torchvision.datasets.MNIST.resources:
            gz = raw / os.path.basename(url)
            target = raw / gz.stem
            problem = idx_problem(target) if target.is_file() else None
            if target.is_file() and problem is None:
                continue
            if not gz.is_file():
                if problem is not None:
                    raise DatasetCorruptError(
                        f"corrupt file: {target} ({problem}); delete it, and put {gz.name} into {raw}/ to have it "
                        "extracted again (or let the run download it)"
                    )
                complete = False
                continue
            try:
                verify_md5(gz, md5)  # a corrupt file is not a missing one
            except DatasetCorruptError as error:
                if problem is None:
                    raise
                raise DatasetCorruptError(
                    f"corrupt file: {target} ({problem}), and {gz.name} beside it fails its md5 too; delete both "
                    "and download them again"
                ) from error
            if problem is not None:
                rank_zero_info(f"MNIST: {target} is damaged ({problem}); extracting it again from {gz.name}")
            self._extract(gz, target)
        return complete

    def _extract(self, gz: Path, target: Path) -> None:
        """Decompress ``gz`` into a temporary file beside ``target``, then rename it into place: a
        reader (another run) sees the old file or the whole new one, never a part."""
        try:
            handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False)
        except OSError as error:
            raise self._unwritable(gz, error) from None
        try:
            with handle, gzip.open(gz, "rb") as source:
                shutil.copyfileobj(source, handle, 1 << 20)
            problem = idx_problem(handle.name)
            if problem is not None:
                raise DatasetCorruptError(f"corrupt file: {gz} (it extracts to a file that is {problem})")
            os.replace(handle.name, target)
        except OSError as error:
            if error.errno in WRITE_ERRNOS:
                raise self._unwritable(gz, error) from None
            raise DatasetCorruptError(f"corrupt file: {gz} (cannot extract: {error})") from error
        except (EOFError, zlib.error) as error:
            raise DatasetCorruptError(f"corrupt file: {gz} (cannot extract: {error})") from error
        finally:
            if os.path.exists(handle.name):
                os.unlink(handle.name)

    def _unwritable(self, gz: Path, error: OSError) -> DatasetNotFoundError:
        return DatasetNotFoundError(
            f"cannot extract {gz} in {gz.parent} ({error.strerror or error}): make that folder writable (or free "
            "space there), or copy MNIST/raw/ into a writable folder and set paths.data_dir to it"
        )

    def prepare_data(self) -> None:
        """Extract or download the files into ``<data_dir>/MNIST/raw`` if they are not there.

        Raises:
            DatasetCorruptError: If a ``.gz`` file is there but fails torchvision's md5, or an
                extracted file is damaged (truncated) and no good ``.gz`` is there to extract it again.
            DatasetNotFoundError: If the files are missing and cannot be fetched or extracted;
                chains torchvision's error.
        """
        ensure_data_dir(self.data_dir, "MNIST")
        if self._check_files():
            return
        try:
            for train in (True, False):
                torchvision.datasets.MNIST(root=self.data_dir, train=train, download=True)
        except Exception as error:
            raise DatasetNotFoundError(self._missing_message()) from error

    def _load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_files()
        try:
            dataset = torchvision.datasets.MNIST(root=self.data_dir, train=train, download=False)
        except RuntimeError:
            self.prepare_data()
            dataset = torchvision.datasets.MNIST(root=self.data_dir, train=train, download=False)
        return dataset.data.unsqueeze(1).contiguous(), dataset.targets.to(torch.int64)

    def setup(self, stage: str | None = None) -> None:
        """Load both splits into memory (once) and build the datasets.

        Raises:
            DatasetNotFoundError: If the files are missing and cannot be fetched.
        """
        if self.train_dataset is not None:
            return
        train_images, train_labels = self._load_split(True)
        test_images, test_labels = self._load_split(False)
        rank_zero_info(f"MNIST: {len(train_labels)} train / {len(test_labels)} test images from {self.data_dir}")
        self.train_dataset = ImageTensorDataset(train_images, train_labels)
        self.probe_dataset = ImageTensorDataset(train_images, train_labels)
        self.test_dataset = ImageTensorDataset(test_images, test_labels)
