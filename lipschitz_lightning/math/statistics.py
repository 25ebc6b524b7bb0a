"""The head statistics of one epoch: what the callback gathers per optimizer step, and the epoch's
maxima the bounds are computed from (spec sections 1 and 4).

Per optimizer step the callback keeps one vector (``StepLayout`` names its columns). Every column
is a *sum* over the micro-batches of the step and over the ranks, so one ``SUM`` (or a gather and
a sum) makes the vector describe the global batch, whatever the device count:

* ``A2`` -- ``||A||_F^2`` of the head input ``A`` (``K_z^2`` of the step),
* ``A4`` -- ``||A * A||_F^2`` (``S^2``; Auto-Adam and RMSprop),
* ``ROWS`` -- the number of examples (``m`` of the step),
* ``OUT2``, ``Y2`` -- ``||output||^2`` and ``||y||^2`` (least squares: ``K_a^2``, ``||y||^2``),
* ``LOSS``, ``NLOSS`` -- the sum of the micro-batch losses and their count (the guard's curve),
* optionally ``COLABS`` -- ``sum_i |a_il|`` per input feature ``l`` (``d`` columns; the provable
  gradient bound),
* optionally ``PRECOND`` -- ``g^T D g`` and ``||D g||^2`` of the step's head gradient ``g`` under the
  Adam-family optimizer's own preconditioner ``D`` (2 columns; the ``precond`` rule),
* optionally ``SPEC`` -- an upper bound on ``||A||_2^2 = lambda_max(A^T A)`` of the step (the
  smoothness bound; per rank, so under DDP the sum over ranks bounds the global batch's norm from
  above: ``||sum_r A_r^T A_r|| <= sum_r ||A_r^T A_r||``).

Nothing here imports Lightning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Tuple

import torch

__all__ = ["SUM_COLUMNS", "StepLayout", "HeadStats", "summarize_steps"]

#: The fixed columns of a step vector, in order.
SUM_COLUMNS: Tuple[str, ...] = ("A2", "A4", "ROWS", "OUT2", "Y2", "LOSS", "NLOSS")
A2, A4, ROWS, OUT2, Y2, LOSS, NLOSS = range(len(SUM_COLUMNS))


@dataclass(frozen=True)
class StepLayout:
    """Which columns a step vector has.

    Attributes:
        width: ``d``, the head's input width (used when ``colabs``).
        colabs: keep ``sum_i |a_il|`` per feature (``d`` columns).
        spec: keep the step's ``||A||_2^2`` upper bound (1 column; needs ``A^T A`` per step).
        curv: keep the step's ``lambda_max(A^T C A)`` upper bound, ``C = diag(c_i)`` (1 column;
            needs ``A^T C A`` per step).
        precond: keep the step's ``g^T D g`` and ``||D g||^2`` (2 columns).
    """

    width: int = 0
    colabs: bool = False
    spec: bool = False
    curv: bool = False
    precond: bool = False

    @property
    def colabs_slice(self) -> slice:
        start = len(SUM_COLUMNS)
        return slice(start, start + (self.width if self.colabs else 0))

    @property
    def spec_index(self) -> int:
        return self.colabs_slice.stop

    @property
    def curv_index(self) -> int:
        return self.spec_index + (1 if self.spec else 0)

    @property
    def precond_index(self) -> int:
        """The first of the two ``PRECOND`` columns (``g^T D g``; ``||D g||^2`` next)."""
        return self.curv_index + (1 if self.curv else 0)

    @property
    def size(self) -> int:
        return self.precond_index + (2 if self.precond else 0)


@dataclass(frozen=True)
class HeadStats:
    """One epoch's statistics (global batch, all ranks), from which every rule's bound is computed.

    Attributes:
        k_z: largest ``||A||_F`` of a step.
        s: largest ``||A * A||_F`` of a step.
        k_a: largest ``||output||`` of a step (least squares).
        y_norm: largest ``||y||`` of a step (least squares).
        m: largest number of examples in a step.
        w_max: largest Frobenius norm of any parameter tensor.
        head_abs_max: largest ``|W_jl|`` of the head's weight.
        column_l1: largest ``max_l ||A_:l||_1 / m_s`` of a step (0 if not gathered).
        spectral: largest ``||A||_2^2 / m_s`` of a step (0 if not gathered).
        grad_max: largest observed entry of the head's gradient (weight decay included), or NaN.
        precond_ratio: ``sum_s g_s^T D_s g_s / sum_s ||D_s g_s||^2`` over the steps (0 if not gathered).
        step_losses: the mean training loss of each step, in order.
        step_norms: ``||A||_F`` of each step with examples, in order (the guard's collapse check).
    """

    k_z: float
    m: float
    w_max: float = 0.0
    s: float = 0.0
    k_a: float = 0.0
    y_norm: float = 0.0
    head_abs_max: float = 0.0
    column_l1: float = 0.0
    spectral: float = 0.0
    curvature: float = 0.0
    grad_max: float = math.nan
    precond_ratio: float = 0.0
    step_losses: Tuple[float, ...] = field(default=(), repr=False)
    step_norms: Tuple[float, ...] = field(default=(), repr=False)


def summarize_steps(
    per_step: torch.Tensor,
    layout: StepLayout,
    w_max: float = 0.0,
    head_abs_max: float = 0.0,
    grad_max: float = math.nan,
) -> HeadStats:
    """The epoch's maxima from its ``(steps, layout.size)`` matrix of step vectors (already summed
    over ranks). Steps without examples (padding) count for nothing."""
    values = per_step.detach().double().cpu().reshape(-1, layout.size)
    maxima = values[:, : len(SUM_COLUMNS)].max(dim=0).values.clamp_min(0) if len(values) else torch.zeros(len(SUM_COLUMNS), dtype=torch.float64)
    rows = values[:, ROWS]
    real = rows > 0
    column_l1 = spectral = curvature = 0.0
    if layout.colabs and bool(real.any()):
        per = values[real][:, layout.colabs_slice].max(dim=1).values / rows[real]
        column_l1 = float(per.max())
    if layout.spec and bool(real.any()):
        spectral = float((values[real][:, layout.spec_index] / rows[real]).max())
    if layout.curv and bool(real.any()):
        curvature = float((values[real][:, layout.curv_index] / rows[real]).max())
    precond_ratio = 0.0
    if layout.precond:
        gdg, dg2 = values[:, layout.precond_index].sum(), values[:, layout.precond_index + 1].sum()
        precond_ratio = float(gdg / dg2) if float(dg2) > 0 else 0.0
    counted = values[:, NLOSS] > 0
    losses = tuple(float(x) for x in values[counted][:, LOSS] / values[counted][:, NLOSS])
    roots = maxima.sqrt()
    return HeadStats(
        k_z=float(roots[A2]),
        s=float(roots[A4]),
        k_a=float(roots[OUT2]),
        y_norm=float(roots[Y2]),
        m=float(maxima[ROWS]),
        w_max=float(w_max),
        head_abs_max=float(head_abs_max),
        column_l1=column_l1,
        spectral=spectral,
        curvature=curvature,
        grad_max=float(grad_max),
        precond_ratio=precond_ratio,
        step_losses=losses,
        step_norms=tuple(float(x) for x in values[real][:, A2].clamp_min(0).sqrt()),
    )
