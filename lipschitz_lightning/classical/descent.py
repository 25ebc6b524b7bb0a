"""Full-batch gradient descent at a fixed rate on the project's classical models, and the
closed-form L of their losses (:mod:`lipschitz_lightning.math.bounds`).

The models are the project's (:mod:`lipschitz_lightning.models.linear`) with the losses of the
training app (:data:`lipschitz_lightning.math.losses.LOSSES`). Their ``nn.Linear`` bias is
held at zero: the intercept is a column of ones in X (:func:`with_intercept`), scaled like every
other column, so the bound covers every weight trained (an unscaled bias has a gradient Lipschitz
constant near 1/4 and makes 1/L steps diverge).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from lipschitz_lightning.math.losses import LOSSES, get_loss

__all__ = ["CONSTANTS", "accuracy", "build_model", "constant", "descend", "increases", "num_outputs", "targets",
           "with_intercept"]

# Loss name -> the paper's closed-form L of the model trained with it, from (X, y, classes).
CONSTANTS: Dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    name: entry.closed_form_constant for name, entry in LOSSES.items()
}



def with_intercept(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def targets(y: np.ndarray, loss: str, dtype: torch.dtype) -> torch.Tensor:
    return get_loss(loss).targets(y, dtype)


def num_outputs(y: np.ndarray, loss: str) -> int:
    spec = get_loss(loss)
    return spec.num_outputs(int(np.max(y)) + 1) if spec.output_per_class else 1


def _loss_fn(loss: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    spec = get_loss(loss)
    criterion = spec.criterion()
    return lambda out, y: criterion(*spec.prepare(out, y)[:2])


def accuracy(out: torch.Tensor, y: torch.Tensor, loss: str) -> float:
    return float((get_loss(loss).decide(out).to(y.dtype) == y.reshape(-1)).double().mean())


def build_model(cfg: DictConfig, features: int, outputs: int, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = hydra.utils.instantiate(cfg.dataset.model, input_shape=(features,), num_outputs=outputs).to(dtype)
    with torch.no_grad():
        net.head.bias.zero_()
    net.head.bias.requires_grad_(False)  # the intercept is X's scaled column of ones
    return net


def descend(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str, lr: float, epochs: int,
            threshold: Optional[float] = None, min_epochs: int = 0,
            progress: Optional[Callable[[int, float], None]] = None, progress_every: Optional[int] = None,
            progress_seconds: Optional[float] = None) -> Tuple[List[float], Optional[int]]:
    """Full-batch gradient descent on ``net``'s trainable weights at the fixed rate ``lr``.

    Runs until the loss is below ``threshold`` and at least ``min_epochs`` updates are done, or
    ``epochs`` updates, or the loss is not finite.

    Args:
        progress: Called as ``progress(epoch, loss)`` every ``progress_every`` epochs and/or when
            ``progress_seconds`` have passed since the last call (both optional; the loss is the
            float the loop reads anyway, so a call costs no extra work).

    Returns:
        The full-batch loss before every update (index e: after e updates) and the first e at
        which it was below ``threshold`` (None if never).
    """
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr)
    loss_fn = _loss_fn(loss)
    losses: List[float] = []
    reached: Optional[int] = None
    every = int(progress_every) if progress is not None and progress_every else 0
    seconds = float(progress_seconds) if progress is not None and progress_seconds is not None else None
    last = time.perf_counter()
    for epoch in range(epochs + 1):
        value = loss_fn(net(x), y)
        current = float(value.detach())
        losses.append(current)
        if reached is None and threshold is not None and current < threshold:
            reached = epoch
        if not math.isfinite(current) or epoch == epochs or (reached is not None and epoch >= min_epochs):
            break
        if progress is not None and epoch:
            if every and epoch % every == 0:
                progress(epoch, current)
                last = time.perf_counter()
            elif seconds is not None and time.perf_counter() - last >= seconds:
                progress(epoch, current)
                last = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
    return losses, reached


def constant(loss: str, x: torch.Tensor, y: torch.Tensor, k: int) -> float:
    return float(CONSTANTS[loss](x, y, k))


def increases(losses: Sequence[float]) -> int:
    """Epochs at which the loss went up by more than rounding (1e-12 relative)."""
    return sum(1 for a, b in zip(losses, losses[1:]) if b > a * (1 + 1e-12) + 1e-300)

