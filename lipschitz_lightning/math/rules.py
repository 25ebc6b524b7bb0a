"""The four learning-rate rules of LipschitzLR (paper section 6; spec section 3).

Contract: statistics gathered during epoch ``t`` produce the rate of epoch ``t + 1``. Each rule is
a pure function ``(state, stats, hyper) -> (lr, new_state)``; the torch optimizer itself is never
changed, only its ``lr``. EWMA states start at 0 (AdaMo's ``K`` is seeded with the first-epoch
rate ``x``, as in the paper's section 7.3.1 and the reference code).

| rule      | update                                            | rate                         |
|-----------|---------------------------------------------------|------------------------------|
| ``sgd``     | --                                              | ``1 / L``                     |
| ``adamo``   | ``K1 <- b K1 + (1-b) L``                         | ``1 / K1``                    |
| ``rmsprop`` | ``K2 <- b K2 + (1-b) G2``                        | ``(sqrt(K2) + eps) / K_z``    |
| ``adam``    | ``K1 <- b1 K1 + (1-b1) L``, ``K2 <- b2 K2 + (1-b2) G2`` | ``(sqrt(K2) + eps) / K1`` |

With bias correction (paper 6.4, off by default) each EWMA is divided by ``1 - beta^t`` before
use, ``t`` being the number of updates so far (1 after the first epoch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional, Tuple

__all__ = [
    "RULES",
    "RuleState",
    "EpochStats",
    "RuleHyper",
    "ewma",
    "bias_corrected",
    "adaptive_sgd",
    "adamo",
    "adaptive_rmsprop",
    "auto_adam",
    "next_rate",
    "initial_state",
    "default_first_epoch_lr",
    "apply_caps",
    "time_decay",
]


@dataclass(frozen=True)
class RuleState:
    """EWMA state carried from epoch to epoch.

    Attributes:
        K1: EWMA of the Lipschitz constant L (AdaMo's ``K``, Auto-Adam's ``K1``).
        K2: EWMA of the second-moment estimate G2 (RMSprop, Auto-Adam).
        t: number of updates so far (used by bias correction).
    """

    K1: float = 0.0
    K2: float = 0.0
    t: int = 0


@dataclass(frozen=True)
class EpochStats:
    """What one epoch's statistics give the rules.

    Attributes:
        L: the Lipschitz bound (data term plus regularisation).
        G2: the second-moment estimate (:func:`~lipschitz_lightning.math.bounds.second_moment_estimate`).
        k_z: the largest Frobenius norm of a batch of head inputs.
    """

    L: float
    G2: float
    k_z: float


@dataclass(frozen=True)
class RuleHyper:
    """Hyperparameters of a rule: ``betas`` is ``(beta1, beta2)``; one-beta rules use ``beta1``
    (AdaMo) or ``beta2`` (RMSprop)."""

    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-7
    bias_correction: bool = False


def ewma(previous: float, new: float, beta: float) -> float:
    """``beta * previous + (1 - beta) * new``."""
    return beta * previous + (1.0 - beta) * new


def bias_corrected(value: float, beta: float, t: int) -> float:
    """``value / (1 - beta^t)`` (paper 6.4); ``t >= 1``."""
    if t < 1:
        raise ValueError(f"bias correction needs t >= 1; got t={t}")
    return value / (1.0 - beta**t)


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, with ``inf`` for a zero denominator (caught as unusable)."""
    return numerator / denominator if denominator else math.inf


def _maybe_corrected(value: float, beta: float, t: int, hyper: RuleHyper) -> float:
    return bias_corrected(value, beta, t) if hyper.bias_correction else value


def adaptive_sgd(state: RuleState, stats: EpochStats, hyper: RuleHyper) -> Tuple[float, RuleState]:
    """Adaptive SGD: ``lr = 1 / L``; no state beyond the epoch count."""
    return _ratio(1.0, stats.L), replace(state, t=state.t + 1)


