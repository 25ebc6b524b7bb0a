"""Callbacks the benchmark harness adds to a training run (through Hydra, never by patching).

* :class:`BenchProbe` measures, per epoch, the wall seconds spent in training steps, the wall
  seconds since the fit began, the optimizer's state in bytes per parameter and the optimizer's
  effective learning rate, and logs them as ``bench/*`` metrics next to the run's own.
* :class:`LRFinderCosine` is SGD with momentum at a rate picked by Lightning's learning-rate finder
  (``Tuner.lr_find``'s machinery, :class:`pytorch_lightning.callbacks.LearningRateFinder`) and a
  per-step cosine decay to zero: the tuned baseline of the benchmark tables.

Neither does a host sync per step: the probe reads ``time.perf_counter`` only and synchronises the
device once per epoch.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateFinder

from lipschitz_lightning.bench.schedules import cosine_rate, set_rate

__all__ = ["BenchProbe", "LRFinderCosine", "effective_lr", "optimizer_state_bytes"]


def _tensor_bytes(value: Any, seen: set) -> int:
    """Bytes of every distinct tensor in ``value`` (a tensor, or lists/tuples/dicts of them)."""
    if isinstance(value, torch.Tensor):
        key = (value.data_ptr(), value.numel(), value.dtype)
        if value.numel() == 0 or key in seen:
            return 0
        seen.add(key)
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in value)
    return 0


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by ``optimizer`` beyond the parameters themselves.

    Counts every tensor in ``optimizer.state`` and every tensor kept in ``param_groups`` other
    than the parameters (DoG keeps its copy of the initial weights there, as ``init_buffer``).
    Python scalars are not counted. A tensor referenced twice is counted once.
    """
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    seen: set = set()
    total = 0
    for state in optimizer.state.values():
        total += _tensor_bytes(state, seen)
    for group in optimizer.param_groups:
        for key, value in group.items():
            if key == "params":
                continue
            if isinstance(value, (list, tuple)):
                value = [v for v in value if id(v) not in params]
            total += _tensor_bytes(value, seen)
    return total


def _as_float(value: Any) -> Optional[float]:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().max().item() if value.numel() else None
    if isinstance(value, (list, tuple)):
        values = [_as_float(v) for v in value]
        values = [v for v in values if v is not None]
        return max(values) if values else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def effective_lr(optimizer: torch.optim.Optimizer) -> Optional[float]:
    """The step size the optimizer applies now, largest over its param groups.

    ``lr`` times the learning-rate-free methods' estimate where they keep one in the group:
    ``d`` (Prodigy, D-Adaptation, Prodigy+ScheduleFree), or DoG's per-parameter ``eta`` (largest).
    """
    best: Optional[float] = None
    for group in optimizer.param_groups:
        lr = _as_float(group.get("lr"))
        if lr is None:
            continue
        if "d" in group:
            d = _as_float(group["d"])
            lr = lr * d if d is not None else lr
        elif "eta" in group:
            eta = _as_float(group["eta"])
            lr = eta if eta is not None else lr
        best = lr if best is None else max(best, lr)
    return best


