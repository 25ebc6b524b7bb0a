"""Lightning datamodules with a uniform contract (``input_shape``, ``num_outputs``, ``loss``,
``batch_size`` known after ``__init__``; train / val (= test split) / test / probe loaders)."""

from lipschitz_lightning.data.base import (
    BaseDataModule,
    DatasetCorruptError,
    DatasetNotFoundError,
    EpochShuffleSampler,
    ImageTensorDataset,
    ResumableDataLoader,
    file_md5,
    random_affine,
    random_crop_flip,
    verify_md5,
)
from lipschitz_lightning.data.cifar import (
    CIFAR10_BINARY_MD5,
    CIFAR10DataModule,
    CIFAR100DataModule,
    channel_means,
    read_cifar10_binary,
)
from lipschitz_lightning.data.mnist import MNISTDataModule
from lipschitz_lightning.data.synthetic import SyntheticDataModule
from lipschitz_lightning.data.tabular import SKLEARN_DATASETS, SklearnDataModule, scale_features

__all__ = [
    "BaseDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CIFAR10_BINARY_MD5",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "EpochShuffleSampler",
    "ImageTensorDataset",
    "MNISTDataModule",
    "ResumableDataLoader",
    "SKLEARN_DATASETS",
    "SklearnDataModule",
    "SyntheticDataModule",
    "channel_means",
    "file_md5",
    "random_affine",
    "random_crop_flip",
    "read_cifar10_binary",
    "scale_features",
    "verify_md5",
]
