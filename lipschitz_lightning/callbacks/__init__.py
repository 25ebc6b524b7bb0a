"""Lightning callbacks: ``LipschitzLR`` gathers statistics and schedules the learning rate;
``StopOnNonFinite``, ``RunHealth`` and ``OnExceptionCheckpoint`` keep runs resumable and failures visible."""

from lipschitz_lightning.callbacks.lipschitz_lr import LipschitzLR, LipschitzLRError, find_head
from lipschitz_lightning.callbacks.policy import POLICIES, RulePolicy, check_optimizer
from lipschitz_lightning.callbacks.safety import NonFiniteError, OnExceptionCheckpoint, StopOnNonFinite
from lipschitz_lightning.callbacks.health import RunHealth, UnhealthyRunError

__all__ = [
    "LipschitzLR",
    "LipschitzLRError",
    "NonFiniteError",
    "OnExceptionCheckpoint",
    "POLICIES",
    "RulePolicy",
    "RunHealth",
    "StopOnNonFinite",
    "UnhealthyRunError",
    "check_optimizer",
    "find_head",
]
