"""The rollback guard of ``LipschitzLR``: restore an epoch that failed and retry it slower.

The guard (on by default for every rule, the paper's four included; ``guard=False``, or
``optim.callback.guard=false`` in the app, is the raw rule) changes no rate until an epoch
fails, and each rollback is one WARNING log line. When an
epoch's training loss turns non-finite or its mean or end rises above ``guard_loss_factor`` times where it started
(the previous epoch's end; in the first epoch, the loss of the initial weights) by more than its
noise (``guard_loss_z`` standard errors; ``math.guard.loss_rose``), or the
head input's norm collapses below ``guard_collapse`` times its start, or the loss drifts up (two
epochs in a row, each at a rate more than ``guard_drift`` above the one before and with a mean loss
more than ``guard_drift`` above the best accepted epoch's; ``math.guard.drifted``), the weights and optimizer
state of the epoch's start are restored and the next epoch runs at ``guard_shrink`` times the
largest rate of the failed epoch (in the first epoch at most the rule's rate for the initial
weights, and with the first-epoch checks again), ``math.guard.retry_rate``. That rate caps the later
ones, a ceiling that each healthy epoch lifts by ``guard_lift`` until the rule's rate no longer
reaches it, when it is removed (``math.guard.lift_ceiling``).

The decisions read only reduced statistics, so they are identical on every rank.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from lipschitz_lightning.callbacks.errors import LipschitzLRError
from lipschitz_lightning.callbacks.scheduler import is_positive_number
from lipschitz_lightning.math.guard import DRIFT_EPOCHS, drifted, lift_ceiling, loss_rose, mean, mean_and_se
from lipschitz_lightning.math.rules import RuleState
from lipschitz_lightning.math.statistics import HeadStats

__all__ = ["GuardState", "RollbackGuard", "SNAPSHOTS"]

log = logging.getLogger("lipschitz_lightning.callbacks.lipschitz_lr")

SNAPSHOTS = ("device", "cpu")


@dataclass
class GuardState:
    """The guard's checkpointed state (keys of ``LipschitzLR.state_dict``).

    Attributes:
        rollbacks: epochs rolled back so far; consecutive_rollbacks: in a row.
        ceiling: the cap on the rate after a rollback (None: none).
        ceiling_bound: the coming epoch's rate is held at the ceiling.
        loss_reference, loss_reference_se: the last accepted epoch's final loss and its standard error.
        initial_loss: the run's first step loss (the guard's scale).
        best_loss: the lowest mean loss of an accepted epoch; last_rate: the largest rate in
            force in the last accepted epoch; drifts: the accepted epochs in a row that drifted.
    """

    rollbacks: int = 0
    consecutive_rollbacks: int = 0
    ceiling: Optional[float] = None
    ceiling_bound: bool = False
    loss_reference: Optional[float] = None
    loss_reference_se: float = 0.0
    initial_loss: Optional[float] = None
    best_loss: Optional[float] = None
    last_rate: Optional[float] = None
    drifts: int = 0

    @classmethod
    def from_state(cls, state: Dict[str, Any]) -> "GuardState":
        """Read with ``.get``: checkpoints from before the ceiling's lift lack some keys."""
        return cls(rollbacks=int(state.get("rollbacks", 0)),
                   consecutive_rollbacks=int(state.get("consecutive_rollbacks", 0)),
                   ceiling=state.get("ceiling"), ceiling_bound=bool(state.get("ceiling_bound", False)),
                   loss_reference=state.get("loss_reference"),
                   loss_reference_se=float(state.get("loss_reference_se") or 0.0),
                   initial_loss=state.get("initial_loss"), best_loss=state.get("best_loss"),
                   last_rate=state.get("last_rate"), drifts=int(state.get("drifts", 0)))


