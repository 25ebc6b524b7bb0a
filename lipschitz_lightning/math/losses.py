"""The losses LipschitzLR's bounds are derived for: one :class:`Loss` entry each, looked up by name.

Everything that depends on which loss a run trains with -- its bound coefficient, its Hessian
factor and curvature, the criterion, the targets' form, the accuracy metric, how many outputs and
classes a dataset of ``k`` classes has -- is a field of the loss's entry; the models, datamodules,
module and callback ask :func:`get_loss` instead of comparing names. A new loss is one entry of
:data:`LOSSES`.

Pure: torch only, no Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
import torch
from torch import nn

from lipschitz_lightning.math import bounds
from lipschitz_lightning.math.bounds import Number

__all__ = [
    "Loss",
    "LOSSES",
    "HESSIAN_FACTORS",
    "HalfMSELoss",
    "get_loss",
    "loss_coefficient",
    "last_layer_smoothness",
    "curvature_weights",
]


class HalfMSELoss(nn.Module):
    """The paper's least-squares loss ``1/(2m) sum (a - y)^2`` (eq. 7): half of ``nn.MSELoss``.

    The least-squares bound (eq. 8-9) is derived for this loss; plain ``MSELoss`` has twice its
    gradient, so ``1/L`` would be twice the safe rate for it.
    """

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * nn.functional.mse_loss(output, target)


# (criterion input, criterion target, predictions for the metric, targets for the metric)
Prepared = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Loss:
    """What a loss decides, everywhere in the project.

    Attributes:
        name: The name configs, datamodules and the callback use.
        coefficient: ``(k, m, K_a, ||y||) -> c`` with ``L_data = c K_z`` (spec section 2).
        criterion: The ``torch.nn`` loss constructor the module trains with.
        prepare: ``(network output, batch targets) -> (criterion input, criterion target,
            metric predictions, metric targets)``.
        target_dtype: The dtype of the targets the datamodules hand out; an integer dtype means
            class indices of shape ``(N,)``, a float one values of shape ``(N, 1)``.
        is_classification: Targets are classes: accuracy is logged, splits are stratified.
        metric: ``"multiclass"``, ``"binary"`` or ``None`` (no accuracy).
        output_per_class: One output per class, so ``k >= 2`` classes and ``k`` outputs; otherwise
            one output (or as many as the model has, when not ``single_output``).
        single_output: Exactly one output (a logit).
        fixed_classes: The number of classes when not ``output_per_class`` (2 for a binary loss,
            0 for regression).
        hessian_factor: The largest eigenvalue of the loss's Hessian in the logits, per example;
            ``None`` where no bound is offered.
        curvature: Per example, that eigenvalue *at these logits* ``(m, k)`` (``None``: not offered).
        bound_needs_targets: The bound needs the head outputs' ``K_a`` and the targets' ``||y||``
            (recorded by the callback).
        decide: Network output -> predicted labels ``(N,)`` (``None`` for regression).
        closed_form_constant: ``(X, y, k) ->`` the paper's closed-form ``L`` of the linear model
            trained with this loss (the classical experiments).
    """

    name: str
    coefficient: Callable[[int, float, Number, Number], Number]
    criterion: Callable[[], nn.Module]
    prepare: Callable[[torch.Tensor, torch.Tensor], Prepared]
    target_dtype: torch.dtype
    is_classification: bool
    metric: Optional[str]
    output_per_class: bool
    single_output: bool
    fixed_classes: int
    hessian_factor: Optional[float]
    curvature: Optional[Callable[[torch.Tensor], torch.Tensor]]
    bound_needs_targets: bool
    decide: Optional[Callable[[torch.Tensor], torch.Tensor]]
    closed_form_constant: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]

    def num_outputs(self, k: int) -> int:
        """The network's outputs for a dataset of ``k`` classes."""
        return k if self.output_per_class else 1

    def num_classes(self, k: int) -> int:
        """The classes of a dataset of ``k`` classes (0 for regression)."""
        return k if self.output_per_class else self.fixed_classes

    def targets(self, values: np.ndarray | torch.Tensor, float_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Targets in the form the loss expects: class indices ``(N,)`` or values ``(N, 1)``
        (of ``float_dtype``, :attr:`target_dtype` by default)."""
        tensor = torch.as_tensor(np.asarray(values))
        if not self.target_dtype.is_floating_point:
            return tensor.to(self.target_dtype)
        return tensor.to(float_dtype or self.target_dtype).reshape(-1, 1)


def _prepare_softmax_ce(out: torch.Tensor, y: torch.Tensor) -> Prepared:
    return out, y.long(), out, y.long()


def _prepare_bce(out: torch.Tensor, y: torch.Tensor) -> Prepared:
    logits = out.reshape(-1)
    target = y.reshape(-1).to(logits.dtype)
    return logits, target, torch.sigmoid(logits), target.long()


def _prepare_mse(out: torch.Tensor, y: torch.Tensor) -> Prepared:
    target = y.to(out.dtype).reshape(out.shape)
    return out, target, out, target


def _softmax_curvature(z: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(z, dim=-1)
    local = torch.minimum(p.amax(dim=-1), (2.0 * p * (1.0 - p)).amax(dim=-1))
    return local.clamp_min(1.0 / z.shape[-1])


def _bce_curvature(z: torch.Tensor) -> torch.Tensor:
    return torch.full(z.shape[:1], 0.25, dtype=z.dtype, device=z.device)


#: Loss name -> its description: softmax cross-entropy, binary cross-entropy on one sigmoid
#: output, least squares. Models, datamodules and the callback all name losses by these.
LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss(
            name="softmax_ce",
            coefficient=lambda k, m, k_a, y_norm: bounds.softmax_ce_coefficient(k, m),
            criterion=nn.CrossEntropyLoss,
            prepare=_prepare_softmax_ce,
            target_dtype=torch.int64,
            is_classification=True,
            metric="multiclass",
            output_per_class=True,
            single_output=False,
            fixed_classes=0,
            hessian_factor=0.5,  # diag(p) - p p^T: eigenvalues at most 1/2 (Gershgorin: 2 p_j (1 - p_j))
            curvature=_softmax_curvature,
            bound_needs_targets=False,
            decide=lambda out: out.argmax(dim=1),
            closed_form_constant=lambda x, y, k: bounds.softmax_regression_constant(x, k),
        ),
        Loss(
            name="bce",
            coefficient=lambda k, m, k_a, y_norm: bounds.bce_coefficient(m),
            criterion=nn.BCEWithLogitsLoss,
            prepare=_prepare_bce,
            target_dtype=torch.float32,
            is_classification=True,
            metric="binary",
            output_per_class=False,
            single_output=True,
            fixed_classes=2,
            hessian_factor=0.25,  # sigma (1 - sigma) is at most 1/4
            curvature=_bce_curvature,
            bound_needs_targets=False,
            decide=lambda out: out.reshape(-1) > 0,
            closed_form_constant=lambda x, y, k: bounds.logistic_regression_constant(x),
        ),
        Loss(
            name="mse",
            coefficient=lambda k, m, k_a, y_norm: bounds.least_squares_coefficient(k_a, y_norm, m),
            criterion=HalfMSELoss,
            prepare=_prepare_mse,
            target_dtype=torch.float32,
            is_classification=False,
            metric=None,
            output_per_class=False,
            single_output=False,
            fixed_classes=0,
            hessian_factor=None,  # its factor is 1, but its curvature in the head is exactly ||A||_2^2 / m
            curvature=None,
            bound_needs_targets=True,
            decide=None,
            closed_form_constant=lambda x, y, k: bounds.linear_regression_constant(x, y),
        ),
    )
}

#: Largest eigenvalue of the Hessian of the loss with respect to the logits, per example, for
#: the losses that have a bounded one.
HESSIAN_FACTORS: dict[str, float] = {
    name: loss.hessian_factor for name, loss in LOSSES.items() if loss.hessian_factor is not None
}


def get_loss(name: str, owner: str = "") -> Loss:
    """The entry of the loss ``name``.

    Raises:
        ValueError: ``unknown loss ...; expected one of [...]`` (prefixed ``"<owner>: "`` when
            ``owner`` is given), for a name not in :data:`LOSSES`.
    """
    loss = LOSSES.get(name) if isinstance(name, str) else None
    if loss is None:
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}unknown loss {name!r}; expected one of {list(LOSSES)}")
    return loss


def loss_coefficient(loss: str, k: int, m: float, k_a: Number = 0.0, y_norm: Number = 0.0) -> Number:
    """The factor ``c`` with ``L_data = c * K_z`` for the named loss (spec section 2).

    ``(k-1)/(k m)`` for ``softmax_ce``, ``1/(2m)`` for ``bce``, ``(K_a - ||y||)/m`` for ``mse``.
    """
    return get_loss(loss).coefficient(k, m, k_a, y_norm)


def last_layer_smoothness(spectral_over_m: Number, loss: str, weight_decay: Number = 0.0) -> Number:
    """``beta = h ||A||_2^2 / m + lambda``: the smoothness of the loss in the head's weights.

    The head's Hessian is ``1/m sum_i H_i (x) a_i a_i^T`` with ``H_i <= h I``, so its norm is at
    most ``h ||A^T A||_2 / m = h ||A||_2^2 / m``; L2 adds ``lambda``. ``spectral_over_m`` is the
    epoch's largest ``||A||_2^2 / m`` (an upper estimate: :func:`~lipschitz_lightning.math.bounds.spectral_norm_upper_bound`).

    Raises:
        ValueError: for a loss without a bounded Hessian factor (``mse`` needs none: its factor
            is 1, but its curvature in the head is exactly ``||A||_2^2 / m``; not offered).
    """
    if loss not in HESSIAN_FACTORS:
        raise ValueError(f"the smoothness bound is derived for {sorted(HESSIAN_FACTORS)}; got loss {loss!r}")
    return HESSIAN_FACTORS[loss] * spectral_over_m + weight_decay


def curvature_weights(logits: torch.Tensor, loss: str) -> torch.Tensor:
    """Per example, an upper bound on the largest eigenvalue of the loss's Hessian in the logits,
    *at these logits* (the ``curvature`` rule; a traceable tensor function, no sync).

    * ``softmax_ce``: ``diag(p) - p p^T`` is ``diag(p)`` minus a PSD rank-one term, so its largest
      eigenvalue is at most ``max_j p_j`` (Weyl); Gershgorin gives ``max_j 2 p_j (1 - p_j)``. The
      weight is the smaller, but never below ``1/k``, the exact value for an undecided (uniform)
      prediction: a confident example's curvature is near 0, but the step that the rate allows
      can undo its confidence (docs/rules.md section 7). So the weight lies in ``[1/k, 1/2]``,
      never above the global 1/2 of :data:`HESSIAN_FACTORS`.
    * ``bce``: ``sigma (1 - sigma)`` per output, at least that of an undecided output (1/4): the
      global factor (for BCE the undecided prediction is the most curved one).

    ``logits``: ``(m, k)`` (``(m,)`` or ``(m, 1)`` for one BCE output). Returns ``(m,)`` float32.
    """
    z = logits.detach().float()
    z = z.reshape(z.shape[0], -1) if z.dim() > 0 else z.reshape(1, 1)
    entry = LOSSES.get(loss)
    if entry is None or entry.curvature is None:
        raise ValueError(f"curvature weights are derived for {sorted(HESSIAN_FACTORS)}; got loss {loss!r}")
    return entry.curvature(z)