def adamo(state: RuleState, stats: EpochStats, hyper: RuleHyper) -> Tuple[float, RuleState]:
    """AdaMo (paper Algorithm 1): ``K <- b K + (1-b) L``, ``lr = 1 / K`` with ``b = betas[0]``."""
    beta = hyper.betas[0]
    t = state.t + 1
    k1 = ewma(state.K1, stats.L, beta)
    return _ratio(1.0, _maybe_corrected(k1, beta, t, hyper)), replace(state, K1=k1, t=t)


def adaptive_rmsprop(
    state: RuleState, stats: EpochStats, hyper: RuleHyper
) -> Tuple[float, RuleState]:
    """Adaptive RMSprop (reference code): ``K2 <- b K2 + (1-b) G2``, ``lr = (sqrt(K2)+eps)/K_z``
    with ``b = betas[1]``."""
    beta = hyper.betas[1]
    t = state.t + 1
    k2 = ewma(state.K2, stats.G2, beta)
    lr = _ratio(math.sqrt(max(_maybe_corrected(k2, beta, t, hyper), 0.0)) + hyper.eps, stats.k_z)
    return lr, replace(state, K2=k2, t=t)


def auto_adam(state: RuleState, stats: EpochStats, hyper: RuleHyper) -> Tuple[float, RuleState]:
    """Auto-Adam (paper Algorithm 3): EWMAs of L and G2, ``lr = (sqrt(K2)+eps)/K1``."""
    b1, b2 = hyper.betas
    t = state.t + 1
    k1 = ewma(state.K1, stats.L, b1)
    k2 = ewma(state.K2, stats.G2, b2)
    k1_hat = _maybe_corrected(k1, b1, t, hyper)
    k2_hat = _maybe_corrected(k2, b2, t, hyper)
    lr = _ratio(math.sqrt(max(k2_hat, 0.0)) + hyper.eps, k1_hat)
    return lr, RuleState(K1=k1, K2=k2, t=t)


Rule = Callable[[RuleState, EpochStats, RuleHyper], Tuple[float, RuleState]]

#: Rule name -> update function (the names the callback and configs use).
RULES: dict[str, Rule] = {
    "sgd": adaptive_sgd,
    "adamo": adamo,
    "rmsprop": adaptive_rmsprop,
    "adam": auto_adam,
}

#: The first-epoch rate each rule uses without an override: "auto" = computed from a probe of the
#: initial weights; AdaMo and Auto-Adam use the paper's fixed values (7.3.1, spec section 3).
_DEFAULT_FIRST_EPOCH = {"sgd": "auto", "adamo": 0.1, "rmsprop": "auto", "adam": 1e-3}


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {sorted(RULES)}")


def next_rate(
    rule: str, state: RuleState, stats: EpochStats, hyper: RuleHyper
) -> Tuple[float, RuleState]:
    """Rate for the next epoch and the updated state, for the named rule."""
    _check_rule(rule)
    return RULES[rule](state, stats, hyper)


def initial_state(rule: str, first_epoch_lr: Optional[float]) -> RuleState:
    """State before the first update: zeros, except AdaMo's ``K`` seeded with ``x``."""
    _check_rule(rule)
    if rule == "adamo" and first_epoch_lr is not None:
        return RuleState(K1=float(first_epoch_lr))
    return RuleState()


def default_first_epoch_lr(rule: str) -> float | str:
    """The paper's first-epoch choice for ``rule``: a float, or ``"auto"`` (probe)."""
    _check_rule(rule)
    return _DEFAULT_FIRST_EPOCH[rule]


def apply_caps(
    lr: float,
    previous_lr: Optional[float],
    max_lr: Optional[float] = None,
    max_growth: Optional[float] = None,
) -> Tuple[float, bool]:
    """Clamp ``lr`` to ``max_lr`` and to ``max_growth * previous_lr``; report whether a cap bound.

    Both caps are off (``None``) by default so the paper's rule stays faithful.
    """
    capped = lr
    if max_lr is not None:
        capped = min(capped, max_lr)
    if max_growth is not None and previous_lr is not None and previous_lr > 0:
        capped = min(capped, max_growth * previous_lr)
    return capped, capped < lr


def time_decay(lr: float, decay: float, iterations: int) -> float:
    """Keras' time-based decay ``lr / (1 + decay * iterations)`` (reference code, spec 6)."""
    return lr / (1.0 + decay * iterations)
