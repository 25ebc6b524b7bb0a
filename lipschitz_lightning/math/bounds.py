"""Lipschitz bounds of the loss (paper sections 4 and 5; spec section 2).

Pure functions of plain numbers or tensors: no Lightning, no state. Each returns ``L``, the bound
on the largest gradient entry of the loss with respect to the last layer's weights; the learning
rate is ``1 / L``.

Symbols (spec section 1):

* ``k_z`` -- largest Frobenius norm of a batch matrix of penultimate activations (head input),
* ``s`` -- largest Frobenius norm of the element-wise square of such a batch matrix,
* ``w_max`` -- largest Frobenius norm of any single parameter tensor of the model,
* ``m`` -- number of examples the loss is averaged over in one optimizer step,
* ``k`` -- number of classes.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

Number = Union[float, torch.Tensor]

__all__ = [
    "identity_terms",
    "preconditioned_terms",
    "softmax_ce_coefficient",
    "bce_coefficient",
    "least_squares_coefficient",
    "softmax_ce_bound",
    "bce_bound",
    "least_squares_bound",
    "l2_term",
    "tikhonov_term",
    "second_moment_estimate",
    "is_valid_bound",
    "gradient_entry_bound",
    "frobenius_gradient_bound",
    "spectral_norm_upper_bound",
    "scale_columns_to_unit_sum",
    "estimate_weight_bound",
    "linear_regression_constant",
    "logistic_regression_constant",
    "softmax_regression_constant",
]


def _check_batch(m: float) -> None:
    if m <= 0:
        raise ValueError(f"m (examples per optimizer step) must be positive; got {m}")


# --- loss-specific factors: L_data = coefficient * K_z --------------------------------------------


def softmax_ce_coefficient(k: int, m: float) -> float:
    """``(k - 1) / (k m)``: the largest ``|dE/dz|`` of softmax cross-entropy (paper eq. 22-23).

    Raises:
        ValueError: if ``k < 2`` or ``m <= 0``.
    """
    if k < 2:
        raise ValueError(f"softmax cross-entropy needs k >= 2 classes; got k={k}")
    _check_batch(m)
    return (k - 1) / (k * m)


def bce_coefficient(m: float) -> float:
    """``1 / (2m)``: the largest ``|dE/dz|`` of binary cross-entropy on one sigmoid output (eq. 17)."""
    _check_batch(m)
    return 1.0 / (2.0 * m)


def least_squares_coefficient(k_a: Number, y_norm: Number, m: float) -> Number:
    """``(K_a - ||y||) / m`` (paper eq. 8-9); can be negative, see :func:`is_valid_bound`."""
    _check_batch(m)
    return (k_a - y_norm) / m


# --- bounds -----------------------------------------------------------------------------------


def softmax_ce_bound(k_z: Number, k: int, m: float) -> Number:
    """Softmax cross-entropy with ``k`` classes: ``L = (k-1)/(k m) * K_z`` (paper eq. 23).

    Example (paper section 7.4): ``softmax_ce_bound(206.695, 10, 128) = 1.4533``.
    """
    return softmax_ce_coefficient(k, m) * k_z


def bce_bound(k_z: Number, m: float) -> Number:
    """Binary cross-entropy, one sigmoid output: ``L = K_z / (2m)`` (paper eq. 18)."""
    return bce_coefficient(m) * k_z


def least_squares_bound(k_a: Number, y_norm: Number, k_z: Number, m: float) -> Number:
    """Least squares on a network output: ``L = (K_a - ||y||) K_z / m`` (paper eq. 9).

    Args:
        k_a: largest Frobenius norm of a batch of network outputs.
        y_norm: norm of the batch targets.
        k_z: largest Frobenius norm of a batch of head inputs.
        m: examples per optimizer step.
    """
    return least_squares_coefficient(k_a, y_norm, m) * k_z


def l2_term(weight_decay: Number, w_max: Number) -> Number:
    """Added to L by an L2 term ``lambda/2 ||w||^2``: ``lambda * W`` (paper section 5.3)."""
    return weight_decay * w_max


def tikhonov_term(w_max: Number, gamma_sq_norm: Number) -> Number:
    """Added to L by a Tikhonov term ``||Gamma w||^2``: ``2 W ||Gamma^2||`` (paper section 5.3)."""
    return 2.0 * w_max * gamma_sq_norm


def second_moment_estimate(
    coefficient: Number, k_z: Number, s: Number, weight_decay: Number, w_max: Number
) -> Number:
    """``G2``, the estimate of ``max ||(grad)^2||`` used by adaptive RMSprop and Auto-Adam.

    Paper section 6.3 with its middle term removed (spec section 3)::

        G2 = c^2 * S + 2 * lambda * W * c * K_z

    where ``c`` is the loss's coefficient (``(k-1)/(k m)`` for softmax cross-entropy, which gives
    the spec's formula exactly; ``1/(2m)`` for BCE; ``(K_a - ||y||)/m`` for least squares).
    """
    return coefficient * coefficient * s + 2.0 * weight_decay * w_max * coefficient * k_z


def is_valid_bound(value: Number) -> bool:
    """True if ``value`` may become ``1/L``: finite and strictly positive (spec section 2)."""
    v = float(value)
    return math.isfinite(v) and v > 0.0


# --- bounds of our own (docs/rules.md) ---------------------------------------------------------


def gradient_entry_bound(column_l1_over_m: Number, weight_decay: Number = 0.0, head_abs_max: Number = 0.0) -> Number:
    """A provable bound on every entry of ``dE/dW`` of the head (softmax CE or BCE, mean over m).

    ``dE/dW_jl = 1/m sum_i (p_ij - y_ij) a_il`` with ``|p_ij - y_ij| <= 1``, so
    ``|dE/dW_jl| <= 1/m sum_i |a_il| = ||A_:l||_1 / m``; the weight-decay gradient adds
    ``lambda |W_jl| <= lambda max|W|``. Hence

        G = max_l ||A_:l||_1 / m + lambda * max_jl |W_jl|

    ``column_l1_over_m`` is ``max_l ||A_:l||_1 / m`` (the largest over the epoch's steps). It is at
    most :func:`frobenius_gradient_bound` (Cauchy-Schwarz, and ``|a_il| <= ||A_i||``).
    """
    return column_l1_over_m + weight_decay * head_abs_max


def frobenius_gradient_bound(a_frobenius: Number, row_norm_max: Number, m: float) -> Number:
    """``min(||A||_F / sqrt(m), max_i ||A_i||)``: the Frobenius form of :func:`gradient_entry_bound`
    (weaker, but needs only ``||A||_F`` and the largest row norm)."""
    _check_batch(m)
    return min(a_frobenius / math.sqrt(m), row_norm_max)


def spectral_norm_upper_bound(gram: torch.Tensor, squarings: int = 5) -> torch.Tensor:
    """An upper bound on the largest eigenvalue of a symmetric PSD matrix, on its device, no sync.

    ``lambda_max(G) <= ||G^p||_F^(1/p)`` for ``p = 2^q`` (the Schatten-p norm), and the ratio to
    ``lambda_max`` is at most ``rank^(1/p)`` (1.14 for rank 64 at ``q = 5``). Computed by ``q``
    normalised squarings: with ``X_0 = G / tr G`` and ``X_j = X_{j-1}^2 / n_j``,
    ``n_j = ||X_{j-1}^2||_F``, the bound is ``tr(G) * prod_j n_j^(2^-j)``. Cost: ``q d^3``.
    """
    g = gram.double() if gram.device.type == "cpu" else gram.float()
    trace = g.diagonal().sum()
    tiny = torch.finfo(g.dtype).tiny
    x = g / trace.clamp_min(tiny)
    log_bound = torch.log(trace.clamp_min(tiny))
    for j in range(1, squarings + 1):
        x = x @ x
        n = torch.linalg.matrix_norm(x).clamp_min(tiny)
        x = x / n
        log_bound = log_bound + torch.log(n) / (2**j)
    return torch.where(trace > 0, torch.exp(log_bound), torch.zeros_like(trace)).to(gram.dtype)


# --- classical models (paper 4.1, 5.1, 5.2, 7.1): full batch, fixed rate 1/L -------------------


def scale_columns_to_unit_sum(x: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Scale each feature column to sum to 1 (paper section 7.1).

    Args:
        x: ``(m, n)`` data to scale.
        reference: data whose column sums define the scale (default ``x``); pass the training
            split to scale a test split consistently. Columns summing to 0 are left unscaled.
    """
    ref = x if reference is None else reference
    sums = ref.sum(dim=0)
    sums = torch.where(sums == 0, torch.ones_like(sums), sums)
    return x / sums


def estimate_weight_bound(x: torch.Tensor) -> torch.Tensor:
    """``K = (a + b) / 2``, the estimate of ``max ||w||`` for linear regression (paper 7.1).

    ``a`` is the sum of the column means, ``b`` the mean of the column maxima.
    """
    a = x.mean(dim=0).sum()
    b = x.max(dim=0).values.mean()
    return (a + b) / 2


def _spectral(a: torch.Tensor) -> torch.Tensor:
    a = a if a.dim() == 2 else a.reshape(1, -1)
    return torch.linalg.matrix_norm(a.double(), ord=2)


def linear_regression_constant(
    x: torch.Tensor, y: torch.Tensor, weight_bound: Number | None = None
) -> torch.Tensor:
    """``L = K/m ||X^T X|| - 1/m ||y^T X||`` with spectral norms (paper 4.1).

    Args:
        x: ``(m, n)`` design matrix (already scaled, if the experiment scales).
        y: ``(m,)`` or ``(m, 1)`` targets.
        weight_bound: ``K``; default :func:`estimate_weight_bound` of ``x``.
    """
    m = x.shape[0]
    k = estimate_weight_bound(x) if weight_bound is None else weight_bound
    xd = x.double()
    yd = y.double().reshape(-1, 1)
    return k * _spectral(xd.T @ xd) / m - _spectral(yd.T @ xd) / m


def logistic_regression_constant(x: torch.Tensor) -> torch.Tensor:
    """``L = ||X|| / (2m)`` with the spectral norm (paper 5.1)."""
    return _spectral(x) / (2 * x.shape[0])


def softmax_regression_constant(x: torch.Tensor, k: int) -> torch.Tensor:
    """``L = (k-1)/(k m) ||X||`` with the spectral norm (paper 5.2)."""
    return softmax_ce_coefficient(k, x.shape[0]) * _spectral(x)


def preconditioned_terms(grad: torch.Tensor, exp_avg_sq: Optional[torch.Tensor], beta2: float,
                         steps_done: Union[int, torch.Tensor], eps: float) -> torch.Tensor:
    """``[g^T D g, ||D g||^2]`` of a gradient ``g`` under Adam's preconditioner of the coming step,
    ``D = diag(1 / (sqrt(v / (1 - beta2^(t+1))) + eps))`` with ``v = beta2 v_prev + (1 - beta2) g^2``
    (``exp_avg_sq`` is ``v_prev``: None or empty before the first step; ``steps_done`` a number or
    the optimizer's own 0-dim step tensor, read without a host sync). A device tensor of 2.

    With smoothness ``beta`` along the step, ``-eta D g`` decreases the loss while
    ``eta < 2 g^T D g / (beta ||D g||^2)`` (docs/rules.md section 9). At the first step
    ``D g = g / (|g| + eps)``: ``g^T D g ~ ||g||_1`` and ``||D g||^2 ~`` the number of weights.
    """
    g = grad.detach().float()
    v = (1.0 - beta2) * g.square()
    if exp_avg_sq is not None and exp_avg_sq.numel() == g.numel():
        v = v + beta2 * exp_avg_sq.detach().float()
    d = 1.0 / ((v / (1.0 - beta2 ** (steps_done + 1))).sqrt() + eps)
    dg = d * g
    return torch.stack([(g * dg).sum(), dg.square().sum()])


def identity_terms(grad: torch.Tensor) -> torch.Tensor:
    """``[g^T D g, ||D g||^2]`` with ``D = I`` (Schedule-Free SGD's step ``-lr g``): ``[||g||^2, ||g||^2]``,
    so that the preconditioned ratio is 1 and ``S`` is the curvature ``beta`` itself. A device tensor of 2."""
    g2 = grad.detach().float().square().sum()
    return torch.stack([g2, g2])
