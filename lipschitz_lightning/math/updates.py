"""The rules' updates as pure functions ``(state, stats, hyper) -> (lr, new_state)``, and the
values they exchange (:class:`RuleState`, :class:`EpochStats`, :class:`RuleHyper`).

Each update turns one epoch's bound into the next rate (table in :mod:`~lipschitz_lightning.math.rules`,
which files each update in its registry with the bound it is fed). Pure math: no torch optimizer, no
Lightning (:func:`per_step_rate` works on device tensors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Tuple

import torch

__all__ = ["EpochStats", "RuleHyper", "RuleState", "adamo", "adaptive_rmsprop", "adaptive_sgd", "auto_adam",
           "bias_corrected", "ewma", "momentum_step", "adam_edge_step",
           "per_step_rate", "polyak_factor"]


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
    (AdaMo) or ``beta2`` (RMSprop). ``momentum`` and ``dampening`` are the SGD optimizer's (the
    ``smooth`` rule scales its step by them)."""

    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-7
    bias_correction: bool = False
    momentum: float = 0.0
    dampening: float = 0.0


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


def momentum_step(state: RuleState, stats: EpochStats, hyper: RuleHyper) -> Tuple[float, RuleState]:
    """``lr = (1 + mu) / ((1 - d) L)``: half the edge of stability of heavy-ball momentum on an
    ``L``-smooth quadratic, ``lr (1 - d) h < 2 (1 + mu)`` for SGD with momentum ``mu`` and dampening
    ``d``; plain SGD gets the classical safe step ``1/L``. The classic (``d = 0``) and EWMA
    (``d = mu``) velocities get the same trajectory."""
    scale = (1.0 + hyper.momentum) / (1.0 - hyper.dampening) if hyper.dampening < 1.0 else 1.0
    return scale * _ratio(1.0, stats.L), replace(state, t=state.t + 1)


def adam_edge_step(state: RuleState, stats: EpochStats, hyper: RuleHyper) -> Tuple[float, RuleState]:
    """``lr = (1 + b1) / ((1 - b1) S)``, ``S = stats.L`` the preconditioned sharpness along Adam's
    step: half the edge of stability of Adam with ``beta1 = b1`` (stable while
    ``S < (2 + 2 b1) / ((1 - b1) lr)``, 38/lr for 0.9; Cohen et al. 2022), as ``momentum_step`` is
    half the edge of heavy-ball momentum. ``b1`` is ``hyper.momentum`` (0: the plain ``1/S``, the
    first-epoch checks' base step; the callback passes Adam's ``beta1``)."""
    b1 = hyper.momentum
    scale = (1.0 + b1) / (1.0 - b1) if b1 < 1.0 else 1.0
    return scale * _ratio(1.0, stats.L), replace(state, t=state.t + 1)


def per_step_rate(rate: float, ratio_ewma: torch.Tensor, terms: torch.Tensor, ratio_ref: float, smoothing: float,
                  growth: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step of a per-step rate, on the device (no host sync): the epoch's ``rate``
    scaled by the EWMA ``r_t`` of the steps' ``g^T D g / ||D g||^2`` over the ratio ``ratio_ref``
    the rate was computed from, ``rate * r_t / ratio_ref``, kept within ``[rate / growth, rate * growth]``.
    ``terms`` is the step's ``[g^T D g, ||D g||^2]``; a step without a gradient (``||D g||^2 = 0``)
    leaves the EWMA as it was. Returns ``(rate_t, new ratio_ewma)``.

    Since the rate is ``gain / S`` with ``S = beta / ratio``, this is the same rule with the
    epoch's curvature ``beta`` and the step's own preconditioned ratio (docs/rules.md section 9)."""
    q, p = terms[0], terms[1]
    step_ratio = q / p.clamp_min(torch.finfo(p.dtype).tiny)
    blended = torch.where(ratio_ewma > 0, smoothing * ratio_ewma + (1.0 - smoothing) * step_ratio, step_ratio)
    new_ewma = torch.where(p > 0, blended, ratio_ewma)
    scaled = torch.where(new_ewma > 0, rate * new_ewma / ratio_ref, torch.full_like(new_ewma, rate))
    return scaled.clamp(rate / growth, rate * growth), new_ewma


def polyak_factor(loss: torch.Tensor, drift: torch.Tensor, step_sq_norm: torch.Tensor) -> torch.Tensor:
    """The fraction ``rho`` of the rule's step at which the point the next gradient is taken at
    reaches the zero of the loss's linear model, capped at the rule's step:
    ``rho = min(1, max(0, f + drift) / step_sq_norm)`` (docs/rules.md section 10), on the device.

    The optimizer's coming step moves that point by ``d - rho sum_i lr_i a_i g_i`` (``d`` the part
    that does not depend on the gradient, ``a_i`` the step's reach along ``-g_i``: Schedule-Free
    SGD's ``1 - b (1 - c)``, plain SGD's 1), so the linear model ``f + <g, d> - rho sum_i lr_i a_i
    ||g_i||^2`` is 0 at ``rho = (f + drift) / step_sq_norm`` with ``drift = <g, d>`` and
    ``step_sq_norm = sum_i lr_i a_i ||g_i||^2``; the loss's lower bound is 0. A gradient of 0 gives
    ``rho = 1``; a non-finite loss a non-finite ``rho`` (the guard's case, not hidden)."""
    target = (loss + drift).clamp_min(0.0)
    ratio = target / step_sq_norm.clamp_min(torch.finfo(step_sq_norm.dtype).tiny)
    return torch.where(step_sq_norm > 0, ratio.clamp(max=1.0), torch.ones_like(ratio))
