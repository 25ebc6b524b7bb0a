"""Lightning callbacks: ``LipschitzLR`` gathers statistics and schedules the learning rate;
``StopOnNonFinite`` and ``OnExceptionCheckpoint`` keep runs resumable and failures visible."""

from lipschitz_lightning.callbacks.lipschitz_lr import LipschitzLR, LipschitzLRError, check_optimizer, find_head
from lipschitz_lightning.callbacks.safety import NonFiniteError, OnExceptionCheckpoint, StopOnNonFinite

__all__ = [
    "LipschitzLR",
    "LipschitzLRError",
    "NonFiniteError",
    "OnExceptionCheckpoint",
    "StopOnNonFinite",
    "check_optimizer",
    "find_head",
]
