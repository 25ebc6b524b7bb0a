"""A callback that sends this process a real signal after a given training step (test helper).

Used through the command line (``+callbacks.signal._target_=tests._signal_at_step.SignalAtStep``)
so that a training subprocess is interrupted mid-epoch at a known step, through the same signal
handlers as a scheduler's SIGTERM or a user's Ctrl-C.
"""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class SignalAtStep(pl.Callback):
    def __init__(self, step: int, signum: str = "SIGTERM") -> None:
        self.step = step
        self.signum = getattr(signal, signum)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)