class RollbackGuard:
    """See module docstring; the arguments are ``LipschitzLR``'s ``guard_*`` (checked here, once).

    Args:
        enabled: the guard on; off, it never fires and logs nothing.
        loss_factor: an epoch fails when the mean loss of its steps, or of its last quarter,
            exceeds this times the reference: the previous accepted epoch's last-quarter mean, or in the
            first epoch the first step's loss (the loss of the initial weights)...
        loss_z: ... and exceeds the reference by more than this many standard errors of the
            difference (from the spread of the step losses), or by more than ``loss_factor - 1``
            times the run's initial loss, so that batch noise around a small loss is not taken for
            a rise (``math.guard.loss_rose``).
        collapse: an epoch fails when the mean ``||A||`` of its last quarter of steps falls
            below this times the mean of its first quarter (dead ReLUs).
        shrink: the retried epoch's rate, as a fraction of the failed one.
        snapshot: keep the epoch-start weights and optimizer state on the ``"device"``
            (fast) or on the ``"cpu"`` (for models whose copy does not fit next to them).
        max_rollbacks: consecutive rollbacks after which the run stops with a ``LipschitzLRError``.
        lift: after a rollback, each healthy epoch multiplies the guard's ceiling by this
            until the rule's rate no longer reaches it, and then removes it; 1: the ceiling stays
            for the rest of the run.
        drift: an epoch fails when it and the epoch before it each ran at more than ``1 + drift``
            times the rate of the epoch before, with a mean loss above ``1 + drift`` times the best
            accepted epoch's (``math.guard.drifted``); 0: off.

        (``LipschitzLR`` passes its ``guard_*`` arguments, and ``max_rollbacks``.)
    """

    def __init__(self, enabled: bool = True, loss_factor: float = 2.0, loss_z: float = 3.0, collapse: float = 1e-2,
                 shrink: float = 0.25, snapshot: str = "device", max_rollbacks: int = 5, lift: float = 2.0,
                 drift: float = 0.1) -> None:
        if not (isinstance(max_rollbacks, int) and max_rollbacks >= 1):
            raise ValueError(f"LipschitzLR: max_rollbacks must be a positive integer; got {max_rollbacks!r}")
        if not (is_positive_number(loss_factor) and loss_factor > 1):
            raise ValueError(f"LipschitzLR: guard_loss_factor must be a number > 1; got {loss_factor!r}")
        if isinstance(loss_z, bool) or not (isinstance(loss_z, (int, float)) and 0 <= loss_z < math.inf):
            raise ValueError(f"LipschitzLR: guard_loss_z must be a number >= 0; got {loss_z!r}")
        if not (isinstance(collapse, (int, float)) and 0 <= collapse < 1):
            raise ValueError(f"LipschitzLR: guard_collapse must be in [0, 1); got {collapse!r}")
        if not (is_positive_number(shrink) and shrink < 1):
            raise ValueError(f"LipschitzLR: guard_shrink must be in (0, 1); got {shrink!r}")
        if not (is_positive_number(lift) and lift >= 1):
            raise ValueError(f"LipschitzLR: guard_lift must be a number >= 1 (1: never lift the ceiling); got {lift!r}")
        if isinstance(drift, bool) or not (isinstance(drift, (int, float)) and 0 <= drift < math.inf):
            raise ValueError(f"LipschitzLR: guard_drift must be a number >= 0 (0: off); got {drift!r}")
        if snapshot not in SNAPSHOTS:
            raise ValueError(f"LipschitzLR: guard_snapshot must be one of {list(SNAPSHOTS)}; got {snapshot!r}")
        self.enabled = bool(enabled)
        self.loss_factor = float(loss_factor)
        self.loss_z = float(loss_z)
        self.collapse = float(collapse)
        self.shrink = float(shrink)
        self.snapshot_place = snapshot
        self.max_rollbacks = max_rollbacks
        self.lift = float(lift)
        self.drift = float(drift)
        self.state = GuardState()
        self._snapshot: Optional[Dict[str, Any]] = None  # the epoch's start (not saved at epoch ends)
        self._loaded_snapshot: Optional[Dict[str, Any]] = None  # a mid-epoch checkpoint's

    @property
    def ceiling(self) -> Optional[float]:
        return self.state.ceiling

    # ------------------------------------------------------------------ the epoch's start

    def start_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, rule_state: RuleState,
                    resumed_mid_epoch: bool) -> None:
        """Snapshot the epoch's start; for an epoch resumed mid-way, take the one its checkpoint
        held, so that the resumed epoch is guarded exactly as the uninterrupted one."""
        if not self.enabled:
            self._snapshot = None
        elif resumed_mid_epoch:
            self._snapshot = self._from_saved(self._loaded_snapshot, pl_module)
        else:
            target = self._target(pl_module)
            self._snapshot = {
                "model": to_device(pl_module.state_dict(), target),
                "optimizers": [to_device(o.state_dict(), target) for o in trainer.optimizers],
                "state": rule_state,
            }
        self._loaded_snapshot = None

    def _target(self, pl_module: pl.LightningModule) -> torch.device:
        return pl_module.device if self.snapshot_place == "device" else torch.device("cpu")

    def _from_saved(self, saved: Optional[Dict[str, Any]], pl_module: pl.LightningModule) -> Optional[Dict[str, Any]]:
        if saved is None:
            return None
        target = self._target(pl_module)
        state = saved["state"]
        return {
            "model": to_device(saved["model"], target),
            "optimizers": to_device(saved["optimizers"], target),
            "state": RuleState(K1=float(state["K1"]), K2=float(state["K2"]), t=int(state["t"])),
        }

    # ------------------------------------------------------------------ the epoch's end

    def failure(self, stats: HeadStats, rate: float) -> Optional[str]:
        """Why this epoch, whose largest rate in force was ``rate``, must be rolled back, or ``None``
        (always ``None`` when off)."""
        if self._snapshot is None:
            return None
        losses, norms = stats.step_losses, stats.step_norms
        finite = all(math.isfinite(x) for x in (*losses, *norms, stats.w_max, stats.k_z))
        if not finite:
            return "the training loss or the weights turned non-finite"
        if losses:
            s = self.state
            first = s.loss_reference is None
            start = losses[0] if first else s.loss_reference
            if s.initial_loss is None:
                s.initial_loss = losses[0]
            end = loss_rose(start, 0.0 if first else s.loss_reference_se, losses, self.loss_factor, self.loss_z,
                            s.initial_loss)
            if end is not None:
                return f"the training loss rose from {start:.4g} to {end:.4g}"
        if norms and self.collapse > 0:
            n = max(1, len(norms) // 4)
            start, end = mean(norms[:n]), mean(norms[-n:])
            if end < self.collapse * start:
                return f"the head input's norm collapsed from {start:.4g} to {end:.4g}"
        if self._drifted(stats, rate) and self.state.drifts + 1 >= DRIFT_EPOCHS:
            s = self.state
            return (f"the training loss drifted up for {DRIFT_EPOCHS} epochs as the rate rose (to {rate:.4g}): "
                    f"mean {mean(losses):.4g} against the best epoch's {s.best_loss:.4g}")
        return None

    def _drifted(self, stats: HeadStats, rate: float) -> bool:
        s = self.state
        return bool(stats.step_losses) and drifted(mean(stats.step_losses), s.best_loss, rate, s.last_rate,
                                                   self.drift, s.initial_loss or 0.0)

    def roll_back(self, trainer: pl.Trainer, pl_module: pl.LightningModule, reason: str, retry_lr: float) -> RuleState:
        """Restore the epoch's start; ``retry_lr`` becomes the ceiling. Returns the rule's state
        of the epoch's start.

        Raises:
            LipschitzLRError: more than ``max_rollbacks`` rollbacks in a row.
        """
        snapshot = self._snapshot
        with torch.no_grad():
            pl_module.load_state_dict(snapshot["model"])
        for optimizer, state in zip(trainer.optimizers, snapshot["optimizers"]):
            optimizer.load_state_dict(state)
        s = self.state
        s.rollbacks += 1
        s.consecutive_rollbacks += 1
        s.ceiling, s.ceiling_bound = retry_lr, True
        s.drifts = 0
        if s.consecutive_rollbacks > self.max_rollbacks:
            raise LipschitzLRError(
                f"LipschitzLR: epoch {trainer.current_epoch} failed after {self.max_rollbacks} rollbacks in a row "
                f"({reason}); lower the rate (first_epoch_lr, max_lr) or check the data"
            )
        # A log line (not a Python warning, which filters and PYTHONWARNINGS=ignore drop) each time.
        _log_rank_zero(
            f"LipschitzLR guard: in epoch {trainer.current_epoch} {reason}; restored the weights and optimizer "
            f"state of its start and retrying at lr={retry_lr:.6g} (rollback {s.rollbacks}; "
            f"guard=False for the raw rule)"
        )
        return snapshot["state"]

    def accept(self, stats: HeadStats, rate: float) -> None:
        """A healthy epoch (its largest rate in force ``rate``): its last quarter's loss is the next
        epoch's reference; its mean loss may be the best, or a drift."""
        s = self.state
        s.drifts = s.drifts + 1 if self._drifted(stats, rate) else 0
        s.last_rate = rate
        s.consecutive_rollbacks = 0
        s.ceiling_bound = False
        if stats.step_losses:
            s.best_loss = min(mean(stats.step_losses), s.best_loss if s.best_loss is not None else math.inf)
            s.loss_reference, s.loss_reference_se = mean_and_se(stats.step_losses[-max(1, len(stats.step_losses) // 4):])

    def lift_ceiling(self, rule_lr: float) -> Optional[float]:
        """After a healthy epoch whose rule gave ``rule_lr``: lift the ceiling (or remove it); the
        ceiling in force for the coming epoch."""
        s = self.state
        s.ceiling = lift_ceiling(s.ceiling, rule_lr, self.lift)
        s.ceiling_bound = s.ceiling is not None and rule_lr > s.ceiling
        return s.ceiling

    def metrics(self) -> Dict[str, float]:
        if not self.enabled:
            return {}
        return {"lipschitz/rollbacks": float(self.state.rollbacks),
                "lipschitz/ceiling_bound": float(self.state.ceiling_bound)}

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self, mid_epoch: bool) -> Dict[str, Any]:
        """The state; mid-epoch also the snapshot of the epoch's start (on the host, plain values,
        for ``weights_only`` loads)."""
        state: Dict[str, Any] = asdict(self.state)
        if mid_epoch and self._snapshot is not None:
            snapshot = self._snapshot
            state["guard_snapshot"] = {
                "model": to_device(snapshot["model"], torch.device("cpu")),
                "optimizers": to_device(snapshot["optimizers"], torch.device("cpu")),
                "state": {"K1": snapshot["state"].K1, "K2": snapshot["state"].K2, "t": snapshot["state"].t},
            }
        return state

    def load_state_dict(self, state: Dict[str, Any], mid_epoch: bool) -> None:
        self.state = GuardState.from_state(state)
        # Read with .get: checkpoints from before the snapshot was saved lack it (that epoch is unguarded).
        self._loaded_snapshot = state.get("guard_snapshot") if mid_epoch else None


def to_device(obj: Any, device: torch.device) -> Any:
    """A copy of ``obj`` with every tensor copied to ``device`` (dicts, lists and tuples walked)."""
    if torch.is_tensor(obj):
        return obj.detach().to(device, copy=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return copy.deepcopy(obj)



@rank_zero_only
def _log_rank_zero(message: str) -> None:
    log.warning(message)
