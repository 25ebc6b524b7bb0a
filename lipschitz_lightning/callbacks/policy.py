"""What ``LipschitzLR`` does around a rule's math: its default policy per rule (rollback guard,
growth cap, first-epoch checks) and the torch optimizer each rule fits.

The training app sets the policy in ``conf/optim/<rule>.yaml`` (one shared base file,
``conf/optim/base/lipschitz.yaml``, plus each file's own values); :data:`POLICIES` holds the same
defaults for a drop-in ``LipschitzLR(rule=...)`` that passes none of them, so that both start a
rule the same way. A rule without an entry gets :data:`DEFAULT_POLICY`: guard on, no cap, no
checks. The guard is on for every rule, the paper's four included: it changes no rate until it
fires (``guard=False`` gives the raw rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from pytorch_lightning.utilities import rank_zero_warn

from lipschitz_lightning.math.bounds import identity_terms, preconditioned_terms
from lipschitz_lightning.math.rules import OptimizerKind, get_rule

__all__ = ["DEFAULT_POLICY", "OPTIMIZER_FITS", "OptimizerFit", "POLICIES", "RulePolicy", "check_optimizer", "optimizer_fit",
           "policy_of"]


@dataclass(frozen=True)
class RulePolicy:
    """The callback's defaults around one rule (``LipschitzLR``'s arguments of the same names).

    Attributes:
        guard: the rollback guard on.
        max_growth: cap on the rate's growth from one epoch to the next (None: off).
        first_epoch_checks: re-check the first epoch's rate at its steps 1, 2, 4, 8, ...
        first_epoch_growth: with the checks, the factor by which a check may raise the first
            epoch's rate towards the full update (None: off).
    """

    guard: bool = True
    max_growth: Optional[float] = None
    first_epoch_checks: bool = False
    first_epoch_growth: Optional[float] = None


DEFAULT_POLICY = RulePolicy()

#: Rule name -> its defaults, where they differ from :data:`DEFAULT_POLICY` (the same values as
#: ``conf/optim``'s files; a test composes each file and compares).
POLICIES: Dict[str, RulePolicy] = {
    "gradbound": RulePolicy(first_epoch_checks=True),
    "smooth": RulePolicy(max_growth=4.0, first_epoch_checks=True),
    "curvature": RulePolicy(max_growth=4.0, first_epoch_checks=True, first_epoch_growth=2.0),
    "precond": RulePolicy(max_growth=4.0, first_epoch_checks=True, first_epoch_growth=2.0),
}


def policy_of(rule: str) -> RulePolicy:
    """The drop-in defaults of ``rule``."""
    return POLICIES.get(rule, DEFAULT_POLICY)


# --- the torch optimizer a rule fits -------------------------------------------------------------


def _sgd_momentum(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0].get("momentum", 0.0) or 0.0)


@dataclass(frozen=True)
class OptimizerFit:
    """Which torch optimizer fits an :class:`~lipschitz_lightning.math.rules.OptimizerKind`, and
    where its betas come from.

    Attributes:
        needs: what to tell a user whose optimizer does not fit.
        fits: ``optimizer -> bool``.
        betas: ``param_group -> (beta1, beta2)``.
        advice: ``param_group -> message or None``: a fitting but doubtful setting (warned).
        momentum: ``param_group -> (momentum, dampening)`` the rule's update scales its step by.
        step_terms: ``(param_group, state, grad) -> [g^T D g, ||D g||^2]`` of the head's gradient
            under the preconditioner ``D`` of the optimizer's coming step (a device tensor; the
            ``precond`` rule's optimizers only).
    """

    needs: str
    fits: Callable[[torch.optim.Optimizer], bool]
    betas: Callable[[dict], Tuple[float, float]] = lambda group: (0.9, 0.999)
    advice: Callable[[dict], Optional[str]] = lambda group: None
    momentum: Callable[[dict], Tuple[float, float]] = lambda group: (
        float(group.get("momentum", 0.0) or 0.0), float(group.get("dampening", 0.0) or 0.0))
    step_terms: Optional[Callable[[dict, dict, torch.Tensor], torch.Tensor]] = None


def _ewma_velocity_advice(group: dict) -> Optional[str]:
    momentum, dampening = group.get("momentum", 0.0), group.get("dampening", 0.0)
    if dampening != momentum:
        return (
            f"SGD(momentum={momentum}, dampening={dampening}) is not the EWMA velocity "
            f"v <- b v + (1-b) g the paper assumes; use dampening={momentum}"
        )
    return None


def _is_adam_family(optimizer: torch.optim.Optimizer) -> bool:
    """torch's Adam or AdamW, or Schedule-Free AdamW (package schedulefree; by class, so that the
    check needs no import of the package)."""
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) or type(optimizer).__name__ == "AdamWScheduleFree"


def _adam_step_terms(group: dict, state: dict, grad: torch.Tensor) -> torch.Tensor:
    """``math.bounds.preconditioned_terms`` of the head's gradient, from its param group and
    optimizer state: its ``exp_avg_sq`` before the step, ``beta2``, the steps done and ``eps``.
    Schedule-Free AdamW counts the steps as the group's ``k``; torch's Adam per parameter, as a
    tensor that is passed on as it is (no host sync)."""
    steps = group["k"] if "k" in group else state.get("step", 0)
    return preconditioned_terms(grad, state.get("exp_avg_sq"), float(group["betas"][1]), steps, float(group["eps"]))


def _interpolation(group: dict) -> Tuple[float, float]:
    """Schedule-Free SGD's ``momentum``: the interpolation ``y = (1 - b) z + b x`` (no dampening to
    apply, given as ``(b, b)`` as Adam's ``beta1``: the ``precond`` rule's gain reads ``b``)."""
    b = float(group["momentum"])
    return b, b


#: The optimizer kinds of the rules -> the torch optimizers that fit them (the first that fits is
#: the one in use).
OPTIMIZER_FITS: Dict[OptimizerKind, Tuple[OptimizerFit, ...]] = {
    OptimizerKind.PLAIN_SGD: (OptimizerFit(
        "torch.optim.SGD without momentum",
        lambda o: isinstance(o, torch.optim.SGD) and _sgd_momentum(o) == 0,
    ),),
    OptimizerKind.MOMENTUM_SGD: (OptimizerFit(
        "torch.optim.SGD with momentum > 0",
        lambda o: isinstance(o, torch.optim.SGD) and _sgd_momentum(o) > 0,
        betas=lambda g: (float(g["momentum"]), 0.999),
        advice=_ewma_velocity_advice,
    ),),
    OptimizerKind.ANY_SGD: (OptimizerFit("torch.optim.SGD", lambda o: isinstance(o, torch.optim.SGD)),),
    OptimizerKind.RMSPROP: (OptimizerFit(
        "torch.optim.RMSprop",
        lambda o: isinstance(o, torch.optim.RMSprop),
        betas=lambda g: (0.9, float(g["alpha"])),
    ),),
    OptimizerKind.ADAM: (OptimizerFit(
        "torch.optim.Adam or torch.optim.AdamW",
        lambda o: isinstance(o, (torch.optim.Adam, torch.optim.AdamW)),
        betas=lambda g: (float(g["betas"][0]), float(g["betas"][1])),
    ),),
    OptimizerKind.PRECONDITIONED: (
        # Adam's first moment is an EWMA of the gradients: the update's momentum and dampening are
        # beta1 (Schedule-Free AdamW's beta1 is its interpolation, as Schedule-Free SGD's momentum).
        OptimizerFit(
            "torch.optim.Adam, torch.optim.AdamW or schedulefree.AdamWScheduleFree",
            _is_adam_family,
            betas=lambda g: (float(g["betas"][0]), float(g["betas"][1])),
            momentum=lambda g: (float(g["betas"][0]), float(g["betas"][0])),
            step_terms=_adam_step_terms,
        ),
        # Schedule-Free SGD (by class, as above): D = I.
        OptimizerFit(
            "schedulefree.SGDScheduleFree",
            lambda o: type(o).__name__ == "SGDScheduleFree",
            momentum=_interpolation,
            step_terms=lambda group, state, grad: identity_terms(grad),
        ),
    ),
}


def optimizer_fit(rule: str, optimizer: torch.optim.Optimizer) -> OptimizerFit:
    """The :class:`OptimizerFit` of ``rule``'s optimizer kind that ``optimizer`` fits.

    Raises:
        ValueError: ``optimizer`` fits none (the message says what the rule needs).
    """
    fits = OPTIMIZER_FITS[get_rule(rule).optimizer]
    for fit in fits:
        if fit.fits(optimizer):
            return fit
    group = optimizer.param_groups[0]
    detail = f" (momentum={group.get('momentum', 0.0)})" if isinstance(optimizer, torch.optim.SGD) else ""
    needs = " or ".join(fit.needs for fit in fits)
    raise ValueError(f"LipschitzLR rule {rule!r} needs {needs}; got {type(optimizer).__name__}{detail}")


def check_optimizer(rule: str, optimizer: torch.optim.Optimizer) -> None:
    """Raise ``ValueError`` if ``optimizer`` does not fit ``rule`` (its registry entry says which).

    Adaptive SGD and ``gradbound`` need plain SGD, AdaMo SGD with momentum (ideally
    ``dampening=momentum``, the EWMA velocity of the paper; a warning says so otherwise),
    ``smooth`` any SGD, adaptive RMSprop needs RMSprop, Auto-Adam Adam or AdamW, ``precond`` the
    Adam family or Schedule-Free SGD.
    """
    advice = optimizer_fit(rule, optimizer).advice(optimizer.param_groups[0])
    if advice:
        rank_zero_warn(f"LipschitzLR rule {rule!r}: {advice}")
