"""A learning-rate schedule the benchmark harness adds to a baseline from the command line.

:class:`CosineDecay` decays the optimizer's configured rate to zero on a cosine, per step:
``lr(t) = peak * (1 + cos(pi t / T)) / 2`` with ``T`` the run's total optimizer steps (Loshchilov &
Hutter, SGDR, 2017). With ``optim=momentum_fixed optim.optimizer.lr=0.1`` it is the tuned
SGD-momentum baseline of the longer suites (``conf/suite/cifar10_long.yaml``); the rate found by
a learning-rate finder and then decayed the same way is :class:`~lipschitz_lightning.bench.callbacks.LRFinderCosine`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import pytorch_lightning as pl

__all__ = ["CosineDecay", "cosine_rate", "set_rate"]


def cosine_rate(peak: float, trainer: pl.Trainer) -> float:
    """``peak * (1 + cos(pi t / T)) / 2`` at the trainer's global step ``t`` of ``T`` in all."""
    total = max(int(trainer.estimated_stepping_batches), 1)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(trainer.global_step / total, 1.0)))


def set_rate(trainer: pl.Trainer, lr: float) -> None:
    """Write ``lr`` into every param group of every optimizer."""
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr


class CosineDecay(pl.Callback):
    """Set every param group's rate to ``peak * (1 + cos(pi t / T)) / 2`` before each training step.

    ``peak`` is the optimizer's own rate when the fit starts (``optim.optimizer.lr``), kept in the
    checkpoint, so a resumed run decays from the same peak; ``t`` is the global step, so the rate
    of a resumed run is that of the uninterrupted one.
    """

    def __init__(self) -> None:
        self.peak_lr: Optional[float] = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.peak_lr is None and trainer.optimizers:
            self.peak_lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.peak_lr is not None:
            set_rate(trainer, cosine_rate(self.peak_lr, trainer))

    def state_dict(self) -> Dict[str, Any]:
        return {"peak_lr": self.peak_lr}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.peak_lr = state_dict.get("peak_lr")
