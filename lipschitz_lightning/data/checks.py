"""The errors of the datamodules and the checks that raise them: a dataset file against its md5,
the data folder, and the bounds of a seed.

:class:`SettingError` is a datamodule argument it cannot take (the application names its own
config key in its message); :class:`DatasetNotFoundError` and :class:`DatasetCorruptError` say
what to put where, or which file to delete.
"""

from __future__ import annotations

import errno
import hashlib
import os
from typing import Any


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
