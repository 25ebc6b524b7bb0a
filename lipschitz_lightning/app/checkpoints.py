"""The checkpoint files of a run: loaded without running code, written atomically, picked by
the training progress recorded inside them.

* :func:`load` is the one ``torch.load`` of a checkpoint a user hands in (``weights_only=True``:
  tensors and plain values only, so a crafted file cannot run code when it is read).
* :class:`AtomicCheckpointIO` is the trainer's ``CheckpointIO`` plugin (``conf/trainer/default.yaml``):
  a checkpoint is written to ``<name>.tmp-<pid>`` in its own folder, flushed and fsynced, then
  renamed over the old file (``os.replace``), so a kill or a full disk leaves the previous
  checkpoint intact; a failed save is one line (:class:`CheckpointSaveError`) naming the
  checkpoint that is intact. Once the run has saved past an ``on_exception.ckpt``, that file is
  retired (deleted): a later ``resume=`` cannot rewind to it.
* :func:`pick_resume` chooses the checkpoint ``resume=<run folder>`` continues from: the one
  with the most training progress (global step, batches done), not the newest file; when
  ``last.ckpt`` or ``on_exception.ckpt`` is unreadable (truncated, 0 bytes), the newest intact
  checkpoint of the folder (an ``epoch_NNN.ckpt``), saying which.
* :class:`RunCheckpoint` is Lightning's ``ModelCheckpoint`` made safe against kills between the
  files of one epoch's save and against a moved run folder (see the class).
* :class:`ResumeRecord` stores the settings that decide the rest of a run (the optim option:
  optimizer and LipschitzLR rule with all their values) and refuses a checkpoint written with others.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointInfo",
    "CheckpointSaveError",
    "ResumeRecord",
    "RunCheckpoint",
    "inspect",
    "load",
    "pick_resume",
    "remove_stale_temps",
]

log = logging.getLogger(__name__)

ON_EXCEPTION = "on_exception.ckpt"
LAST = "last.ckpt"
TEMP_MARK = ".tmp-"


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (disk full, quota, I/O error); the message says which
    checkpoint of the run is intact."""


class UnsafeCheckpointError(ValueError):
    """A file that is not a checkpoint of plain values (loading it could run code)."""


# --------------------------------------------------------------------------- reading


def load(path: os.PathLike | str) -> Dict[str, Any]:
    """``torch.load`` a checkpoint on the CPU with ``weights_only=True``: no code runs from the file.

    Raises:
        UnsafeCheckpointError: the file holds Python objects other than tensors and plain values.
        Exception: whatever ``torch.load`` raises on a file that is no checkpoint (truncated, empty, ...).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported operand" in str(exc):
            raise  # not a pickle at all (a text file, say): no checkpoint, rather than an unsafe one
        found = re.search(r"(?:GLOBAL|global) ([\w.]+ [\w.]+|[\w.]+)", str(exc))
        what = f" ({found.group(1).replace(' ', '.')})" if found else ""
        raise UnsafeCheckpointError(
            f"{path} holds Python objects{what}, not only tensors and plain values: it is not loaded, "
            "since loading it could run code") from None


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint file says about the training it holds."""

    path: Path
    epoch: int  # 0-based epoch the checkpoint was written in
    global_step: int
    batches: int  # training batches done in all, over every epoch
    epochs_needed: int  # epochs a resumed run must have to finish what the checkpoint started
    mid_epoch: bool

    @property
    def progress(self) -> Tuple[int, int]:
        return (self.global_step, self.batches)

    def when(self) -> str:
        """``in epoch 2, step 6`` (mid-epoch) or ``after epoch 1, step 4``."""
        where = f"in epoch {self.epoch + 1}" if self.mid_epoch else f"after epoch {self.epoch + 1}"
        return f"{where}, step {self.global_step}"

    def describe(self) -> str:
        return f"{self.path.name} ({self.when()})"


