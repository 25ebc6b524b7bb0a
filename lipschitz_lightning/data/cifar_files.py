"""Reading the CIFAR files, without trusting them: the official binary version of CIFAR-10
(:func:`read_cifar10_binary`, md5-checked against the official table) and the python version's
pickles (:func:`read_cifar_python`), read by an unpickler that knows nothing but the arrays,
lists and strings these files hold, so a booby-trapped file runs no code."""

from __future__ import annotations

import codecs
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lipschitz_lightning.data.checks import DatasetCorruptError, verify_md5

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_BINARY_FOLDER = "cifar-10-batches-bin"
# Official md5s of the extracted binary version (cifar-10-binary.tar.gz from the CIFAR site).
CIFAR10_BINARY_MD5: dict[str, str] = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}
CIFAR10_BINARY_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_BINARY_TEST = ("test_batch.bin",)
_IMAGE_BYTES = 3 * 32 * 32
_RECORD_BYTES = 1 + _IMAGE_BYTES


def read_cifar10_binary(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one file of the CIFAR-10 binary version.

    Each record is 3,073 bytes: a label byte (0-9), then 1,024 red, 1,024 green and 1,024 blue
    bytes of a 32x32 image in row-major order.

    Args:
        path: A ``data_batch_*.bin`` or ``test_batch.bin`` file.

    Returns:
        ``(images, labels)``: uint8 array ``(N, 3, 32, 32)`` (channels R, G, B) and int64 ``(N,)``.

    Raises:
        DatasetCorruptError: If the size is not a positive multiple of 3,073 bytes or a label is
            not in 0-9.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD_BYTES != 0:
        raise DatasetCorruptError(
            f"corrupt file: {path} ({raw.size} bytes is not a positive multiple of the {_RECORD_BYTES}-byte record)"
        )
    records = raw.reshape(-1, _RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DatasetCorruptError(f"corrupt file: {path} (label {labels.max()} outside 0-9)")
    images = records[:, 1:].reshape(-1, 3, 32, 32).copy()
    return images, labels


def load_binary(folder: Path, names: Sequence[str], verify: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The binary files ``names`` of ``folder`` (md5-checked when ``verify``), as one image and one label tensor."""
    images, labels = [], []
    for name in names:
        path = folder / name
        if verify:
            verify_md5(path, CIFAR10_BINARY_MD5[name])
        batch_images, batch_labels = read_cifar10_binary(path)
        images.append(batch_images)
        labels.append(batch_labels)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _numpy_reconstruct
except ImportError:  # pragma: no cover - numpy 1
    from numpy.core.multiarray import _reconstruct as _numpy_reconstruct


def _reconstruct(subtype: type, *args: object) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"an array of type {subtype!r}")
    return _numpy_reconstruct(subtype, *args)


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


# The only globals a CIFAR pickle needs: numpy arrays (as numpy 1 and 2 name their reconstructor)
# and, in files written by Python 3 with protocol 2, bytes spelled as latin-1 text.
_CIFAR_PICKLE_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class _CIFARUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return _CIFAR_PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no CIFAR file holds") from None


def read_cifar_python(path: str | os.PathLike[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file of the python version (``data_batch_1``, ``test_batch``, ``train``, ...).

    The file is a pickle: it is read with an unpickler that knows numpy arrays, dtypes and plain
    values only, so a file that would call anything else (``os.system``, ...) is refused without
    running it.

    Args:
        path: The batch file.
        label_key: ``"labels"`` (CIFAR-10) or ``"fine_labels"`` (CIFAR-100).

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)``.

    Raises:
        DatasetCorruptError: If the file does not unpickle with those types, or holds no
            ``data`` (N x 3072 uint8) and ``label_key`` of N labels.
    """
    try:
        with open(path, "rb") as handle:
            entry = _CIFARUnpickler(handle, encoding="latin1").load()
    except Exception as error:  # UnpicklingError, EOFError, ValueError, ... of a damaged or foreign file
        raise DatasetCorruptError(
            f"corrupt file: {path} (not a CIFAR batch: {error}); replace it with the file from {CIFAR_URL}"
        ) from None
    data = entry.get("data") if isinstance(entry, dict) else None
    labels = entry.get(label_key) if isinstance(entry, dict) else None
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _IMAGE_BYTES
            or not isinstance(labels, list) or len(labels) != data.shape[0]
            or not all(isinstance(label, int) and not isinstance(label, bool) for label in labels)):
        raise DatasetCorruptError(
            f"corrupt file: {path} (no 'data' array of N x {_IMAGE_BYTES} bytes with N {label_key!r}); "
            f"replace it with the file from {CIFAR_URL}"
        )
    return data.reshape(-1, 3, 32, 32).copy(), np.asarray(labels, dtype=np.int64)
