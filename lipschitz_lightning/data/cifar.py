"""CIFAR-10 and CIFAR-100 datamodules and a reader for the CIFAR-10 binary version.

Preprocessing follows the LipschitzLR paper (section 7.3): "the raw image values were divided by
255 after removing the means across each channel", i.e. ``x = (x - mean_c) / 255`` with the
per-channel means of the training set. Augmentation is "flipping and translation" as in He et
al. 2016: random horizontal flip and a random 32x32 crop of the image zero-padded by 4 pixels
(the padding is 0 after mean removal, i.e. the mean colour).

Where the files come from, in this order (``prepare_data``):

1. ``<data_dir>/cifar-10-batches-py/`` (or ``cifar-100-python/``): the python version (pickles),
   checked against torchvision's md5 table and read by :func:`read_cifar_python`, which unpickles
   nothing but the arrays, lists and strings these files hold (a booby-trapped file runs no code);
2. CIFAR-10 only: ``<data_dir>/cifar-10-batches-bin/``, the official binary version;
3. CIFAR-10 only: a tar archive of that folder, ``archive=`` or ``<data_dir>/cifar-10-binary.tar*``
   (``.tar.gz`` as downloaded, or ``.tar.xz``), extracted into ``data_dir`` atomically (into a
   temporary folder beside it, then renamed into place: a concurrent run sees the whole folder or
   none and extracts its own copy);
4. ``torchvision.datasets.CIFAR10/CIFAR100(root=data_dir, download=True)``.

If all fail, :class:`DatasetNotFoundError` says which files to put where. Every file is checked
against its md5 when loaded (``verify_checksums=True``): the official table for the binary
version, torchvision's table for the python version.

The readers of the files (the binary version, the python version's safe unpickler) live in
:mod:`~lipschitz_lightning.data.cifar_files`; their names are importable from here as before.
"""

from __future__ import annotations

import errno
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision
from pytorch_lightning.utilities import rank_zero_info

from lipschitz_lightning.data.base import (
    BaseDataModule,
    DatasetCorruptError,
    DatasetNotFoundError,
    ImageTensorDataset,
    WRITE_ERRNOS,
    ensure_data_dir,
    random_crop_flip,
    verify_md5,
)
from lipschitz_lightning.data.cifar_files import (
    CIFAR10_BINARY_FOLDER,
    CIFAR10_BINARY_MD5,
    CIFAR10_BINARY_TEST,
    CIFAR10_BINARY_TRAIN,
    CIFAR_URL,
    load_binary,
    read_cifar10_binary,
    read_cifar_python,
)

__all__ = [
    "CIFAR10_BINARY_FOLDER",
    "CIFAR10_BINARY_MD5",
    "CIFAR10_BINARY_TEST",
    "CIFAR10_BINARY_TRAIN",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CIFAR_URL",
    "channel_means",
    "read_cifar10_binary",
    "read_cifar_python",
]


def channel_means(images: torch.Tensor) -> list[float]:
    """Per-channel mean of uint8 images ``(N, C, H, W)`` in pixel units, computed exactly in int64."""
    count = images.shape[0] * images.shape[2] * images.shape[3]
    return [total / count for total in images.sum(dim=(0, 2, 3), dtype=torch.int64).tolist()]


