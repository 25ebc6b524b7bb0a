"""The first epoch's rate of ``LipschitzLR``: a number, or ``"auto"`` (a probe of the initial
weights), and optionally its re-checks at the first epoch's optimizer steps 1, 2, 4, 8, ...

The features of the initial weights are small, so a rate computed from them can be far too large
once training has grown them: each check recomputes the rule's plain step from the steps so far
and lowers the rate if it fell. With ``growth`` g the rate is ``base * gain``: ``base`` is that
lowered plain step, and ``gain`` (from 1) is multiplied by g at each check that shows the rate in
force to be safe (:func:`steady`), up to the rule's full gain (momentum's ``(1+mu)/(1-d)``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Union

from lipschitz_lightning.callbacks.errors import LipschitzLRError
from lipschitz_lightning.callbacks.scheduler import is_positive_number
from lipschitz_lightning.math import bounds
from lipschitz_lightning.math.guard import mean
from lipschitz_lightning.math.losses import get_loss
from lipschitz_lightning.math.rules import EpochStats
from lipschitz_lightning.math.statistics import HeadStats

__all__ = ["FirstEpochRate", "FirstEpochState", "STEADY", "steady"]

#: A first-epoch check may raise the rate (``growth``) only while the largest ``||A||_F^2`` of its
#: last window of steps stays below ``1/STEADY`` times the window before's: the features are not
#: growing (the largest of a few more batches scatters by a few percent; the digits MLP's features
#: grow several-fold between checks). See :func:`steady`.
STEADY = 0.9


@dataclass
class FirstEpochState:
    """Checkpointed (keys of ``LipschitzLR.state_dict``).

    Attributes:
        start_rate: the rule's plain rate on the first step's statistics (the weights the epoch
            started from) in an epoch with checks: the most a retry of that epoch may run at.
        first_epoch: ``[plain base rate, momentum gain earned so far]`` of the checks.
    """

    start_rate: Optional[float] = None
    first_epoch: List[float] = field(default_factory=lambda: [math.inf, 1.0])

    @classmethod
    def from_state(cls, state: Dict[str, Any], lr: Optional[float]) -> "FirstEpochState":
        default = [lr if lr is not None else math.inf, 1.0]
        return cls(start_rate=state.get("start_rate"), first_epoch=list(state.get("first_epoch") or default))


class FirstEpochRate:
    """The first epoch's rate and its checks (see module docstring).

    Args:
        lr: a positive number, or ``"auto"`` (the rule's first update on a no-grad probe).
        checks: re-check the rate at the first epoch's steps 1, 2, 4, 8, ...
        growth: with the checks, the factor by which a check may raise the rate (1: off; None: off).
        probe_batches: training batches per rank of the ``"auto"`` probe.
        follow: each check sets the base rate to the rule's plain step on the steps so far, raising
            it as well as lowering it (a rule whose bound needs gradients: no probe can give its
            first rate, and ``lr`` is the first step's only).
    """

    def __init__(self, lr: Union[float, str], checks: bool = False, growth: Optional[float] = None,
                 probe_batches: int = 4, follow: bool = False) -> None:
        if lr != "auto" and not is_positive_number(lr):
            raise ValueError(f"LipschitzLR: first_epoch_lr must be a positive number, 'auto' or None; got {lr!r}")
        if growth is not None and not (is_positive_number(growth) and growth >= 1):
            raise ValueError(f"LipschitzLR: first_epoch_growth must be a number >= 1 (1: off); got {growth!r}")
        if not isinstance(probe_batches, int) or probe_batches < 1:
            raise ValueError(f"LipschitzLR: init_probe_batches must be a positive integer; got {probe_batches!r}")
        self.lr = lr
        self.checks = bool(checks)
        self.growth = None if growth is None else float(growth)
        self.probe_batches = probe_batches
        self.follow = bool(follow)
        self.state = FirstEpochState()

    def begin(self, lr: float) -> None:
        """The first epoch (or its retry after a rollback) starts at ``lr``: the checks start from it."""
        self.state.first_epoch = [lr, 1.0]

    def start_epoch(self) -> None:
        self.state.start_rate = None

    def due(self, steps: int, accepted_epochs: int, last: bool) -> bool:
        """A check runs after steps 1, 2, 4, 8, ... of a first epoch (not after its last step)."""
        return self.checks and accepted_epochs == 0 and not last and steps > 0 and steps & (steps - 1) == 0

    def probe_rate(self, lr: float, bound: EpochStats, stats: HeadStats, loss: str) -> float:
        """The ``"auto"`` rate from the probe's bound, or a clear error when it is unusable."""
        if bounds.is_valid_bound(lr) and bounds.is_valid_bound(bound.L):
            return float(lr)
        detail = (
            f"the least-squares bound (K_a - |y|) K_z / m is negative while the outputs "
            f"(K_a={stats.k_a:.4g}) are smaller than the targets (|y|={stats.y_norm:.4g})"
            if get_loss(loss).bound_needs_targets else f"L={bound.L:.4g}, K_z={stats.k_z:.4g}"
        )
        raise LipschitzLRError(
            f"LipschitzLR: the first-epoch probe of the initial weights gave no usable rate ({detail}); "
            f"give the first epoch a rate: first_epoch_lr=<a positive number> (lr.first_epoch=... "
            f"on the command line)"
        )

    def check(self, steps: int, stats: HeadStats, bound: EpochStats, plain: float, full: float,
              ceiling: Optional[float]) -> Optional[float]:
        """The rate after the check at step ``steps`` (``plain``: the rule's plain step on the
        steps so far; ``full``: its full update), or ``None`` when the bound is unusable."""
        if not (bounds.is_valid_bound(plain) and bounds.is_valid_bound(bound.L)):
            return None
        if steps == 1:
            self.state.start_rate = float(plain)
        base, gain = self.state.first_epoch
        if self.growth is not None and steady(stats):
            gain = min(gain * self.growth, max(1.0, full / plain))
        base = plain if self.follow else min(base, plain)
        self.state.first_epoch = [base, gain]
        return base * gain if ceiling is None else min(base * gain, ceiling)

    def state_dict(self) -> Dict[str, Any]:
        return asdict(self.state)

    def load_state_dict(self, state: Dict[str, Any], lr: Optional[float]) -> None:
        self.state = FirstEpochState.from_state(state, lr)



def steady(stats: HeadStats) -> bool:
    """Whether the first epoch's last two windows of steps (``(n/4, n/2]`` and ``(n/2, n]`` at
    check ``n``) show the rate in force to be safe: the features did not grow (the largest
    ``||A||_F^2`` rose by less than ``1/STEADY``) and the mean loss fell, and is below the initial
    loss (the first step's). Never at check 1 (its statistics are those of the initial weights,
    before any update)."""
    n = len(stats.step_losses)
    if n < 2 or len(stats.step_norms) != n:
        return False
    now, before = slice(n // 2, n), slice(n // 4, n // 2)
    grown = max(stats.step_norms[now]) ** 2 > max(stats.step_norms[before]) ** 2 / STEADY
    loss_now, loss_before = mean(stats.step_losses[now]), mean(stats.step_losses[before])
    return not grown and loss_now < loss_before and loss_now < stats.step_losses[0]
