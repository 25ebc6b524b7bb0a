"""Writers of small generated datasets in the official on-disk formats (test helpers)."""

from __future__ import annotations

import contextlib
import os
import pickle
import shlex
import shutil
import struct
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def cifar_images(n: int, seed: int) -> np.ndarray:
    """Random uint8 images ``(n, 3, 32, 32)``."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def write_cifar10_binary_file(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """One file of the binary version: per record a label byte, then R, G, B planes row-major."""
    records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(records.tobytes())


def write_cifar10_binary(root: Path, per_file: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``root/cifar-10-batches-bin/`` with all six files; return their content by name."""
    content = {}
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for index, name in enumerate(names):
        images = cifar_images(per_file, seed=index)
        labels = (np.arange(per_file) + index) % 10
        write_cifar10_binary_file(root / "cifar-10-batches-bin" / name, images, labels)
        content[name] = (images, labels.astype(np.int64))
    (root / "cifar-10-batches-bin" / "batches.meta.txt").write_text("airplane\nautomobile\n")
    return content


def write_cifar_python(root: Path, hundred: bool, per_file: int = 6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write torchvision's python layout (``cifar-10-batches-py`` or ``cifar-100-python``).

    Same keys as the real pickles as torchvision reads them (``encoding="latin1"`` turns the
    original Python 2 str keys into str): ``data`` (N x 3072 uint8) and ``labels`` (CIFAR-10) or
    ``fine_labels`` / ``coarse_labels`` (CIFAR-100), plus the ``meta`` / ``batches.meta`` file.
    """
    if hundred:
        folder, names, meta = root / "cifar-100-python", ["train", "test"], "meta"
    else:
        folder = root / "cifar-10-batches-py"
        names, meta = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "batches.meta"
    folder.mkdir(parents=True, exist_ok=True)
    num_classes = 100 if hundred else 10
    content = {}
    for index, name in enumerate(names):
        images = cifar_images(per_file, seed=100 + index)
        labels = ((np.arange(per_file) * 7 + index) % num_classes).astype(np.int64)
        entry: dict[str, object] = {"batch_label": f"{name} batch", "data": images.reshape(per_file, -1)}
        if hundred:
            entry["fine_labels"] = labels.tolist()
            entry["coarse_labels"] = (labels // 5).tolist()
        else:
            entry["labels"] = labels.tolist()
        entry["filenames"] = [f"img_{i}.png" for i in range(per_file)]
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle, protocol=2)
        content[name] = (images, labels)
    key = "fine_label_names" if hundred else "label_names"
    meta_entry: dict[str, object] = {key: [f"class_{i}" for i in range(num_classes)]}
    if hundred:
        meta_entry["coarse_label_names"] = [f"super_{i}" for i in range(20)]
    with open(folder / meta, "wb") as handle:
        pickle.dump(meta_entry, handle, protocol=2)
    return content


def write_mnist_raw(root: Path, num_train: int = 12, num_test: int = 6) -> None:
    """Write the four extracted idx files torchvision's MNIST reads from ``root/MNIST/raw``."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())


def write_cifar10_binary_archive(archive: Path, per_file: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a ``cifar-10-binary.tar.gz``-style archive (gzip, or xz for a ``.xz`` name) of the binary version."""
    source = archive.parent / (archive.name + ".source")
    content = write_cifar10_binary(source, per_file=per_file)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:xz" if archive.suffix == ".xz" else "w:gz") as tar:
        tar.add(source / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    shutil.rmtree(source)
    return content


class RunsAShellCommand:
    """Unpickled, it runs ``command`` (a booby-trapped dataset file)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def write_booby_trapped_pickle(path: Path, marker: Path) -> None:
    """A pickle that creates ``marker`` when it is loaded with plain ``pickle.load``."""
    with open(path, "wb") as handle:
        pickle.dump({"data": RunsAShellCommand(f"touch {shlex.quote(str(marker))}"), "labels": []}, handle, protocol=2)


def _can_write_in(folder: Path) -> bool:
    probe = folder / ".write-probe"
    try:
        probe.write_bytes(b"")
    except OSError:
        return False
    probe.unlink()
    return True


@contextlib.contextmanager
def unwritable_folder(folder: Path) -> Iterator[bool]:
    """Make ``folder`` refuse new entries for the duration; yield whether that worked.

    Write permission is taken away (enough for an ordinary user); root ignores permission bits,
    so as root the folder is also made immutable (``chattr +i``, ext4 and most Linux file
    systems). Yields False where neither makes it unwritable: the caller skips.
    """
    mode = folder.stat().st_mode
    folder.chmod(0o555)
    immutable = False
    try:
        if _can_write_in(folder) and shutil.which("chattr"):
            immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        yield not _can_write_in(folder)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(mode)
