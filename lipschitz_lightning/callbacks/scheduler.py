"""The rate scheduler of ``LipschitzLR``: the rule's update, the caps, the one write of the rate
into the optimizer, and the epoch's log.

It holds the rule's running state (:class:`SchedulerState`: the rate in force, the EWMAs, the
epochs done). The math is :func:`~lipschitz_lightning.math.rules.epoch_bound` and
:func:`~lipschitz_lightning.math.rules.next_rate`; this part calls it and writes the result.
Every write of the rate goes through :meth:`RateScheduler.write` (times each group's ``lr_scale``);
the per-step path is :meth:`RateScheduler.on_step` (``per_step``: the rate rescaled at every
optimizer step from that step's statistic, a device tensor written in place) beside
:meth:`RateScheduler.on_batch_start`, where the time decay runs.

Logged once per epoch (through ``pl_module.log``, so they reach the logger and
``trainer.callback_metrics``):

* ``lipschitz/lr`` -- the rate used during the epoch that just ended (with first-epoch checks, the
  last rate in force in the first epoch),
* ``lipschitz/next_lr`` -- the rate computed for the coming epoch,
* ``lipschitz/L``, ``lipschitz/K_z``, ``lipschitz/W`` -- this epoch's bound and statistics,
* ``lipschitz/K1``, ``lipschitz/K2`` -- the EWMA states (AdaMo, RMSprop, Auto-Adam),
* ``lipschitz/grad_max_over_L`` -- the largest last-layer gradient entry seen this epoch (weight
  decay included) over this epoch's bound; the theory holds while it stays <= 1,
* ``lipschitz/capped`` and ``lipschitz/bound_invalid`` -- 1 when a safety cap bound, or when the
  bound was non-positive/NaN/inf and the previous rate was kept,
* ``lipschitz/rollbacks`` -- (guard on) the number of epochs rolled back so far,
* ``lipschitz/ceiling_bound`` -- (guard on) 1 when the coming epoch's rate is held at the guard's
  ceiling (after a rollback, or because the rule's rate is above the ceiling),
* ``lipschitz/polyak`` -- (``polyak=True``) the epoch's mean factor of the capped Polyak step
  (:mod:`~lipschitz_lightning.callbacks.polyak`; 1: every step at the rule's rate).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from lipschitz_lightning.callbacks.policy import check_optimizer, optimizer_fit
from lipschitz_lightning.math import bounds
from lipschitz_lightning.math.losses import get_loss
from lipschitz_lightning.math.rules import (
    EpochStats,
    Rule,
    RuleHyper,
    RuleState,
    apply_caps,
    Statistic,
    epoch_bound,
    get_rule,
    next_rate,
    time_decay,
)
from lipschitz_lightning.math.statistics import HeadStats
from lipschitz_lightning.math.updates import per_step_rate

#: The per-step rate's EWMA of the steps' preconditioned ratio (about the last 10 steps), and its
#: band around the epoch's rate when the rule has no growth cap.
STEP_SMOOTHING = 0.9
STEP_GROWTH = 4.0

__all__ = ["RateScheduler", "SchedulerState", "is_positive_number"]


def is_positive_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@dataclass
class SchedulerState:
    """The scheduler's checkpointed state (keys of ``LipschitzLR.state_dict``).

    Attributes:
        lr: the rate in force for the current epoch (None before the first).
        K1, K2, t: the rule's EWMA state (:class:`~lipschitz_lightning.math.rules.RuleState`).
        epochs_done: epochs finished, rolled back ones included.
        warned_invalid: the unusable-bound warning was given.
        epoch_max_lr: the largest rate in force in this epoch so far.
        step_ratio, ratio_ref: (``per_step``) the steps' EWMA of ``g^T D g / ||D g||^2`` and the
            ratio the rate in force was computed from.
    """

    lr: Optional[float] = None
    K1: float = 0.0
    K2: float = 0.0
    t: int = 0
    epochs_done: int = 0
    warned_invalid: bool = False
    epoch_max_lr: Optional[float] = None
    step_ratio: float = 0.0
    ratio_ref: float = 0.0

    @classmethod
    def from_state(cls, state: Dict[str, Any]) -> "SchedulerState":
        lr = state.get("lr")
        return cls(lr=lr, K1=float(state.get("K1", 0.0)), K2=float(state.get("K2", 0.0)), t=int(state.get("t", 0)),
                   epochs_done=int(state.get("epochs_done", 0)), warned_invalid=bool(state.get("warned_invalid", False)),
                   epoch_max_lr=state.get("epoch_max_lr", lr), step_ratio=float(state.get("step_ratio", 0.0)),
                   ratio_ref=float(state.get("ratio_ref", 0.0)))


class RateScheduler:
    """The rule's update, caps and the writing and logging of the rate (see module docstring).

    Args are ``LipschitzLR``'s of the same names (checked here, once).
    """

    def __init__(self, rule: str, loss: str, k: Optional[int] = None, weight_decay: Optional[float] = None,
                 betas: Union[float, Sequence[float], None] = None, eps: float = 1e-7, bias_correction: bool = False,
                 decay: float = 0.0, max_lr: Optional[float] = None, max_growth: Optional[float] = None,
                 per_step: bool = False) -> None:
        if k is not None and (not isinstance(k, int) or k < 1):
            raise ValueError(f"LipschitzLR: k must be a positive integer; got {k!r}")
        if weight_decay is not None and not (weight_decay >= 0):
            raise ValueError(f"LipschitzLR: weight_decay must be >= 0; got {weight_decay!r}")
        if betas is not None:
            bs = [betas] if isinstance(betas, (int, float)) else list(betas)
            if not 1 <= len(bs) <= 2 or not all(0.0 <= float(b) < 1.0 for b in bs):
                raise ValueError(f"LipschitzLR: betas must be one or two numbers in [0, 1); got {betas!r}")
        if not eps >= 0:
            raise ValueError(f"LipschitzLR: eps must be >= 0; got {eps!r}")
        if not decay >= 0:
            raise ValueError(f"LipschitzLR: decay must be >= 0; got {decay!r}")
        if max_lr is not None and not is_positive_number(max_lr):
            raise ValueError(f"LipschitzLR: max_lr must be a positive number; got {max_lr!r}")
        if max_growth is not None and not is_positive_number(max_growth):
            raise ValueError(f"LipschitzLR: max_growth must be a positive number; got {max_growth!r}")
        if per_step and Statistic.PRECONDITIONED not in get_rule(rule).statistics:
            raise ValueError(f"LipschitzLR: per_step=True needs a rule with a per-step statistic (precond); got {rule!r}")
        if per_step and decay:
            raise ValueError("LipschitzLR: per_step=True and decay > 0 both change the rate at every step; pick one")
        self.rule = rule
        self.loss = loss
        self.k = k
        self.weight_decay = weight_decay
        self.betas = betas
        self.eps = float(eps)
        self.bias_correction = bool(bias_correction)
        self.decay = float(decay)
        self.max_lr = max_lr
        self.max_growth = max_growth
        self.per_step = bool(per_step)
        self.state = SchedulerState()
        self._step_ratio: Optional[torch.Tensor] = None  # the per-step EWMA, on the device
        # Per-run wiring (setup / on_fit_start).
        self.hyper = RuleHyper(eps=self.eps, bias_correction=self.bias_correction)
        self.weight_decay_in_use = 0.0
        self.classes = 0

    @property
    def entry(self) -> Rule:
        """The rule's registry entry (looked up, not stored: the callback pickles for ddp_spawn)."""
        return get_rule(self.rule)

    @property
    def lr(self) -> Optional[float]:
        return self.state.lr

    @property
    def rule_state(self) -> RuleState:
        return RuleState(K1=self.state.K1, K2=self.state.K2, t=self.state.t)

    @rule_state.setter
    def rule_state(self, value: RuleState) -> None:
        self.state.K1, self.state.K2, self.state.t = value.K1, value.K2, value.t

    # ------------------------------------------------------------------ wiring

    def set_classes(self, head_outputs: int, head_name: Optional[str]) -> None:
        """``k``: the argument, else the head's outputs (``setup``)."""
        self.classes = self.k if self.k is not None else head_outputs
        if get_loss(self.loss).output_per_class and self.classes < 2:
            raise ValueError(
                f"LipschitzLR: loss {self.loss!r} needs k >= 2 classes; the head {head_name!r} "
                f"has {head_outputs} output(s) (use loss='bce' for one sigmoid output)"
            )

    def fit_start(self, trainer: pl.Trainer) -> None:
        """Check the optimizer and take its weight decay and betas (``on_fit_start``)."""
        if len(trainer.optimizers) != 1:
            raise ValueError(f"LipschitzLR schedules exactly one optimizer; got {len(trainer.optimizers)}")
        optimizer = trainer.optimizers[0]
        check_optimizer(self.rule, optimizer)
        group = optimizer.param_groups[0]
        if self.weight_decay is None:
            self.weight_decay_in_use = max(float(g.get("weight_decay", 0.0) or 0.0) for g in optimizer.param_groups)
        else:
            self.weight_decay_in_use = float(self.weight_decay)
        fit = optimizer_fit(self.rule, optimizer)
        momentum, dampening = fit.momentum(group)
        self.hyper = RuleHyper(betas=self._resolve_betas(fit.betas(group)), eps=self.eps, bias_correction=self.bias_correction,
                               momentum=momentum, dampening=dampening)
        if trainer.lr_scheduler_configs:
            rank_zero_warn("LipschitzLR sets the learning rate itself; the configured LR scheduler will fight it")
        if self.per_step:
            if callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None)):
                raise ValueError(
                    f"LipschitzLR(per_step=True) writes the rate as a device tensor at every step; "
                    f"{type(optimizer).__name__} takes its rate as a Python number (use torch.optim.Adam or "
                    f"AdamW, or per_step=False)")
            device = optimizer.param_groups[0]["params"][0].device
            self._step_ratio = torch.tensor(self.state.step_ratio, device=device)
            for group in optimizer.param_groups:  # once: a tensor the steps then write in place
                group["lr"] = torch.tensor(float(group["lr"]), device=device)

    def _resolve_betas(self, optimizer_betas: Tuple[float, float]) -> Tuple[float, float]:
        b1, b2 = optimizer_betas
        if self.betas is None:
            return b1, b2
        if isinstance(self.betas, (int, float)):
            beta = float(self.betas)
            return (b1, beta) if self.entry.single_beta == 1 else (beta, b2)
        bs = [float(b) for b in self.betas]
        return (bs[0], bs[-1])

    # ------------------------------------------------------------------ the math

    def bound(self, stats: HeadStats) -> EpochStats:
        return epoch_bound(self.rule, stats, self.loss, self.classes, self.weight_decay_in_use)

    def plain_update(self, bound: EpochStats) -> float:
        """The rule's first update, bias-corrected, without momentum's gain (``smooth``: the plain
        ``1/beta``; momentum earns its gain over the next epochs, under the rule's growth cap)."""
        hyper = RuleHyper(betas=self.hyper.betas, eps=self.eps, bias_correction=True)
        lr, _ = next_rate(self.rule, RuleState(), bound, hyper)
        return lr

    def full_update(self, bound: EpochStats) -> float:
        """The rule's update from a fresh state, momentum's gain included."""
        lr, _ = next_rate(self.rule, RuleState(), bound, self.hyper)
        return lr

    def candidate(self, bound: EpochStats, stats: HeadStats, epoch: int) -> Tuple[float, Optional[RuleState]]:
        """The next rate and state from this epoch's bound; ``(current rate, None)`` when the bound
        is unusable (warned once)."""
        new_lr, new_state = next_rate(self.rule, self.rule_state, bound, self.hyper)
        if bounds.is_valid_bound(bound.L) and stats.k_z > 0 and bounds.is_valid_bound(new_lr):
            return new_lr, new_state
        if not self.state.warned_invalid:
            rank_zero_warn(
                f"LipschitzLR: epoch {epoch} gave an unusable bound (L={bound.L}, "
                f"K_z={stats.k_z}, W={stats.w_max}, K_a={stats.k_a}, |y|={stats.y_norm}, "
                f"candidate lr={new_lr}); keeping lr={self.lr}"
            )
            self.state.warned_invalid = True
        return self.lr, None

    def capped(self, new_lr: float, ceiling: Optional[float], epoch: int) -> Tuple[float, bool]:
        """``new_lr`` under ``max_lr``, the guard's ``ceiling`` and the growth cap."""
        max_lr = self.max_lr if ceiling is None else min(self.max_lr or math.inf, ceiling)
        new_lr, capped = apply_caps(new_lr, self.lr, max_lr, self.max_growth)
        if capped:
            rank_zero_info(f"LipschitzLR: capped the rate of epoch {epoch + 1} at {new_lr:.6g}")
        return new_lr, capped

    # ------------------------------------------------------------------ writing the rate

    def start(self, trainer: pl.Trainer, lr: float, state: RuleState) -> None:
        """The first epoch's rate and the rule's seeded state."""
        self.state.lr = float(lr)
        self.rule_state = state
        self.write(trainer, self.state.lr)

    def start_epoch(self) -> None:
        self.state.epoch_max_lr = self.lr

    def set_within_epoch(self, trainer: pl.Trainer, lr: float) -> None:
        """A new rate in the middle of an epoch (the first epoch's checks)."""
        self.state.lr = float(lr)
        self.state.epoch_max_lr = max(self.state.epoch_max_lr or 0.0, self.state.lr)
        self.write(trainer, self.state.lr)

    def end_epoch(self, trainer: pl.Trainer, lr: float, state: Optional[RuleState]) -> None:
        """The coming epoch's rate (and the rule's state, unless it is kept)."""
        if state is not None:
            self.rule_state = state
        self.state.lr = float(lr)
        self.state.epochs_done += 1
        self.write(trainer, time_decay(self.lr, self.decay, trainer.global_step) if self.decay else self.lr)

    def on_batch_start(self, trainer: pl.Trainer) -> None:
        """Per step: the Keras time decay on top of the epoch's rate (off by default)."""
        if self.decay > 0 and self.lr is not None:
            self.write(trainer, time_decay(self.lr, self.decay, trainer.global_step))

    def write(self, trainer: pl.Trainer, lr: float) -> None:
        """The one place the rate enters the optimizer (times each group's ``lr_scale``)."""
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                if torch.is_tensor(group["lr"]):
                    group["lr"].fill_(lr * group.get("lr_scale", 1.0))
                else:
                    group["lr"] = lr * group.get("lr_scale", 1.0)

    def set_reference(self, ratio: float) -> None:
        """(``per_step``) The preconditioned ratio the rate in force was computed from."""
        if self.per_step:
            self.state.ratio_ref = float(ratio)

    def on_step(self, trainer: pl.Trainer, terms: Optional[torch.Tensor]) -> None:
        """(``per_step``) After each optimizer step: the next step's rate from this step's
        ``[g^T D g, ||D g||^2]`` (:func:`~lipschitz_lightning.math.updates.per_step_rate`), written
        in place into the optimizer's tensor rates. Device tensors only: no host sync; the terms
        come from the all-reduced gradient and the optimizer's state, so every rank gets the same."""
        if not self.per_step or terms is None or self.lr is None or not self.state.ratio_ref > 0:
            return
        rate, self._step_ratio = per_step_rate(self.lr, self._step_ratio, terms, self.state.ratio_ref,
                                               STEP_SMOOTHING, self.max_growth or STEP_GROWTH)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                if torch.is_tensor(group["lr"]):
                    group["lr"].copy_(rate * group.get("lr_scale", 1.0))

    # ------------------------------------------------------------------ logging

    def log(self, pl_module: pl.LightningModule, stats: HeadStats, bound: EpochStats, used_lr: float,
            capped: bool, invalid: bool, extra: Dict[str, float], raw_extra: Dict[str, float]) -> Dict[str, float]:
        """Log the epoch's keys (module docstring of ``LipschitzLR``) and return every value,
        the raw statistics included (``LipschitzLR.last_stats``)."""
        metrics = {
            "lipschitz/lr": used_lr,
            "lipschitz/next_lr": self.lr,
            "lipschitz/L": bound.L,
            "lipschitz/K_z": stats.k_z,
            "lipschitz/W": stats.w_max,
            "lipschitz/capped": float(capped),
            "lipschitz/bound_invalid": float(invalid),
        }
        for name in self.entry.logged:
            metrics[f"lipschitz/{name}"] = getattr(self.state, name)
        metrics.update(extra)
        if self.entry.bounds_gradient and math.isfinite(stats.grad_max) and bounds.is_valid_bound(bound.L):
            metrics["lipschitz/grad_max_over_L"] = stats.grad_max / bound.L
        raw = {"K_z": stats.k_z, "S": stats.s, "K_a": stats.k_a, "y_norm": stats.y_norm, "W": stats.w_max,
               "grad_max": stats.grad_max, "m": stats.m, **raw_extra}
        with warnings.catch_warnings():
            # The values are identical on every rank: no need for Lightning's sync_dist advice.
            warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
            pl_module.log_dict(metrics, on_step=False, on_epoch=True, batch_size=1, sync_dist=False)
        # TensorBoard's x axis is the global step; the same values against the epoch (0-based) line
        # up runs with different steps per epoch. Plain floats, written by rank 0's writer only.
        for logger in pl_module.loggers:
            if isinstance(logger, pl.loggers.TensorBoardLogger):
                for key, value in metrics.items():
                    logger.experiment.add_scalar(f"lipschitz_by_epoch/{key[len('lipschitz/'):]}", float(value),
                                                 global_step=pl_module.current_epoch)
        return dict(raw, **{k.split("/")[1]: v for k, v in metrics.items()})

    def state_dict(self) -> Dict[str, Any]:
        if self._step_ratio is not None:  # a host copy at checkpoints only
            self.state.step_ratio = float(self._step_ratio)
        return asdict(self.state)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.state = SchedulerState.from_state(state)
        if self._step_ratio is not None:
            self._step_ratio.fill_(self.state.step_ratio)
