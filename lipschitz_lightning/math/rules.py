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
| ``auto_adam`` | ``K1 <- b1 K1 + (1-b1) L``, ``K2 <- b2 K2 + (1-b2) G2`` | ``(sqrt(K2) + eps) / K1`` |

With bias correction (paper 6.4, off by default) each EWMA is divided by ``1 - beta^t`` before
use, ``t`` being the number of updates so far (1 after the first epoch).

Beyond the paper (``docs/rules.md``): ``adamo_consistent`` (AdaMo with ``K`` seeded at ``1/x``),
``gradbound`` (``1/G`` with a provable bound ``G`` on every gradient entry), ``smooth``
(``1/beta``, ``beta`` the smoothness of the loss in the head's weights, scaled for momentum) and
``curvature`` (the same step from the head's curvature at the weights the epoch visited).

A rule is one :class:`Rule` entry of :data:`RULES`: its update, the bound it feeds the update
with (:func:`epoch_bound`), its first-epoch default, the statistics it needs (:class:`Statistic`),
how it seeds its state, the keys it logs and the optimizer it assumes (:class:`OptimizerKind`).
A rule's earlier name stays accepted (:data:`RULE_ALIASES`, resolved by :func:`canonical_rule`).
Pure math: no torch optimizer and no Lightning here. The callback's policy around a rule (guard,
growth cap, first-epoch checks) is ``LipschitzLR``'s arguments, set in ``conf/optim/<rule>.yaml``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Callable, FrozenSet, Optional, Tuple, Union

from lipschitz_lightning.math import bounds
from lipschitz_lightning.math.losses import LOSSES, last_layer_smoothness, loss_coefficient
from lipschitz_lightning.math.statistics import HeadStats
from lipschitz_lightning.math.updates import (  # re-exported: the rules' updates and their values
    EpochStats,
    RuleHyper,
    RuleState,
    adamo,
    adaptive_rmsprop,
    adaptive_sgd,
    auto_adam,
    bias_corrected,
    adam_edge_step,
    ewma,
    momentum_step,
)

__all__ = [
    "RULES",
    "RULE_ALIASES",
    "Rule",
    "canonical_rule",
    "Statistic",
    "OptimizerKind",
    "get_rule",
    "epoch_bound",
    "paper_bound",
    "gradient_bound",
    "smoothness_bound",
    "curvature_bound",
    "preconditioned_bound",
    "momentum_step",
    "adam_edge_step",
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


Update = Callable[[RuleState, EpochStats, RuleHyper], Tuple[float, RuleState]]
Bound = Callable[[HeadStats, str, int, float], EpochStats]


# --- the bound each rule feeds its update with ------------------------------------------------


def paper_bound(stats: HeadStats, loss: str, k: int, weight_decay: float) -> EpochStats:
    """The paper's ``L = c K_z + lambda W`` and ``G2`` (spec sections 2-3)."""
    m = max(stats.m, 1.0)
    coefficient = loss_coefficient(loss, k, m, stats.k_a, stats.y_norm)
    L = coefficient * stats.k_z + bounds.l2_term(weight_decay, stats.w_max)
    G2 = bounds.second_moment_estimate(coefficient, stats.k_z, stats.s, weight_decay, stats.w_max)
    return EpochStats(L=L, G2=G2, k_z=stats.k_z)


def gradient_bound(stats: HeadStats, loss: str, k: int, weight_decay: float) -> EpochStats:
    """``G = max_l ||A_:l||_1 / m + lambda max|W|``: provably >= every entry of the head's gradient
    (:func:`~lipschitz_lightning.math.bounds.gradient_entry_bound`)."""
    G = bounds.gradient_entry_bound(stats.column_l1, weight_decay, stats.head_abs_max)
    return EpochStats(L=G, G2=G * G, k_z=stats.k_z)


def curvature_bound(stats: HeadStats, loss: str, k: int, weight_decay: float) -> EpochStats:
    """``beta = lambda_max(A^T C A) / m + lambda``, ``C`` the examples' curvature weights at their
    logits: the head's curvature at the weights the epoch visited (the largest over its steps),
    at most :func:`smoothness_bound`'s global ``beta`` (docs/rules.md)."""
    return EpochStats(L=stats.curvature + weight_decay, G2=0.0, k_z=stats.k_z)


def preconditioned_bound(stats: HeadStats, loss: str, k: int, weight_decay: float) -> EpochStats:
    """``S = beta sum ||D g||^2 / sum g^T D g``: the head's curvature ``beta`` (:func:`curvature_bound`)
    seen along Adam's preconditioned steps ``D g`` (docs/rules.md section 9). ``inf`` (an unusable
    bound, the rate kept) before any gradient was seen."""
    beta = stats.curvature + weight_decay
    rho = stats.precond_ratio
    return EpochStats(L=beta / rho if rho > 0 else math.inf, G2=0.0, k_z=stats.k_z)


def smoothness_bound(stats: HeadStats, loss: str, k: int, weight_decay: float) -> EpochStats:
    """``beta = h ||A||_2^2 / m + lambda`` (:func:`~lipschitz_lightning.math.losses.last_layer_smoothness`)."""
    beta = last_layer_smoothness(stats.spectral, loss, weight_decay)
    return EpochStats(L=beta, G2=0.0, k_z=stats.k_z)


# --- what a rule needs beyond the bound's basic statistics ------------------------------------


class Statistic(enum.Enum):
    """An optional per-step statistic a rule's bound needs, beyond ``||A||_F``, ``m``, the loss and
    the head's weights that every rule gets (``math.statistics.StepLayout`` has its columns)."""

    #: ``||A * A||_F^2``, the ``S`` of the second-moment estimate ``G2`` (RMSprop, Auto-Adam).
    SQUARES = "A4"
    #: ``sum_i |a_il|`` per input feature (``gradbound``'s provable gradient bound).
    COLUMN_L1 = "colabs"
    #: an upper bound on ``||A||_2^2`` per step (``smooth``).
    SPECTRAL = "spec"
    #: an upper bound on ``lambda_max(A^T C A)`` per step (``curvature``; needs the logits).
    CURVATURE = "curv"
    #: ``g^T D g`` and ``||D g||^2`` per step, ``D`` the Adam-family optimizer's preconditioner
    #: (``precond``; read from the optimizer's state before its step).
    PRECONDITIONED = "precond"


class OptimizerKind(enum.Enum):
    """The optimizer a rule's derivation assumes (the callback checks the torch optimizer against
    it and reads the betas from it: ``callbacks.policy.OPTIMIZER_FITS``)."""

    PLAIN_SGD = "SGD without momentum"
    MOMENTUM_SGD = "SGD with momentum"
    ANY_SGD = "SGD"
    RMSPROP = "RMSprop"
    ADAM = "Adam or AdamW"
    #: a step ``-lr D g`` with a diagonal preconditioner ``D`` the optimizer already keeps: Adam's
    #: (Adam, AdamW, Schedule-Free AdamW) or the identity (Schedule-Free SGD).
    PRECONDITIONED = "Adam, AdamW, Schedule-Free AdamW or Schedule-Free SGD"


# --- the registry -----------------------------------------------------------------------------


def _zero_seed(first_epoch_lr: float, probe_L: Optional[float]) -> RuleState:
    return RuleState()


def _paper_adamo_seed(first_epoch_lr: float, probe_L: Optional[float]) -> RuleState:
    """Paper 7.3.1 and the reference code: ``K_0 = x``; from a probe, ``K_0 = L`` of the probe."""
    return RuleState(K1=float(probe_L if probe_L is not None else first_epoch_lr))


def _consistent_adamo_seed(first_epoch_lr: float, probe_L: Optional[float]) -> RuleState:
    """``K`` is a Lipschitz constant whose inverse is the rate: ``K_0 = 1/x``."""
    return RuleState(K1=1.0 / float(first_epoch_lr))


@dataclass(frozen=True)
class Rule:
    """The math of one learning-rate rule, in one place. What the callback does around it (the
    rollback guard, growth cap, first-epoch checks) is not here: it is ``LipschitzLR``'s arguments,
    set per rule in ``conf/optim/<name>.yaml`` (their defaults for a drop-in callback:
    ``callbacks.policy.POLICIES``).

    Attributes:
        name: the name configs and the callback use (``conf/optim/<name>.yaml`` sets ``rule: <name>``).
        summary: one line for docs and errors.
        update: ``(state, epoch_stats, hyper) -> (lr, new_state)``.
        bound: ``(head_stats, loss, k, weight_decay) -> EpochStats``: the epoch's bound.
        optimizer: the optimizer its derivation assumes (its betas come from it).
        first_epoch_lr: the first-epoch rate without an override: a float, or ``"auto"`` (the
            rule's first update on a no-grad probe of the initial weights).
        seed: ``(first_epoch_lr, probe_L or None) -> RuleState`` before the first update.
        statistics: the optional per-step statistics its bound needs (:class:`Statistic`).
        logged: the state fields logged as ``lipschitz/<field>``.
        losses: the losses its bound is derived for.
        bounds_gradient: its ``L`` bounds the gradient's entries (so ``grad_max_over_L`` is logged).
        single_beta: which of ``(beta1, beta2)`` a single ``betas=`` float sets.
        paper: one of the paper's four rules (kept exactly as published).
        first_epoch_from_steps: its bound needs gradients, so no probe gives a first rate: the first
            step runs at ``first_epoch_lr`` and the first epoch's checks (steps 1, 2, 4, ...) set
            the rate from the steps so far, raising it as well as lowering it.
        state_name: the name the callback's checkpointed state is filed under (its state key):
            the rule's name, except where the rule was renamed (``auto_adam`` was ``adam``), so
            checkpoints written before the rename still load. Default (empty): ``name``.
    """

    name: str
    summary: str
    update: Update
    bound: Bound
    optimizer: OptimizerKind
    first_epoch_lr: Union[float, str] = "auto"
    seed: Callable[[float, Optional[float]], RuleState] = _zero_seed
    statistics: FrozenSet[Statistic] = frozenset()
    logged: Tuple[str, ...] = ()
    losses: Tuple[str, ...] = tuple(LOSSES)
    bounds_gradient: bool = True
    single_beta: int = 0
    paper: bool = False
    first_epoch_from_steps: bool = False
    state_name: str = ""

    def __post_init__(self) -> None:
        if not self.state_name:
            object.__setattr__(self, "state_name", self.name)


_CLASSIFICATION = tuple(name for name, entry in LOSSES.items() if entry.is_classification)
_SGD, _MOMENTUM, _ANY_SGD = OptimizerKind.PLAIN_SGD, OptimizerKind.MOMENTUM_SGD, OptimizerKind.ANY_SGD
_S = frozenset({Statistic.SQUARES})

#: Rule name -> its description (the names the callback and ``conf/optim`` use).
RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("sgd", "adaptive SGD (paper): lr = 1/L", adaptive_sgd, paper_bound, _SGD, paper=True),
        Rule("adamo", "AdaMo (paper Algorithm 1): K <- b K + (1-b) L, lr = 1/K, K_0 = x", adamo, paper_bound,
             _MOMENTUM, first_epoch_lr=0.1, seed=_paper_adamo_seed, logged=("K1",), paper=True),
        Rule("rmsprop", "adaptive RMSprop (reference code): lr = (sqrt(K2)+eps)/K_z", adaptive_rmsprop,
             paper_bound, OptimizerKind.RMSPROP, statistics=_S, logged=("K2",), single_beta=1, paper=True),
        Rule("auto_adam", "Auto-Adam (paper Algorithm 3): lr = (sqrt(K2)+eps)/K1", auto_adam, paper_bound,
             OptimizerKind.ADAM, first_epoch_lr=1e-3, statistics=_S, logged=("K1", "K2"), paper=True,
             state_name="adam"),
        Rule("adamo_consistent", "AdaMo with K seeded at 1/x, the Lipschitz constant of the first rate",
             adamo, paper_bound, _MOMENTUM, first_epoch_lr=0.1, seed=_consistent_adamo_seed, logged=("K1",)),
        Rule("gradbound", "lr = 1/G, G a provable bound on every entry of the head's gradient", adaptive_sgd,
             gradient_bound, _SGD, statistics=frozenset({Statistic.COLUMN_L1}), losses=_CLASSIFICATION),
        Rule("smooth", "lr = (1+mu)/((1-d) beta), beta = ||A||_2^2/(2m) + lambda, the head's smoothness",
             momentum_step, smoothness_bound, _ANY_SGD, statistics=frozenset({Statistic.SPECTRAL}),
             losses=_CLASSIFICATION, bounds_gradient=False),
        Rule("curvature", "lr = (1+mu)/((1-d) beta), beta = lambda_max(A^T C A)/m + lambda, the head's curvature "
             "at the visited weights", momentum_step, curvature_bound, _ANY_SGD,
             statistics=frozenset({Statistic.CURVATURE}), losses=_CLASSIFICATION, bounds_gradient=False),
        Rule("precond", "lr = (1+b1)/((1-b1) S), S = beta ||Dg||^2 / g^T D g, the head's curvature along "
             "Adam's preconditioned step", adam_edge_step, preconditioned_bound, OptimizerKind.PRECONDITIONED,
             first_epoch_lr=1e-3, statistics=frozenset({Statistic.CURVATURE, Statistic.PRECONDITIONED}),
             losses=_CLASSIFICATION, bounds_gradient=False, first_epoch_from_steps=True),
    )
}


