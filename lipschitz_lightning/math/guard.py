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

After a rollback (``retry_rate``, ``lift_ceiling``) the retried epoch runs at ``shrink`` times the
largest rate in force in the failed epoch, and at no more than the rule's own rate for the weights
it restarts from when that is known (in the first epoch: the rate of its first step's statistics,
those of the initial weights; the first-epoch checks may have cut the failed epoch's later rates
from features the failure itself blew up, and a quarter of such a rate is no measure of what the
restored weights can take). That rate is the guard's ceiling, and each healthy epoch doubles it
(``factor``) until the rule's rate no longer reaches it; then it is removed. Without the lift a
ceiling taken from a wrecked first epoch (quickstart at ``lr.first_epoch=1000``: 1.3e-6) held
every later epoch at a rate that could not train.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

__all__ = ["DRIFT_EPOCHS", "drifted", "lift_ceiling", "loss_rose", "mean", "mean_and_se", "retry_rate"]


def mean(values: Sequence[float]) -> float:
    """The mean of ``values`` (NaN for none)."""
    return sum(values) / len(values) if values else math.nan


def mean_and_se(values: Sequence[float]) -> Tuple[float, float]:
    """The mean of ``values`` and its standard error (sample deviation / sqrt(n); 0 for one value)."""
    if not values:
        return math.nan, math.nan
    return mean(values), _sd(values) / math.sqrt(len(values))


def _sd(values: Sequence[float]) -> float:
    """The sample standard deviation (0 for one value)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


#: The smallest rise of the loss, as a fraction of the run's initial loss, that the guard takes
#: for a failure.
MIN_RISE = 1e-3


def loss_rose(reference: float, reference_se: float, losses: Sequence[float], factor: float, z: float,
              initial: float) -> Optional[float]:
    """The epoch's loss that rose well above ``reference``, or ``None`` if it did not.

    Both the mean over all of the epoch's step losses and the mean over its last quarter are tested
    (the first catches a spike the epoch recovered from, the second a late rise). A part fails when
    its mean exceeds ``factor * reference`` and exceeds the reference either by more than ``z`` times
    ``sqrt(se_part^2 + reference_se^2)`` or by more than ``(factor - 1) * initial`` (``initial``: the
    run's first step loss). ``se_part`` is the standard deviation of all the epoch's step losses
    over the square root of the part's length (a last quarter of one step still has a spread).
    Returns the failing part's mean (the larger if both fail). A rise of less than
    :data:`MIN_RISE` times the initial loss is never a failure: it is the noise of a run that has
    converged (digits MLP, AdamW at the preconditioned rate: 4.2e-5 -> 1.5e-4 against an initial
    2.3 was rolled back five times in a row and stopped the run).

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
        if mean > factor * reference and rise > MIN_RISE * initial and (rise > z * noise or rise > (factor - 1) * initial):
            risen.append(mean)
    return max(risen) if risen else None


#: Epochs in a row that must drift (:func:`drifted`) before the guard rolls the last one back.
DRIFT_EPOCHS = 2


def drifted(loss: float, best: Optional[float], rate: float, previous_rate: Optional[float], margin: float,
            initial: float) -> bool:
    """The epoch drifted: it ran at more than ``(1 + margin)`` times the rate of the epoch before
    it, and its mean loss is above ``(1 + margin)`` times ``best``, the lowest mean loss of the
    accepted epochs before it (and above it by more than :data:`MIN_RISE` times ``initial``, the
    run's first step loss). A rate that moves by less (a rule's rate on features that hardly
    change) is not a rise.

    One such epoch is a rate rise the network may still absorb (digits MLP, ``precond``: the mean
    loss 0.13 -> 0.30 as its rate tripled at epoch 2, then it trained on to 97%); :data:`DRIFT_EPOCHS`
    in a row is a rate that keeps growing while the network keeps getting worse, each epoch by
    less than the loss test's factor (CIFAR-10, ResNet20, ``curvature_momentum``: rates 1.15, 4.23,
    5.33, 9.80, mean losses 0.98, 1.25, 1.24, 1.59, validation 65% -> 11%). ``margin`` 0: off.

    Example: best 0.98, margin 0.1: ``drifted(1.25, 0.98, 4.23, 1.15, 0.1, 2.3)`` is True;
    ``drifted(1.25, 0.98, 1.2, 1.15, 0.1, 2.3)`` (the rate up by 4%) and ``drifted(1.0, 0.98, 4.23,
    1.15, 0.1, 2.3)`` (within the margin) are False.
    """
    if margin <= 0 or best is None or previous_rate is None:
        return False
    return rate > (1 + margin) * previous_rate and loss > (1 + margin) * best and loss - best > MIN_RISE * initial


def retry_rate(failed_max: float, shrink: float, restored: Optional[float] = None) -> float:
    """The rate of the epoch retried after a rollback (and the guard's ceiling from then on).

    ``shrink`` times ``failed_max``, the largest rate in force during the failed epoch, but not
    above ``restored``: the rule's own rate for the weights the retry starts from, when known
    (``None``, NaN, infinite or non-positive: unknown).

    Example: a first epoch that started at 1000, whose first step's statistics gave the rule's rate
    0.1: ``retry_rate(1000, 0.25, 0.1) == 0.1``; a later epoch at 0.4: ``retry_rate(0.4, 0.25) == 0.1``.
    """
    rate = shrink * failed_max
    if restored is not None and math.isfinite(restored) and 0 < restored < rate:
        return float(restored)
    return float(rate)


def lift_ceiling(ceiling: Optional[float], rate: float, factor: float) -> Optional[float]:
    """The guard's ceiling after a healthy (accepted) epoch whose rule proposes ``rate`` next.

    The ceiling is multiplied by ``factor``; once ``rate`` no longer exceeds the lifted ceiling it
    does not bind and is removed (``None``). ``factor`` 1 keeps the ceiling for the rest of the run
    (the guard without the lift). ``None`` stays ``None``.

    Example: ceiling 0.01, factor 2: a rule that proposes 0.05 is capped at 0.02, then 0.04, then
    (0.05 <= 0.08) the ceiling is gone: ``lift_ceiling(0.01, 0.05, 2) == 0.02``,
    ``lift_ceiling(0.04, 0.05, 2) is None``.
    """
    if ceiling is None:
        return None
    if factor == 1:
        return ceiling
    lifted = ceiling * factor
    return None if rate <= lifted else lifted
