"""Callbacks that interrupt a training subprocess at a known step (test helpers).

Used through the command line (``+callbacks.signal._target_=tests._signal_at_step.SignalAtStep``)
so that a training subprocess is interrupted mid-epoch at a known step, through the same signal
handlers as a scheduler's SIGTERM or a user's Ctrl-C.

- :class:`SignalAtStep` sends this process a real signal after a given training step.
- :class:`WaitForSignalAtStep` writes a marker file after a given step and waits there until the
  test has signalled the whole process group (``os.killpg``), as ``scancel``, ``timeout`` or a
  terminal's Ctrl-C do: the DataLoader workers get the signal too.
- :class:`PeerFailsAtStep` makes one DDP rank die (``os._exit``) or stop answering (SIGSTOP) at a step.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytorch_lightning as pl


class SignalAtStep(pl.Callback):
    def __init__(self, step: int, signum: str = "SIGTERM") -> None:
        self.step = step
        self.signum = getattr(signal, signum)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class WaitForSignalAtStep(pl.Callback):
    """After training step ``step``: write ``marker`` and wait (at most ``wait_s``) for a stop signal."""

    def __init__(self, step: int, marker: str, wait_s: float = 60.0) -> None:
        self.step = step
        self.marker = Path(marker)
        self.wait_s = wait_s

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step != self.step or self.marker.exists():
            return
        self.marker.write_text(str(os.getpid()))
        deadline = time.monotonic() + self.wait_s
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)


class PeerFailsAtStep(pl.Callback):
    """Rank ``rank`` dies (``how="exit"``: ``os._exit(1)``) or freezes (``how="freeze"``: SIGSTOP,
    a process that neither answers its peers nor handles signals) after training step ``step``;
    ``marker`` (if given) is written first."""

    def __init__(self, step: int, rank: int = 1, how: str = "exit", marker: str = "") -> None:
        self.step = step
        self.rank = rank
        self.how = how
        self.marker = marker

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step != self.step or trainer.global_rank != self.rank:
            return
        if self.marker:
            Path(self.marker).write_text(str(os.getpid()))
        if self.how == "exit":
            os._exit(1)
        os.kill(os.getpid(), signal.SIGSTOP)
