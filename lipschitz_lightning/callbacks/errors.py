"""The error ``LipschitzLR`` raises when it cannot produce a usable rate."""

__all__ = ["LipschitzLRError"]


class LipschitzLRError(ValueError):
    """LipschitzLR cannot produce a usable rate (e.g. the probe's bound is not positive, or the
    guard rolled back too often); the message says what to set."""
