"""Messages no user of the app can act on, silenced in one place.

``NOISE_WARNINGS`` are the Python warnings ``train`` ignores; ``DropNoise`` is a logging filter for
the run's handlers (``conf/hydra/default.yaml``): Lightning's advertisement for its cloud logger and
its note that a ``limit_*_batches`` of 1.0 uses every batch.
"""

from __future__ import annotations

import logging
import re

__all__ = ["NOISE_LOG_LINES", "NOISE_WARNINGS", "DropNoise"]

# Warnings (regular expressions for ``warnings.filterwarnings``): Lightning's advice about
# ckpt_path=None (a new run has nothing to resume: the app refuses a run folder that holds another
# run's checkpoints), about mid-epoch resume (the datamodules skip the finished batches, see
# BaseDataModule.state_dict), about a non-empty checkpoint folder (the same refusal; a resume writes
# into its own folder on purpose), about a training epoch shorter than the logging interval (the
# app's metrics are logged per epoch), about sync_dist for values already equal on every rank
# (LipschitzLR reduces its values across ranks itself), and dependencies' own deprecations.
NOISE_WARNINGS = (
    r".*\.fit\(ckpt_path=None\)` was called without a model",
    r'.*\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint',
    r"You're resuming from a checkpoint that ended before the epoch ended",
    r"Checkpoint directory .* exists and is not empty",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
    r".*self\.log\('lipschitz/.*sync_dist=True",
)

# Log lines (regular expressions, matched at the start of the message).
NOISE_LOG_LINES = (
    r".*Tip: For seamless cloud logging",
    r"`Trainer\(limit_(train|val|test|predict)_batches=1\.0\)` was configured so 100% of the batches",
)


class DropNoise(logging.Filter):
    """Drops the records whose message matches one of :data:`NOISE_LOG_LINES`."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._noise = re.compile("|".join(f"(?:{pattern})" for pattern in NOISE_LOG_LINES))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self._noise.match(record.getMessage())
