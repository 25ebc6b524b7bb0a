"""The rollback guard's test of an epoch's training loss (``docs/rules.md``, section 5).

An epoch fails when its training loss rose *well* above where it started: above ``factor`` times
the reference, and by more than its noise (``z`` standard errors of the difference) or by more than
``factor - 1`` times the run's initial loss. The reference is the mean step loss of the last quarter
of the previous accepted epoch (its standard error from the same steps), or in the first epoch the
first step's loss (no spread known). Requiring the rise to be more than noise is what keeps
batch-to-batch scatter from counting as a rise: near the end of training the mean loss is small
and the step losses scatter around it by more than the mean itself, so a quarter-epoch mean can be
twice the previous one by chance; rolled back for that, a retry at a smaller rate sees the same
scatter and the run fails after ``max_rollbacks`` retries (measured: digits MLP, seed 2 of the
benchmark, reference 0.027, every retry's mean about 0.06 at rates down to 2e-4). A rise by more
than the initial loss is a blow-up whatever the noise (a few steps at a huge loss the epoch then
recovered from, at chance level, have a large spread but must still fail).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

__all__ = ["loss_rose", "mean_and_se"]


def mean_and_se(values: Sequence[float]) -> Tuple[float, float]:
    """The mean of ``values`` and its standard error (sample deviation / sqrt(n); 0 for one value)."""
    if not values:
        return math.nan, math.nan
    return sum(values) / len(values), _sd(values) / math.sqrt(len(values))


def _sd(values: Sequence[float]) -> float:
    """The sample standard deviation (0 for one value)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def loss_rose(reference: float, reference_se: float, losses: Sequence[float], factor: float, z: float,
              initial: float) -> Optional[float]:
    """The epoch's loss that rose well above ``reference``, or ``None`` if it did not.

    Both the mean over all of the epoch's step losses and the mean over its last quarter are tested
    (the first catches a spike the epoch recovered from, the second a late rise). A part fails when
    its mean exceeds ``factor * reference`` and exceeds the reference either by more than ``z`` times
    ``sqrt(se_part^2 + reference_se^2)`` or by more than ``(factor - 1) * initial`` (``initial``: the
    run's first step loss). ``se_part`` is the standard deviation of all the epoch's step losses
    over the square root of the part's length (a last quarter of one step still has a spread).
    Returns the failing part's mean (the larger if both fail).

    Example (initial loss 2.3): reference 0.027 (se 0.01) and 40 step losses of mean 0.06, se 0.02:
    0.06 > 2 x 0.027, but the rise 0.033 is under 3 x 0.022 and under 2.3, so ``None`` (noise).
    Losses of mean 2.3, se 0.05: a failure.
    """
    if not losses:
        return None
    quarter = max(1, len(losses) // 4)
    # The step-to-step spread from all of the epoch's steps; a part of n steps has se = sd / sqrt(n).
    sd = _sd(losses)
    risen = []
    for part in (losses, losses[-quarter:]):
        mean, se = sum(part) / len(part), sd / math.sqrt(len(part))
        rise = mean - reference
        noise = math.sqrt(se ** 2 + (reference_se or 0.0) ** 2)
        if mean > factor * reference and (rise > z * noise or rise > (factor - 1) * initial):
            risen.append(mean)
    return max(risen) if risen else None