def progress_of(checkpoint: Mapping[str, Any]) -> Dict[str, Any]:
    """Epoch, step and batch counters of a Lightning checkpoint dict (0 where absent)."""
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    batches = fit_loop.get("epoch_loop.batch_progress") or {}
    epochs = (fit_loop.get("epoch_progress") or {}).get("current") or {}
    in_epoch = int((batches.get("current") or {}).get("completed", 0))
    end_of_epoch = bool(batches.get("is_last_batch", False))
    completed = int(epochs.get("completed", 0))
    return {
        "epoch": int(checkpoint.get("epoch", 0) or 0),
        "global_step": int(checkpoint.get("global_step", 0) or 0),
        "batches": int((batches.get("total") or {}).get("completed", 0)),
        "epochs_needed": completed + (1 if end_of_epoch or in_epoch > 0 else 0),
        "mid_epoch": in_epoch > 0 and not end_of_epoch,
    }


def info_of(path: os.PathLike | str, checkpoint: Mapping[str, Any]) -> CheckpointInfo:
    return CheckpointInfo(path=Path(path), **progress_of(checkpoint))


def inspect(path: os.PathLike | str) -> CheckpointInfo:
    """Load ``path`` (``weights_only=True``) and read its progress; raises as :func:`load` does,
    and ValueError for a file that loads but is no Lightning training checkpoint."""
    checkpoint = load(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "loops" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning training checkpoint (no state_dict/loops)")
    return info_of(path, checkpoint)


def _why_unreadable(path: Path, exc: BaseException) -> str:
    try:
        if path.stat().st_size == 0:
            return "0 bytes"
    except OSError:
        pass
    if isinstance(exc, UnsafeCheckpointError):
        return "holds Python objects, not loaded"
    return f"unreadable: {type(exc).__name__}"


# A name's rank among checkpoints of equal progress: last.ckpt (written at an epoch's end) first.
_PREFERRED = {LAST: 2, ON_EXCEPTION: 1}


def pick_resume(folder: os.PathLike | str) -> Tuple[CheckpointInfo, Optional[str]]:
    """The checkpoint of ``folder`` (a run's ``checkpoints/``) that ``resume=`` continues from.

    ``last.ckpt`` or ``on_exception.ckpt``, whichever holds more training progress; when one of
    them is unreadable (or neither exists), the intact checkpoint with the most progress
    (an ``epoch_NNN.ckpt``), with a note saying so.

    Returns:
        ``(info, note)``: ``note`` is None, or one line for the log about the fallback.

    Raises:
        FileNotFoundError: no checkpoint in the folder; ValueError: none of them is intact
        (the message lists each file and why).
    """
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*.ckpt") if p.is_file()) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no checkpoint in {folder}")
    intact: List[CheckpointInfo] = []
    broken: Dict[str, str] = {}
    for path in files:
        try:
            intact.append(inspect(path))
        except Exception as exc:  # noqa: BLE001 - torch.load raises many types on a damaged file
            broken[path.name] = _why_unreadable(path, exc)
    if not intact:
        raise ValueError(f"no intact checkpoint in {folder}: "
                         + ", ".join(f"{name} ({why})" for name, why in broken.items()))
    rank = lambda info: (info.progress, _PREFERRED.get(info.path.name, 0))  # noqa: E731
    preferred = [info for info in intact if info.path.name in _PREFERRED]
    broken_preferred = [name for name in broken if name in _PREFERRED]
    if preferred and not broken_preferred:
        return max(preferred, key=rank), None
    chosen = max(intact, key=rank)
    lost = ", ".join(f"{name} is {broken[name]}" for name in broken_preferred) or "no last.ckpt"
    return chosen, f"resume: {lost}; continuing from {chosen.describe()}, the newest intact checkpoint"


