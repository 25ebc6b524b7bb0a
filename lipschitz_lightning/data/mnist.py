"""MNIST datamodule (paper section 7.3.1)."""

from __future__ import annotations

import os

import torch
import torchvision
from pytorch_lightning.utilities import rank_zero_info

from lipschitz_lightning.data.base import (
    BaseDataModule,
    DatasetNotFoundError,
    ImageTensorDataset,
    random_affine,
    verify_md5,
)

MNIST_FILES: tuple[str, ...] = tuple(name for name, _ in torchvision.datasets.MNIST.resources)


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

    def prepare_data(self) -> None:
        """Extract or download the files into ``<data_dir>/MNIST/raw`` if they are not there.

        Raises:
            DatasetCorruptError: If a ``.gz`` file is there but fails torchvision's md5.
            DatasetNotFoundError: If the files are missing and cannot be fetched or extracted;
                chains torchvision's error.
        """
        raw = os.path.join(self.data_dir, "MNIST", "raw")
        for url, md5 in torchvision.datasets.MNIST.resources:
            path = os.path.join(raw, os.path.basename(url))
            if os.path.isfile(path):
                verify_md5(path, md5)  # a corrupt file is not a missing one
        try:
            for train in (True, False):
                torchvision.datasets.MNIST(root=self.data_dir, train=train, download=True)
        except Exception as error:
            raise DatasetNotFoundError(self._missing_message()) from error

    def _load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
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
