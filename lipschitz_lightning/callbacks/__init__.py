"""Lightning callbacks: ``LipschitzLR`` gathers statistics and schedules the learning rate."""

from lipschitz_lightning.callbacks.lipschitz_lr import LipschitzLR, LipschitzLRError, check_optimizer, find_head

__all__ = ["LipschitzLR", "LipschitzLRError", "check_optimizer", "find_head"]