#: A rule's earlier name -> its name in :data:`RULES` (accepted wherever a rule is named).
RULE_ALIASES: dict[str, str] = {"adam": "auto_adam"}


def canonical_rule(name: str) -> str:
    """The :data:`RULES` name of the rule called ``name`` (itself, or what an alias of
    :data:`RULE_ALIASES` stands for: ``"adam"`` -> ``"auto_adam"``).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    canonical = RULE_ALIASES.get(name, name)
    if canonical not in RULES:
        raise ValueError(f"unknown rule {name!r}; expected one of {sorted(RULES)}")
    return canonical


def get_rule(name: str) -> Rule:
    """The :class:`Rule` called ``name`` (or an alias of it, :func:`canonical_rule`).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    return RULES[canonical_rule(name)]


def epoch_bound(rule: str, stats: HeadStats, loss: str, k: int, weight_decay: float) -> EpochStats:
    """The epoch's bound (``L``, ``G2``, ``K_z``) that ``rule`` feeds its update with: the one
    function training and the tests both call.

    Example (paper 7.4)::

        epoch_bound("sgd", HeadStats(k_z=206.695, m=128, w_max=43.257), "softmax_ce", 10, 1e-3).L
        # 1.4966 -> lr 0.668
    """
    return get_rule(rule).bound(stats, loss, k, weight_decay)


def next_rate(
    rule: str, state: RuleState, stats: EpochStats, hyper: RuleHyper
) -> Tuple[float, RuleState]:
    """Rate for the next epoch and the updated state, for the named rule."""
    return get_rule(rule).update(state, stats, hyper)


def initial_state(rule: str, first_epoch_lr: Optional[float], probe_L: Optional[float] = None) -> RuleState:
    """State before the first update (``rule``'s seed): zeros, except AdaMo's ``K`` (``x``, or the
    probe's ``L``; ``1/x`` for ``adamo_consistent``)."""
    entry = get_rule(rule)
    if first_epoch_lr is None:
        return RuleState()
    return entry.seed(first_epoch_lr, probe_L)


def default_first_epoch_lr(rule: str) -> float | str:
    """The first-epoch choice of ``rule``: a float, or ``"auto"`` (probe)."""
    return get_rule(rule).first_epoch_lr


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
