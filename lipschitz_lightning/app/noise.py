"""Messages no user of the app can act on, silenced in one place.

``DropNoise`` is a logging filter for the run's handlers (``conf/hydra/default.yaml``): Lightning's
advertisement for its cloud logger and its note that a ``limit_*_batches`` of 1.0 uses every batch.
"""

from __future__ import annotations

import logging
import re

__all__ = ["NOISE_LOG_LINES", "DropNoise"]

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
