"""Small scikit-learn datasets (bundled with scikit-learn, no download) for the paper's
classical experiments (sections 7.1-7.2: iris, digits, breast cancer; wine and diabetes too)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_info
from sklearn import datasets as sk_datasets
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from lipschitz_lightning.data.base import BaseDataModule, class_targets
from lipschitz_lightning.math.losses import get_loss
from lipschitz_lightning.math.bounds import scale_columns_to_unit_sum


@dataclass(frozen=True)
class _TabularSpec:
    loader: Callable[[], tuple[np.ndarray, np.ndarray]]
    num_features: int
    loss: str
    num_outputs: int


def _load_diabetes() -> tuple[np.ndarray, np.ndarray]:
    # Raw (unscaled, all non-negative) features: the bundled default is already centred, which
    # makes column sums ~0 and the paper's unit-sum scaling meaningless.
    return sk_datasets.load_diabetes(return_X_y=True, scaled=False)


SKLEARN_DATASETS: dict[str, _TabularSpec] = {
    "iris": _TabularSpec(lambda: sk_datasets.load_iris(return_X_y=True), 4, "softmax_ce", 3),
    "digits": _TabularSpec(lambda: sk_datasets.load_digits(return_X_y=True), 64, "softmax_ce", 10),
    "breast_cancer": _TabularSpec(lambda: sk_datasets.load_breast_cancer(return_X_y=True), 30, "bce", 1),
    "wine": _TabularSpec(lambda: sk_datasets.load_wine(return_X_y=True), 13, "softmax_ce", 3),
    "diabetes": _TabularSpec(_load_diabetes, 10, "mse", 1),
}
SCALINGS: tuple[str, ...] = ("none", "standard", "unit_sum")


def scale_features(train: np.ndarray, test: np.ndarray, scale: str) -> tuple[np.ndarray, np.ndarray]:
    """Scale feature columns with statistics of the training split only.

    Args:
        train: Training features ``(n_train, d)``.
        test: Test features ``(n_test, d)``.
        scale: ``"none"``; ``"standard"`` (z-score; constant columns keep std 1); or
            ``"unit_sum"``, the paper's section 7.1 scaling: each column divided by its training
            sum so training columns sum to 1 (all-zero columns stay zero).

    Returns:
        The scaled ``(train, test)`` pair, float64.

    Raises:
        ValueError: On an unknown ``scale``.
    """
    train = np.asarray(train, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if scale == "none":
        return train, test
    if scale == "standard":
        mean = train.mean(axis=0)
        std = train.std(axis=0)
        std[std == 0] = 1.0
        return (train - mean) / std, (test - mean) / std
    if scale == "unit_sum":
        reference = torch.from_numpy(train)
        return tuple(  # type: ignore[return-value]
            scale_columns_to_unit_sum(torch.from_numpy(x), reference=reference).numpy() for x in (train, test)
        )
    raise ValueError(f"unknown scale {scale!r}; expected one of {SCALINGS}")


class SklearnDataModule(BaseDataModule):
    """A scikit-learn toy dataset split reproducibly into train and test.

    ``iris`` (4 features, 3 classes), ``digits`` (64, 10), ``wine`` (13, 3): loss
    ``softmax_ce``; ``breast_cancer`` (30 features, binary): loss ``bce``, one output;
    ``diabetes`` (10 raw features, regression of disease progression): loss ``mse``. Splits are
    stratified for classification and depend only on ``seed``. No augmentation.

    Args:
        name: One of ``iris``, ``digits``, ``breast_cancer``, ``wine``, ``diabetes``.
        test_fraction: Fraction of samples in the test split, in (0, 1).
        scale: ``"none"``, ``"standard"`` or ``"unit_sum"`` (see :func:`scale_features`).
        as_image: ``digits`` only: samples shaped ``(1, 8, 8)`` for CNNs.
        data_dir: Unused (the data ships with scikit-learn); kept for a uniform signature.
        batch_size: Samples per batch.
        num_workers: DataLoader workers.
        seed: Seed of the split and of the shuffle order.
        pin_memory: Pin host memory.
        shuffle: Shuffle the training split.

    Raises:
        ValueError: On an unknown name or scale, a test_fraction outside (0, 1), ``as_image``
            with a dataset other than digits, or bad batch_size / num_workers.
    """

    def __init__(
        self,
        name: str,
        test_fraction: float = 0.3,
        scale: str = "none",
        as_image: bool = False,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
        shuffle: bool = True,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, seed, pin_memory, shuffle)
        if name not in SKLEARN_DATASETS:
            raise ValueError(f"SklearnDataModule: unknown dataset {name!r}; valid names: {', '.join(SKLEARN_DATASETS)}")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"SklearnDataModule: test_fraction must be in (0, 1); got {test_fraction!r}")
        if scale not in SCALINGS:
            raise ValueError(f"SklearnDataModule: unknown scale {scale!r}; expected one of {', '.join(SCALINGS)}")
        if as_image and name != "digits":
            raise ValueError(f"SklearnDataModule: as_image=True only works for digits (8x8 images); got {name!r}")
        spec = SKLEARN_DATASETS[name]
        self.name = name
        self.test_fraction = test_fraction
        self.scale = scale
        self.as_image = as_image
        self.input_shape: tuple[int, ...] = (1, 8, 8) if as_image else (spec.num_features,)
        self.num_outputs = spec.num_outputs
        self.loss = spec.loss

    def setup(self, stage: str | None = None) -> None:
        """Load, split and scale the data (once)."""
        if self.train_dataset is not None:
            return
        features, labels = SKLEARN_DATASETS[self.name].loader()
        stratify = labels if get_loss(self.loss).is_classification else None
        x_train, x_test, y_train, y_test = train_test_split(
            features, labels, test_size=self.test_fraction, random_state=self.seed, stratify=stratify
        )
        x_train, x_test = scale_features(x_train, x_test, self.scale)
        shape = (-1, *self.input_shape)
        train_x = torch.as_tensor(x_train, dtype=torch.float32).reshape(shape)
        test_x = torch.as_tensor(x_test, dtype=torch.float32).reshape(shape)
        train_y = class_targets(y_train, self.loss)
        test_y = class_targets(y_test, self.loss)
        rank_zero_info(f"{self.name}: {len(train_y)} train / {len(test_y)} test samples, scale={self.scale}")
        self.train_dataset = TensorDataset(train_x, train_y)
        self.probe_dataset = self.train_dataset  # no augmentation: the probe is the same data, unshuffled
        self.test_dataset = TensorDataset(test_x, test_y)
