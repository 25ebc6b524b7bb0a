"""Faults at a checkpoint save, and a run that waits, for the command-line tests (test helpers).

``FaultAtSave`` is the run's own checkpoint plugin (``AtomicCheckpointIO``, set through
``trainer.plugins=[...]``) with one fault at a chosen save or removal of a chosen file:

* ``fail_mid_write``: the kernel's file-size limit (``RLIMIT_FSIZE``) is lowered to half the
  checkpoint's size for that save, so the write fails partway with a real ``OSError``
  (``EFBIG``, "File too large"), as a full disk fails it with ``ENOSPC``;
* ``kill_mid_write``: the same, and the process then kills itself with SIGKILL, leaving the
  half-written file as a kill during the save does;
* ``kill_before_write``: SIGKILL when that save starts (after the epoch's earlier saves and removals);
* ``kill_before_remove``: SIGKILL right before that removal (after the new best checkpoint is saved).

``WaitForFile`` holds a run at its start (creates ``<flag>.started``, waits for ``<flag>.go``).
"""

from __future__ import annotations

import os
import resource
import signal
import time
from pathlib import Path
from typing import Any, Dict

import pytorch_lightning as pl

from lipschitz_lightning.app.checkpoints import AtomicCheckpointIO

FAULTS = ("fail_mid_write", "kill_mid_write", "kill_before_write", "kill_before_remove")


class FaultAtSave(AtomicCheckpointIO):
    def __init__(self, name: str, nth: int, fault: str) -> None:
        super().__init__()
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}; got {fault!r}")
        self.name, self.nth, self.fault = name, nth, fault
        self.saves = self.removals = 0

    def write(self, checkpoint: Dict[str, Any], handle: Any, path: str) -> None:
        if os.path.basename(path) != self.name or self.fault == "kill_before_remove":
            return super().write(checkpoint, handle, path)
        self.saves += 1
        if self.saves != self.nth:
            return super().write(checkpoint, handle, path)
        if self.fault == "kill_before_write":
            os.kill(os.getpid(), signal.SIGKILL)
        size = os.path.getsize(path) if os.path.exists(path) else 4096
        limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (max(1, size // 2), limits[1]))
        try:
            super().write(checkpoint, handle, path)
            handle.flush()
        except Exception:  # torch.save reports the failed write as a RuntimeError
            if self.fault == "kill_mid_write":
                os.kill(os.getpid(), signal.SIGKILL)
            raise
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
            signal.signal(signal.SIGXFSZ, previous)

    def remove_checkpoint(self, path: Any) -> None:
        if self.fault == "kill_before_remove" and os.path.basename(os.fspath(path)).startswith(self.name):
            self.removals += 1
            if self.removals == self.nth:
                os.kill(os.getpid(), signal.SIGKILL)
        super().remove_checkpoint(path)


class WaitForFile(pl.Callback):
    def __init__(self, flag: str, timeout: float = 600) -> None:
        self.flag, self.timeout = flag, timeout

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        Path(f"{self.flag}.started").touch()
        deadline = time.monotonic() + self.timeout
        while not Path(f"{self.flag}.go").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
