"""Callbacks that keep a run honest: stop on non-finite values; checkpoint on interruption only
what can be resumed.

``StopOnNonFinite`` is the backstop for every optimizer: a loss or weight that is NaN or
infinite stops the run at once with :class:`NonFiniteError` (one line: which epoch and step,
what to try), instead of training on to the last epoch at chance accuracy.

``OnExceptionCheckpoint`` is Lightning's, except that it writes nothing when there is nothing
to resume: before the first training step (a bad input found in ``setup``) and when the weights
are non-finite.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torchmetrics import Metric

from lipschitz_lightning.app.checkpoints import CheckpointSaveError

__all__ = ["NonFiniteError", "OnExceptionCheckpoint", "StopOnNonFinite"]


class NonFiniteError(RuntimeError):
    """The training loss or the weights became NaN or infinite (one-line message)."""


class StopOnNonFinite(pl.Callback):
    """Stop training when the loss or the weights stop being finite.

    The loss is checked every ``check_every_n_steps`` optimizer steps (a device-side flag is
    kept per step, read on the host only then: one sync per check), and the weights at the end
    of every training epoch.

    Args:
        check_every_n_steps: How often the host reads the loss flag (1: every step).

    Raises:
        ValueError: If ``check_every_n_steps < 1``.

    Example::

        trainer = pl.Trainer(callbacks=[StopOnNonFinite()])
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        if isinstance(check_every_n_steps, bool) or not isinstance(check_every_n_steps, int) or check_every_n_steps < 1:
            raise ValueError(f"StopOnNonFinite: check_every_n_steps must be an int >= 1; got {check_every_n_steps!r}")
        self.check_every_n_steps = check_every_n_steps
        self._bad: Optional[torch.Tensor] = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        bad = ~torch.isfinite(loss.detach()).all()
        self._bad = bad if self._bad is None else self._bad | bad
        if (batch_idx + 1) % self.check_every_n_steps == 0:
            self._check_loss(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_loss(trainer, pl_module)
        finite = torch.stack([torch.isfinite(p.detach()).all() for p in pl_module.parameters()]).all()
        if not bool(finite):
            self._stop(trainer, pl_module, "the weights")

    def _check_loss(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bad, self._bad = self._bad, None
        if bad is not None and bool(bad):
            self._stop(trainer, pl_module, "the training loss")

    @staticmethod
    def _stop(trainer: pl.Trainer, pl_module: pl.LightningModule, what: str) -> None:
        lrs = sorted({float(g["lr"]) for opt in trainer.optimizers for g in opt.param_groups})
        saved = _latest_checkpoint(trainer)
        where = (f"the last finite epoch is in {saved}" if saved is not None
                 else "no checkpoint was written before it (nothing to resume)")
        raise NonFiniteError(
            f"{what} became NaN or infinite in epoch {trainer.current_epoch + 1} (step {trainer.global_step}) "
            f"at learning rate {', '.join(f'{lr:.4g}' for lr in lrs)}: try a smaller rate (optim.optimizer.lr=), "
            f"a LipschitzLR optim (optim=sgd), or standardised inputs; {where}"
        )


def _latest_checkpoint(trainer: pl.Trainer) -> Optional[str]:
    """The newest checkpoint file of this run that exists: what the checkpoint callbacks wrote (their
    last and best paths), or the checkpoint the run resumed from; ``None`` if there is none."""
    candidates = {getattr(trainer, "ckpt_path", None)}
    for callback in trainer.checkpoint_callbacks:
        candidates.update({getattr(callback, "last_model_path", None), getattr(callback, "best_model_path", None)})
    existing = [str(p) for p in candidates if p and os.path.isfile(str(p))]
    return max(existing, key=os.path.getmtime) if existing else None


class OnExceptionCheckpoint(pl.callbacks.OnExceptionCheckpoint):
    """Lightning's ``OnExceptionCheckpoint`` (``<dirpath>/on_exception.ckpt`` when fit is
    interrupted), writing nothing before the first training step, nothing for non-finite
    weights (such a checkpoint could only be resumed into the same failure) and nothing outside
    fit (a failed test leaves the run's checkpoints as they were).

    The checkpoint also holds the interrupted epoch's running training metrics (torchmetrics
    accumulators, which Lightning does not save), restored when the resumed run starts, so the
    epoch's logged loss and accuracy cover all its batches.

    Args:
        dirpath: Folder of the checkpoint.
        filename: Its name without ``.ckpt``.
    """

    def __init__(self, dirpath: str, filename: str = "on_exception") -> None:
        super().__init__(dirpath, filename)
        self._running: Dict[str, Dict[str, torch.Tensor]] = {}

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, NonFiniteError) or trainer.state.fn != TrainerFn.FITTING:
            return
        # A save that failed (full disk, I/O error): another one would fail the same way; its
        # message names the checkpoint that is intact.
        if isinstance(exception, CheckpointSaveError):
            return
        if trainer.fit_loop.epoch_loop.batch_progress.total.completed == 0 and trainer.global_step == 0:
            return
        if trainer.training:
            self._running = {
                name: {key: value.detach().cpu().clone() for key, value in metric.metric_state.items()
                       if isinstance(value, torch.Tensor)}
                for name, metric in pl_module.named_modules()
                if isinstance(metric, Metric) and name.startswith("train") and metric.update_count > 0
            }
        try:
            super().on_exception(trainer, pl_module, exception)
        finally:
            self._running = {}

    def state_dict(self) -> Dict[str, Any]:
        return {"running_metrics": self._running} if self._running else {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._running = dict(state_dict.get("running_metrics", {}))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        running, self._running = self._running, {}
        for name, states in running.items():
            metric = pl_module.get_submodule(name)
            for key, value in states.items():
                setattr(metric, key, value.to(pl_module.device))