class BenchProbe(pl.Callback):
    """Per-epoch cost figures of a run, logged as ``bench/*`` (CSV/TensorBoard like any metric).

    * ``bench/train_seconds``: wall seconds from the epoch's first training batch start to its last
      training batch end (validation excluded);
    * ``bench/steps``: optimizer steps (training batches) of the epoch;
    * ``bench/step_seconds``: ``train_seconds / steps``;
    * ``bench/elapsed_seconds``: wall seconds since ``setup("fit")`` at this epoch's validation end
      (a learning-rate finder or a first-epoch probe is included: they are the method's cost);
    * ``bench/state_bytes_per_param``: :func:`optimizer_state_bytes` over the parameter count;
    * ``bench/lr``: :func:`effective_lr` at the epoch's end.
    """

    def __init__(self) -> None:
        self._t_setup: Optional[float] = None
        self._t_first: Optional[float] = None
        self._t_last: Optional[float] = None
        self._steps = 0
        self._train: Dict[str, float] = {}

    @staticmethod
    def _sync(pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._t_setup = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(pl_module)
        self._t_first, self._t_last, self._steps = None, None, 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._t_first is None:
            self._t_first = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._steps += 1
        self._t_last = time.perf_counter()

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validation runs inside the training epoch: stamp the training part before it starts.
        if trainer.sanity_checking or self._t_first is None or self._train:
            return
        self._sync(pl_module)
        seconds = time.perf_counter() - self._t_first
        self._train = {"bench/train_seconds": seconds, "bench/steps": float(self._steps),
                       "bench/step_seconds": seconds / max(self._steps, 1)}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._train and self._t_first is not None:  # no validation this epoch
            self.on_validation_epoch_start(trainer, pl_module)
        metrics = dict(self._train)
        self._train = {}
        self._sync(pl_module)
        if self._t_setup is not None:
            metrics["bench/elapsed_seconds"] = time.perf_counter() - self._t_setup
        params = sum(p.numel() for p in pl_module.parameters())
        optimizers = trainer.optimizers
        if optimizers and params:
            metrics["bench/state_bytes_per_param"] = sum(optimizer_state_bytes(o) for o in optimizers) / params
            lr = effective_lr(optimizers[0])
            if lr is not None:
                metrics["bench/lr"] = lr
        for name, value in metrics.items():
            pl_module.log(name, float(value), on_step=False, on_epoch=True, sync_dist=False)


class LRFinderCosine(LearningRateFinder):
    """Pick the rate with Lightning's learning-rate finder, then decay it to 0 on a cosine per step.

    Before the first training step (``on_fit_start``) the finder sweeps ``num_training_steps``
    steps from ``min_lr`` to ``max_lr`` on a copy of the run's state (restored afterwards) and
    suggests the rate of steepest loss descent; that rate, times ``factor``, is written into every
    param group and becomes the peak of ``lr(t) = peak * (1 + cos(pi t / T)) / 2``, ``T`` being the
    run's total optimizer steps. A resumed run keeps the peak it found (saved in the checkpoint).

    Raises:
        RuntimeError: the finder could not suggest a rate (too few steps).
    """

    def __init__(self, min_lr: float = 1e-5, max_lr: float = 1.0, num_training_steps: int = 100,
                 factor: float = 1.0, mode: str = "exponential") -> None:
        super().__init__(min_lr=min_lr, max_lr=max_lr, num_training_steps=num_training_steps, mode=mode,
                         update_attr=False)
        self.factor = factor
        self.peak_lr: Optional[float] = None

    @property
    def num_training_steps(self) -> int:
        """The steps the finder's sweep takes (Lightning's finder keeps the value private)."""
        return self._num_training_steps

    def lr_find(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The sweep takes its ``num_training_steps`` even in a run of fewer epochs than that needs."""
        loop = trainer.fit_loop
        saved = loop.max_epochs
        if saved is not None and saved != -1:
            loop.max_epochs = max(saved, trainer.current_epoch + self._num_training_steps)
        try:
            super().lr_find(trainer, pl_module)
        finally:
            loop.max_epochs = saved

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.peak_lr is None:
            self.lr_find(trainer, pl_module)
            suggestion = self.optimal_lr.suggestion() if self.optimal_lr is not None else None
            if suggestion is None:
                raise RuntimeError("LRFinderCosine: the learning-rate finder could not suggest a rate "
                                   f"(fewer than {self._num_training_steps} usable steps?)")
            self.peak_lr = float(suggestion) * self.factor
        set_rate(trainer, self.peak_lr)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        set_rate(trainer, cosine_rate(self.peak_lr, trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("bench/lr_find", float(self.peak_lr), on_step=False, on_epoch=True)

    def state_dict(self) -> Dict[str, Any]:
        return {"peak_lr": self.peak_lr}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.peak_lr = state_dict.get("peak_lr")
