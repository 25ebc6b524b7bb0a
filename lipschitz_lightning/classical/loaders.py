"""The classical experiments' data: features and targets as float64 arrays (:class:`Data`).

The scikit-learn bundled sets and MNIST come from the training app's own loaders
(:data:`lipschitz_lightning.data.tabular.SKLEARN_DATASETS`,
:class:`~lipschitz_lightning.data.mnist.MNISTDataModule`); the sets only the paper's tables use
(scikit-learn's cached downloads, UCI CSV files) are read here. A data set that is not on this
machine is a :class:`ClassicalDataError` saying where to put it.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

__all__ = ["ClassicalDataError", "Data", "load_csv", "load_mnist", "load_sklearn", "load_sklearn_fetch"]


class ClassicalDataError(RuntimeError):
    """A data set that is not on this machine (one-line message saying where to put it)."""


@dataclass
class Data:
    """Features and targets; ``x_test``/``y_test`` set when the data set has an official split."""

    x: np.ndarray
    y: np.ndarray
    x_test: Optional[np.ndarray] = None
    y_test: Optional[np.ndarray] = None



def load_sklearn(name: str) -> Data:
    """A data set bundled with scikit-learn (the training app's table of them)."""
    from lipschitz_lightning.data.tabular import SKLEARN_DATASETS

    x, y = SKLEARN_DATASETS[name].loader()
    return Data(np.asarray(x, dtype=np.float64), np.asarray(y))


def load_sklearn_fetch(name: str, data_dir: str, max_rows: Optional[int] = None) -> Data:
    """California housing or covertype (first two classes, ten features) from scikit-learn's cache."""
    from sklearn import datasets

    home = os.path.join(data_dir, "scikit_learn_data")
    try:
        if name == "california_housing":
            x, y = datasets.fetch_california_housing(data_home=home, download_if_missing=False, return_X_y=True)
        elif name == "covertype":
            x, y = datasets.fetch_covtype(data_home=home, download_if_missing=False, return_X_y=True)
            keep = (y == 1) | (y == 2)
            x, y = x[keep][:, :10], (y[keep] == 2).astype(np.int64)
        else:
            raise ClassicalDataError(f"unknown scikit-learn fetch data set {name!r}")
    except OSError as exc:
        raise ClassicalDataError(
            f"{name} is not in {home} (scikit-learn downloads it there when the network allows: "
            f"sklearn.datasets.fetch_{'covtype' if name == 'covertype' else name}(data_home={home!r}))"
        ) from exc
    if max_rows:
        x, y = x[:max_rows], y[:max_rows]
    return Data(np.asarray(x, dtype=np.float64), np.asarray(y))


def load_csv(path: str, target: str, drop: Sequence[str] = ()) -> Data:
    """A CSV file with a header row: every column but ``target`` and ``drop`` is a feature."""
    if not os.path.exists(path):
        raise ClassicalDataError(f"{path} not found (put the data set's CSV there; see its config file)")
    with open(path, newline="") as handle:
        reader = csv.reader(handle, skipinitialspace=True)
        header = [h.strip() for h in next(reader)]
        rows = [r for r in reader if r]
    if target not in header:
        raise ClassicalDataError(f"{path}: no column {target!r} (columns: {', '.join(header[:12])} ...)")
    features = [i for i, h in enumerate(header) if h != target and h not in drop]
    values = np.array([[float(r[i]) for i in features] for r in rows])
    y = np.array([float(r[header.index(target)]) for r in rows])
    return Data(values, y)



def load_mnist(data_dir: str) -> Data:
    """MNIST's official 60,000 / 10,000 split as flat 784-pixel rows in [0, 1] (/255), read by the
    training app's datamodule (extracted or downloaded into ``<data_dir>/MNIST/raw`` as there)."""
    from lipschitz_lightning.data.base import DatasetCorruptError, DatasetNotFoundError
    from lipschitz_lightning.data.mnist import MNISTDataModule

    module = MNISTDataModule(data_dir=data_dir, augment=False)
    try:
        module.prepare_data()
        module.setup("fit")
    except (DatasetNotFoundError, DatasetCorruptError) as exc:
        raise ClassicalDataError(str(exc)) from exc
    flat = lambda d: d.images.reshape(len(d.images), -1).numpy().astype(np.float64) / 255.0  # noqa: E731
    train, test = module.train_dataset, module.test_dataset
    return Data(flat(train), train.targets.numpy(), flat(test), test.targets.numpy())
