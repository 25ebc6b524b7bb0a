"""Reading a run's checkpoint files: loaded without running code, picked by the training
progress recorded inside them.

* :func:`load` is the one ``torch.load`` of a checkpoint a user hands in (``weights_only=True``:
  tensors and plain values only, so a crafted file cannot run code when it is read).
* :func:`pick_resume` chooses the checkpoint ``resume=<run folder>`` continues from: the one
  with the most training progress (global step, batches done), not the newest file; when
  ``last.ckpt`` or ``on_exception.ckpt`` is unreadable (truncated, 0 bytes), the newest intact
  checkpoint of the folder (an ``epoch_NNN.ckpt``), saying which.
* :func:`remove_stale_temps` deletes the temp files a killed save left behind.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

# The logger keeps the name it had when this code lived in app/checkpoints.py: log lines stay as they were.
log = logging.getLogger("lipschitz_lightning.app.checkpoints")

ON_EXCEPTION = "on_exception.ckpt"
LAST = "last.ckpt"
TEMP_MARK = ".tmp-"

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