class _CIFARDataModule(BaseDataModule):
    """CIFAR-10/100 common code; see the module docstring for file lookup and preprocessing."""

    dataset_name: str
    num_classes: int
    torchvision_class: type[torchvision.datasets.CIFAR10]

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
        shuffle: bool = True,
        verify_checksums: bool = True,
        channel_mean: Sequence[float] | None = None,
        augment: bool = True,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, seed, pin_memory, shuffle)
        if channel_mean is not None and len(channel_mean) != 3:
            raise ValueError(f"{type(self).__name__}: channel_mean needs 3 values (R, G, B); got {channel_mean!r}")
        self.input_shape: tuple[int, ...] = (3, 32, 32)
        self.num_outputs = self.num_classes
        self.loss = "softmax_ce"
        self.verify_checksums = verify_checksums
        self.augment = augment
        self.augmentation = random_crop_flip if augment else None
        self.channel_mean: list[float] | None = None if channel_mean is None else [float(m) for m in channel_mean]
        self._given_mean = channel_mean is not None

    # --- locating files -------------------------------------------------------------------
    @property
    def python_folder(self) -> Path:
        return Path(self.data_dir) / self.torchvision_class.base_folder

    def _python_names(self) -> tuple[list[str], list[str]]:
        tv = self.torchvision_class
        return [name for name, _ in tv.train_list], [name for name, _ in tv.test_list]

    def _find_local(self) -> str | None:
        """Return ``"python"`` or ``"binary"`` for a complete folder in ``data_dir``, else None."""
        train, test = self._python_names()
        names = train + test + [self.torchvision_class.meta["filename"]]
        if all((self.python_folder / name).is_file() for name in names):
            return "python"
        return None

    def _load_python(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One split of the python version: md5-checked against torchvision's table (unless
        ``verify_checksums=False``), read by :func:`read_cifar_python` (no code runs from a file).

        Raises:
            DatasetCorruptError: naming the file that fails its md5 or is no CIFAR batch.
        """
        tv = self.torchvision_class
        if self.verify_checksums:
            for name, md5 in tv.train_list + tv.test_list + [[tv.meta["filename"], tv.meta["md5"]]]:
                verify_md5(self.python_folder / name, md5)
        label_key = "labels" if self.num_classes == 10 else "fine_labels"
        images, labels = [], []
        for name, _ in tv.train_list if train else tv.test_list:
            batch_images, batch_labels = read_cifar_python(self.python_folder / name, label_key)
            images.append(batch_images)
            labels.append(batch_labels)
        return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))

    def _missing_message(self) -> str:
        return (
            f"{self.dataset_name} not found in {os.path.abspath(self.data_dir)} and it could not be downloaded "
            f"(no network?). Put {self.torchvision_class.base_folder}/ (python version) from {CIFAR_URL} "
            f"into {os.path.abspath(self.data_dir)}"
        )

    def _acquire_extra(self) -> bool:
        """Hook for sources beyond the python version (CIFAR-10: the binary archive)."""
        return False

    def prepare_data(self) -> None:
        """Make sure the files are in ``data_dir``: local folder, archive, else download.

        Raises:
            DatasetNotFoundError: If nothing is found and the download fails; chains its error.
        """
        if self._find_local() is not None:
            return
        ensure_data_dir(self.data_dir, self.dataset_name)
        if self._acquire_extra():
            return
        rank_zero_info(f"{self.dataset_name}: no local copy in {self.data_dir}; trying torchvision download")
        try:
            # torchvision fetches and unpacks the python version (or only unpacks a
            # cifar-*-python.tar.gz already in data_dir whose md5 matches).
            self.torchvision_class(root=self.data_dir, train=True, download=True)
        except Exception as error:
            raise DatasetNotFoundError(self._missing_message()) from error

    # --- loading --------------------------------------------------------------------------
    def _load(self, source: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if source == "binary":
            folder = Path(self.data_dir) / CIFAR10_BINARY_FOLDER
            train = load_binary(folder, CIFAR10_BINARY_TRAIN, self.verify_checksums)
            test = load_binary(folder, CIFAR10_BINARY_TEST, self.verify_checksums)
        else:
            train, test = self._load_python(True), self._load_python(False)
        for labels, split in ((train[1], "train"), (test[1], "test")):
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise DatasetCorruptError(
                    f"{self.dataset_name} {split} labels outside 0..{self.num_classes - 1} in {self.data_dir}"
                )
        return train[0], train[1], test[0], test[1]

    def setup(self, stage: str | None = None) -> None:
        """Load both splits into memory (once), compute the channel means, build the datasets.

        Raises:
            DatasetNotFoundError: If the files are missing and cannot be fetched.
            DatasetCorruptError: If a file fails its md5 or format check.
        """
        if self.train_dataset is not None:
            return
        source = self._find_local()
        if source is None:
            self.prepare_data()
            source = self._find_local()
            if source is None:
                raise DatasetNotFoundError(self._missing_message())
        train_images, train_labels, test_images, test_labels = self._load(source)
        if not self._given_mean:
            self.channel_mean = channel_means(train_images)
        rank_zero_info(
            f"{self.dataset_name}: {len(train_labels)} train / {len(test_labels)} test images from the {source} "
            f"version in {self.data_dir}; channel means {[round(m, 3) for m in self.channel_mean or []]}"
        )
        self.train_dataset = ImageTensorDataset(train_images, train_labels, self.channel_mean)
        self.probe_dataset = ImageTensorDataset(train_images, train_labels, self.channel_mean)
        self.test_dataset = ImageTensorDataset(test_images, test_labels, self.channel_mean)


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 (10 classes, 50,000 train / 10,000 test 32x32 RGB images), paper section 7.4.

    Reads the python version (torchvision layout) or the official binary version, from a folder
    or a tar archive in ``data_dir``, or downloads the python version via torchvision.

    Args:
        data_dir: Folder with ``cifar-10-batches-py/``, ``cifar-10-batches-bin/`` or an archive.
        batch_size: Samples per batch.
        num_workers: DataLoader workers.
        seed: Seed of the shuffle order.
        pin_memory: Pin host memory.
        shuffle: Shuffle the training split.
        verify_checksums: Check every file's md5 against the official table when loading.
        channel_mean: Per-channel means (0-255) to subtract; None computes them on the training set.
        augment: Random flip + translation on the training split.
        archive: A ``.tar.gz``/``.tar.xz`` of ``cifar-10-batches-bin/`` anywhere (may be read-only);
            it is extracted into ``data_dir``. Without it ``data_dir/cifar-10-binary.tar*`` is used.

    Raises:
        ValueError: On bad batch_size / num_workers / channel_mean.
    """

    dataset_name = "CIFAR-10"
    num_classes = 10
    torchvision_class = torchvision.datasets.CIFAR10

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
        shuffle: bool = True,
        verify_checksums: bool = True,
        channel_mean: Sequence[float] | None = None,
        augment: bool = True,
        archive: str | None = None,
    ) -> None:
        super().__init__(
            data_dir, batch_size, num_workers, seed, pin_memory, shuffle, verify_checksums, channel_mean, augment
        )
        self.archive = archive

    @property
    def binary_folder(self) -> Path:
        return Path(self.data_dir) / CIFAR10_BINARY_FOLDER

    def _find_local(self) -> str | None:
        found = super()._find_local()
        if found is None and all((self.binary_folder / name).is_file() for name in CIFAR10_BINARY_MD5):
            found = "binary"
        return found

    def _binary_archives(self) -> list[Path]:
        if self.archive is not None:
            return [Path(self.archive)]
        return sorted(Path(self.data_dir).glob("cifar-10-binary.tar*"))

    def _acquire_extra(self) -> bool:
        """Extract a binary-version archive into ``data_dir``; True if that gave a complete folder.

        Raises:
            DatasetNotFoundError: If an explicit ``archive`` does not exist.
            DatasetCorruptError: If the archive cannot be read or lacks the expected files.
        """
        for path in self._binary_archives():
            if not path.is_file():
                raise DatasetNotFoundError(f"CIFAR-10 archive not found: {path}")
            self._extract(path)
            return True
        return False

    def _complete(self, folder: Path) -> bool:
        return all((folder / name).is_file() for name in CIFAR10_BINARY_MD5)

    def _extract(self, path: Path) -> None:
        """Extract ``path`` into a temporary folder in ``data_dir``, then rename its
        ``cifar-10-batches-bin/`` into place: ``data_dir`` never holds half a dataset, and two runs
        extracting at once both end with the same complete folder (the second rename loses, and
        that run uses the winner's folder)."""
        data_dir = Path(self.data_dir)
        rank_zero_info(f"CIFAR-10: extracting {path} into {data_dir}")
        try:
            scratch = Path(tempfile.mkdtemp(prefix=".cifar-10-extracting-", dir=data_dir))
        except OSError as error:
            raise self._unwritable(path, error) from None
        try:
            try:
                with tarfile.open(path, "r:*") as tar:
                    tar.extractall(scratch, filter="data")
            except OSError as error:
                if error.errno in WRITE_ERRNOS and os.path.abspath(str(error.filename)) != os.path.abspath(path):
                    raise self._unwritable(path, error) from None
                raise DatasetCorruptError(f"corrupt file: {path} (cannot extract: {error})") from error
            except (tarfile.TarError, EOFError) as error:
                raise DatasetCorruptError(f"corrupt file: {path} (cannot extract: {error})") from error
            if not self._complete(scratch / CIFAR10_BINARY_FOLDER):
                raise DatasetCorruptError(
                    f"corrupt file: {path} (it did not contain {CIFAR10_BINARY_FOLDER}/ with "
                    f"{', '.join(CIFAR10_BINARY_MD5)})"
                )
            try:
                os.rename(scratch / CIFAR10_BINARY_FOLDER, self.binary_folder)
            except OSError as error:
                if not self.binary_folder.is_dir():
                    raise self._unwritable(path, error) from None
                if not self._complete(self.binary_folder):  # left there by someone else, not by a run of this code
                    raise DatasetCorruptError(
                        f"{self.binary_folder} is incomplete (it lacks some of {', '.join(CIFAR10_BINARY_MD5)}): "
                        f"delete it and {path} is extracted again"
                    ) from None
                rank_zero_info(f"CIFAR-10: {self.binary_folder} was extracted by another run meanwhile; using it")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _unwritable(self, path: Path, error: OSError) -> DatasetNotFoundError:
        """The archive is fine; the folder it goes into cannot take it (read-only, full, ...)."""
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        return DatasetNotFoundError(
            f"cannot extract {path} into {os.path.abspath(self.data_dir)} ({error.strerror or error}): "
            f"{'free some space there' if full else 'the folder is not writable; make it writable'}, or set "
            f"paths.data_dir to a writable folder and dataset.archive={os.path.abspath(path)} "
            "(the archive may stay where it is, read-only)"
        )

    def _missing_message(self) -> str:
        root = os.path.abspath(self.data_dir)
        return (
            f"CIFAR-10 not found in {root} and it could not be downloaded (no network?). Put either "
            f"cifar-10-batches-py/ (python version) or cifar-10-batches-bin/ (binary version) from {CIFAR_URL} "
            f"into {root} (a cifar-10-binary.tar.gz / .tar.xz archive of the binary version placed in {root} "
            "is extracted automatically)"
        )


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (100 fine classes, 50,000 train / 10,000 test images), paper section 7.4.1.

    Reads torchvision's python layout ``<data_dir>/cifar-100-python/{train,test}`` (fine
    labels) or downloads it via torchvision.

    Args:
        data_dir: Folder with ``cifar-100-python/``.
        batch_size: Samples per batch.
        num_workers: DataLoader workers.
        seed: Seed of the shuffle order.
        pin_memory: Pin host memory.
        shuffle: Shuffle the training split.
        verify_checksums: Check the files against torchvision's md5 table when loading.
        channel_mean: Per-channel means (0-255) to subtract; None computes them on the training set.
        augment: Random flip + translation on the training split.

    Raises:
        ValueError: On bad batch_size / num_workers / channel_mean.
    """

    dataset_name = "CIFAR-100"
    num_classes = 100
    torchvision_class = torchvision.datasets.CIFAR100
