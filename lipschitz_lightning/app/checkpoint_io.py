"""Writing a run's checkpoint files atomically: the trainer's ``CheckpointIO`` plugin
(``conf/trainer/default.yaml``).

A checkpoint is written to ``<name>.tmp-<pid>`` in its own folder, flushed and fsynced, then
renamed over the old file (``os.replace``), so a kill or a full disk leaves the previous
checkpoint intact; a failed save is one line (:class:`CheckpointSaveError`) naming the
checkpoint that is intact. Once the run has saved past an ``on_exception.ckpt``, that file is
retired (deleted): a later ``resume=`` cannot rewind to it.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from lipschitz_lightning.app.checkpoint_files import ON_EXCEPTION, TEMP_MARK, inspect, log, pick_resume, progress_of


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (disk full, quota, I/O error); the message says which
    checkpoint of the run is intact."""


class _WholeWrites:
    """A file for ``torch.save`` whose ``write`` writes every byte or raises (a short write, as at
    the file-size limit, is retried so that the OSError shows), and that keeps that OSError."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.error: Optional[OSError] = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                written = self.raw.write(view[done:])
                if not written:
                    raise OSError(errno.EIO, "the write made no progress")
                done += written
        except OSError as exc:
            self.error = exc
            raise
        return done

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self.raw.tell()

    def fileno(self) -> int:
        return self.raw.fileno()


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temp file in the checkpoint's own folder, flushed and fsynced, then
    ``os.replace`` over the old file: at any moment the file under the checkpoint's name is a
    whole checkpoint (the previous or the new one). Loads always use ``weights_only=True``.

    ``save_checkpoint(..., storage_options={"commit": False})`` writes the temp file and keeps it
    pending until :meth:`commit` (used by :class:`RunCheckpoint` for ``last.ckpt``, renamed into
    place only once the epoch's logs are written).

    A save that fails with an ``OSError`` (``ENOSPC``, ``EDQUOT``, ``EIO``, ``EFBIG``) removes its
    temp file and raises :class:`CheckpointSaveError`: one line with the reason and the run's
    newest intact checkpoint.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: Dict[str, Tuple[str, Tuple[int, int]]] = {}  # path -> (temp path, progress)
        self._on_exception: Dict[str, Optional[Tuple[int, int]]] = {}  # folder -> its progress

    # The checkpoint bytes go through this method: a subclass may wrap it (tests inject faults here).
    def write(self, checkpoint: Dict[str, Any], handle: Any, path: str) -> None:
        """Serialize ``checkpoint`` (destined for ``path``) into the open temp file ``handle``."""
        torch.save(checkpoint, handle)

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        commit = not (isinstance(storage_options, dict) and storage_options.get("commit") is False)
        if storage_options is not None and not isinstance(storage_options, dict):
            raise TypeError(f"{type(self).__name__}: storage_options must be a dict or None")
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        temp = f"{path}{TEMP_MARK}{os.getpid()}"
        progress = _progress_key(checkpoint)
        try:
            os.makedirs(folder, exist_ok=True)
            with open(temp, "wb", buffering=0) as raw:
                sink = _WholeWrites(raw)
                try:
                    self.write(checkpoint, sink, path)
                except Exception:
                    # torch.save reports a failed write as its own RuntimeError: the OSError is the cause.
                    if sink.error is not None:
                        raise sink.error from None
                    raise
                os.fsync(raw.fileno())
        except BaseException as exc:
            try:
                os.remove(temp)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise CheckpointSaveError(self._failure(path, exc)) from None
            raise
        if commit:
            self._replace(temp, path, progress)
        else:
            self._drop_pending(path)
            self._pending[path] = (temp, progress)

    def commit(self, path: Optional[Any] = None) -> None:
        """Rename the pending temp file of ``path`` (every pending one when None) into place."""
        paths = list(self._pending) if path is None else [os.fspath(path)]
        for key in paths:
            if key in self._pending:
                temp, progress = self._pending.pop(key)
                self._replace(temp, key, progress)

    def discard(self) -> None:
        """Drop every pending save (its temp file), leaving the checkpoints as they were."""
        for key in list(self._pending):
            self._drop_pending(key)

    def _drop_pending(self, path: str) -> None:
        temp, _ = self._pending.pop(path, (None, None))
        if temp:
            try:
                os.remove(temp)
            except OSError:
                pass

    def _replace(self, temp: str, path: str, progress: Tuple[int, int]) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.replace(temp, path)
        except OSError as exc:
            try:
                os.remove(temp)
            except OSError:
                pass
            raise CheckpointSaveError(self._failure(path, exc)) from None
        _fsync_folder(folder)
        self._retire_on_exception(folder, path, progress)

    def _retire_on_exception(self, folder: str, path: str, progress: Tuple[int, int]) -> None:
        """Delete ``on_exception.ckpt`` once this run has saved a checkpoint past it."""
        stale = os.path.join(folder, ON_EXCEPTION)
        if os.path.basename(path) == ON_EXCEPTION:
            self._on_exception[folder] = progress
            return
        if not os.path.isfile(stale):
            return
        if folder not in self._on_exception:
            try:
                self._on_exception[folder] = inspect(stale).progress
            except Exception:  # noqa: BLE001 - an unreadable one is retired as soon as anything is saved
                self._on_exception[folder] = None
        passed = self._on_exception[folder]
        if passed is None or progress > passed:
            try:
                os.remove(stale)
                log.info(f"retired {ON_EXCEPTION}: {os.path.basename(path)} holds later training")
            except OSError:
                pass
            self._on_exception.pop(folder, None)

    def _failure(self, path: str, exc: OSError) -> str:
        reason = exc.strerror or str(exc)
        folder = os.path.dirname(os.path.abspath(path))
        try:
            intact, _ = pick_resume(folder)  # what resume= would continue from
        except (FileNotFoundError, ValueError):
            intact = None
        if intact is not None and os.path.abspath(intact.path) == os.path.abspath(path):
            kept = f"the previous {os.path.basename(path)} is intact ({intact.when()})"
        elif intact is not None:
            kept = f"{intact.path} is intact ({intact.when()}) and is what resume= continues from"
        else:
            kept = "no earlier checkpoint of this run exists"
        return f"could not save the checkpoint {path} ({reason}); {kept}"

    def load_checkpoint(self, path: Any, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> Dict[str, Any]:
        # Always weights_only=True: a checkpoint is data, whoever asks (fit, test, the SLURM requeue).
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)

    def remove_checkpoint(self, path: Any) -> None:
        try:
            os.remove(os.fspath(path))
        except FileNotFoundError:
            pass


def _progress_key(checkpoint: Mapping[str, Any]) -> Tuple[int, int]:
    counters = progress_of(checkpoint)
    return (counters["global_step"], counters["batches"])