def newest_intact(folder: os.PathLike | str, but: Optional[os.PathLike | str] = None) -> Optional[CheckpointInfo]:
    """The intact checkpoint of ``folder`` with the most progress (``but`` left out), or None."""
    best: Optional[CheckpointInfo] = None
    for path in sorted(Path(folder).glob("*.ckpt")):
        if but is not None and path == Path(but):
            continue
        try:
            info = inspect(path)
        except Exception:  # noqa: BLE001
            continue
        if best is None or (info.progress, _PREFERRED.get(path.name, 0)) > (best.progress, _PREFERRED.get(best.path.name, 0)):
            best = info
    return best


def remove_stale_temps(folder: os.PathLike | str) -> None:
    """Delete the temp files (``<name>.tmp-<pid>``) a killed save of another process left in
    ``folder``. Called by the process that holds the run folder's lock: no other one writes there."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.glob(f"*{TEMP_MARK}*"):
        pid = path.name.rsplit(TEMP_MARK, 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                path.unlink()
                log.info(f"removed {path.name}, left by a save that was killed")
            except OSError:
                pass


# --------------------------------------------------------------------------- writing


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


# --------------------------------------------------------------------------- ModelCheckpoint


def _name_pattern(template: Optional[str]) -> Optional[re.Pattern]:
    """A regex for the file names a ModelCheckpoint ``filename`` template produces (with version suffix)."""
    if not template:
        return None
    parts = re.split(r"\{[^}]*\}", template)
    body = ".+?".join(re.escape(part) for part in parts)
    return re.compile(rf"^{body}(-v\d+)?\.ckpt$")


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` for a run folder that may be killed at any moment and moved.

    * A folder found at another path (moved, or mounted elsewhere) keeps its best-epoch tracking:
      the checkpoint's paths are taken relative to its old folder and looked up in this one.
    * On resume, best checkpoints that no longer exist are forgotten, and files of this callback's
      name pattern that it does not track are deleted: a kill between the save of a new best
      checkpoint and the removal of the old one (or before ``last.ckpt``) leaves neither an orphan
      beyond ``save_top_k`` nor a reference to a deleted file; the killed epoch is trained again.
    * ``commit_after_epoch_logs=True`` (``last.ckpt``): the checkpoint written at an epoch's end
      is renamed into place only after Lightning has logged that epoch's values (at the next
      epoch's start, at the end of training, or on an interruption), so a ``last.ckpt`` never
      claims an epoch whose TensorBoard points a kill lost. Needs :class:`AtomicCheckpointIO`.

    Args:
        commit_after_epoch_logs: See above.
        **kwargs: ``ModelCheckpoint``'s.
    """

    def __init__(self, *args: Any, commit_after_epoch_logs: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commit_after_epoch_logs = commit_after_epoch_logs

    # ------------------------------------------------------------------ moved folders, orphans

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        state = dict(state_dict)
        saved = state.get("dirpath")
        if saved and self.dirpath and os.path.realpath(saved) != os.path.realpath(self.dirpath):
            def moved(path: Any) -> Any:
                if not isinstance(path, str) or not path:
                    return path
                try:
                    relative = os.path.relpath(path, saved)
                except ValueError:
                    return path
                return path if relative.startswith("..") else os.path.join(self.dirpath, relative)

            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if key in state:
                    state[key] = moved(state[key])
            if isinstance(state.get("best_k_models"), dict):
                state["best_k_models"] = {moved(k): v for k, v in state["best_k_models"].items()}
            state["dirpath"] = self.dirpath
        super().load_state_dict(state)
        self._forget_missing()

    def _forget_missing(self) -> None:
        if not self.best_k_models:
            if self.best_model_path and self.monitor is not None and not os.path.isfile(self.best_model_path):
                self.best_model_path = ""
            return
        kept = {path: score for path, score in self.best_k_models.items() if os.path.isfile(path)}
        if len(kept) == len(self.best_k_models):
            return
        self.best_k_models = kept
        if not kept:
            self.best_model_path, self.best_model_score = "", None
            self.kth_best_model_path, self.kth_value = "", torch.tensor(torch.inf if self.mode == "min" else -torch.inf)
            return
        pick_best = min if self.mode == "min" else max
        self.best_model_path = pick_best(kept, key=kept.get)
        self.best_model_score = kept[self.best_model_path]
        pick_kth = max if self.mode == "min" else min
        self.kth_best_model_path = pick_kth(kept, key=kept.get)
        self.kth_value = kept[self.kth_best_model_path]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if not trainer.ckpt_path or not trainer.is_global_zero or self.monitor is None or self.save_top_k == 0:
            return
        pattern = _name_pattern(self.filename)
        if pattern is None or not self.dirpath or not os.path.isdir(self.dirpath):
            return
        tracked = {os.path.realpath(p) for p in self.best_k_models}
        resumed = os.path.realpath(trainer.ckpt_path)
        for name in sorted(os.listdir(self.dirpath)):
            path = os.path.join(self.dirpath, name)
            real = os.path.realpath(path)
            if pattern.match(name) and real not in tracked and real != resumed and name not in (LAST, ON_EXCEPTION):
                try:
                    os.remove(path)
                    log.info(f"removed {name}: a best checkpoint the interrupted run did not record")
                except OSError:
                    pass

    # ------------------------------------------------------------------ last.ckpt after the epoch's logs

    def _checkpoint_io(self, trainer: pl.Trainer) -> Optional[AtomicCheckpointIO]:
        io = getattr(trainer.strategy, "checkpoint_io", None)
        return io if isinstance(io, AtomicCheckpointIO) else None

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        io = self._checkpoint_io(trainer)
        if not self.commit_after_epoch_logs or io is None:
            super()._save_checkpoint(trainer, filepath)
            return
        trainer.save_checkpoint(filepath, self.save_weights_only, storage_options={"commit": False})
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        self._pending_commit = True

    def _commit(self, trainer: pl.Trainer) -> None:
        if not getattr(self, "_pending_commit", False):
            return
        self._pending_commit = False
        io = self._checkpoint_io(trainer)
        if io is not None and trainer.is_global_zero:
            io.commit(self._last_checkpoint_saved)
            from weakref import proxy

            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._commit(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._commit(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # The epoch's checkpoint is whole (written before the exception): keep it, unless the
        # failure was the save itself.
        if isinstance(exception, CheckpointSaveError):
            io = self._checkpoint_io(trainer)
            if io is not None:
                io.discard()
            self._pending_commit = False
            return
        self._commit(trainer)


# --------------------------------------------------------------------------- settings of a run


def _flatten(value: Any, prefix: str) -> Dict[str, Any]:
    if isinstance(value, Mapping):
        out: Dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: list(value) if isinstance(value, tuple) else value}


class ResumeRecord(pl.Callback):
    """Keeps, in every checkpoint, the settings that decide the rest of a run (``settings``: the
    resolved ``optim`` option, i.e. the optimizer and its values and the LipschitzLR rule and its
    values), and says whether a checkpoint's record matches this run's (:meth:`check`).

    Args:
        settings: Plain nested dicts and values, keyed as in the config (``{"optim": {...}}``).
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)

    def state_dict(self) -> Dict[str, Any]:
        return {"settings": self.settings}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        pass  # the settings are this run's; check() compared them before fit

    def check(self, state: Optional[Mapping[str, Any]]) -> None:
        """Raise ValueError naming the first differing settings (``None``: a checkpoint without a record)."""
        if not state or "settings" not in state:
            return
        theirs, ours = _flatten(state["settings"], ""), _flatten(self.settings, "")
        differ = [key for key in sorted(set(theirs) | set(ours)) if theirs.get(key, "<unset>") != ours.get(key, "<unset>")]
        if differ:
            shown = "; ".join(f"{key}={theirs.get(key, '<unset>')!r} there, {ours.get(key, '<unset>')!r} here"
                              for key in differ[:3])
            raise ValueError(f"it was trained with other settings ({shown})")

    @staticmethod
    def find(checkpoint: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
        """The record's state in a checkpoint dict, or None."""
        for key, state in (checkpoint.get("callbacks") or {}).items():
            if str(key).startswith(ResumeRecord.__qualname__):
                return state
        return None
