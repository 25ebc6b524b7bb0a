"""The Polyak step capped by the rule's rate (``LipschitzLR(polyak=True)``, docs/rules.md section 10).

At every optimizer step the gradient is scaled in place by
:func:`~lipschitz_lightning.math.updates.polyak_factor` ``rho`` in ``[0, 1]``, so that the point
the next gradient is taken at lands where the linear model of the batch loss reaches its lower
bound 0 (the Polyak step), at most at the rule's rate (the ScheduleFree+ idea inside
Schedule-Free's averaging; the cap is the rule's bound). For Schedule-Free SGD that point is
``y' = y + c (z - y) - lr (1 - b (1 - c)) g`` (``c`` the step's averaging weight, ``b`` its
interpolation); for torch's SGD ``y' = y - lr g``. ``f`` is the loss the training step already
computed (Lightning's ``on_before_backward``, summed over accumulated micro-batches); ``g``, ``z``
and ``y`` are identical on every rank after the gradient's all-reduce, and ``f`` is averaged over
the ranks by one all-reduce of one number per step (none on one device). No host sync: ``rho``
stays on the device; the epoch's mean ``rho`` is logged as ``lipschitz/polyak``.

Only for optimizers whose step is linear in the gradient: Schedule-Free SGD and torch's SGD
without momentum. Adam's step does not scale with its gradient.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import pytorch_lightning as pl
import torch

from lipschitz_lightning.math.updates import polyak_factor

__all__ = ["PolyakState", "PolyakStep", "linear_in_gradient", "next_point_weights"]


def linear_in_gradient(optimizer: torch.optim.Optimizer) -> bool:
    """The optimizer's step is ``-lr g`` on its own sequence: Schedule-Free SGD (by class, no import
    of the package) or torch's SGD without momentum."""
    if type(optimizer).__name__ == "SGDScheduleFree":
        return True
    return isinstance(optimizer, torch.optim.SGD) and not any(g.get("momentum", 0.0) for g in optimizer.param_groups)


def next_point_weights(group: dict) -> Tuple[Any, float, float]:
    """``(lr, c, reach)`` of a param group's coming step: the next gradient's point moves by
    ``c (z - y) - lr reach g``. Schedule-Free SGD (its step: ``y <- lerp(y, z, c)``,
    ``y <- y + lr (b (1 - c) - 1) g``, ``z <- z - lr g``): ``lr`` its warmed-up rate, ``c`` the
    averaging weight ``w / sum w`` it is about to give (``w = (k+1)^r lr_max^p``, read from the
    group as the package computes it), ``reach = 1 - b (1 - c)``. torch's SGD: ``(lr, 0, 1)``."""
    if "weight_sum" not in group:
        return group["lr"], 0.0, 1.0
    k, warmup = group["k"], group.get("warmup_steps", 0)
    lr = group["lr"] * ((k + 1) / warmup if k < warmup else 1.0)
    weight = (k + 1) ** group["r"] * max(lr, group["lr_max"]) ** group["weight_lr_power"]
    total = group["weight_sum"] + weight
    c = weight / total if total > 0 else 0.0
    return lr, c, 1.0 - group["momentum"] * (1.0 - c)


@dataclass
class PolyakState:
    """The epoch's sum of ``rho`` and its steps so far (for the logged mean; host copies, saved at
    checkpoints only)."""

    polyak_sum: float = 0.0
    polyak_steps: int = 0


class PolyakStep:
    """Scales each step's gradient to the capped Polyak step (module docstring).

    Args:
        enabled: off: every method is a no-op.
    """

    def __init__(self, enabled: bool = False) -> None:
        if not isinstance(enabled, bool):
            raise ValueError(f"LipschitzLR: polyak must be true or false; got {enabled!r}")
        self.enabled = enabled
        self.state = PolyakState()
        self._loss: Optional[torch.Tensor] = None
        self._sum: Optional[torch.Tensor] = None

    def check(self, optimizer: torch.optim.Optimizer) -> None:
        """Raise ``ValueError`` if the optimizer's step does not scale with its gradient."""
        if self.enabled and not linear_in_gradient(optimizer):
            raise ValueError(
                f"LipschitzLR(polyak=True) scales the gradient to the Polyak step, which needs a step linear in "
                f"the gradient (schedulefree.SGDScheduleFree, or torch.optim.SGD without momentum); got "
                f"{type(optimizer).__name__}")

    def add_loss(self, loss: torch.Tensor) -> None:
        """A micro-batch's loss, as passed to backward (divided by the accumulation already)."""
        if self.enabled and torch.is_tensor(loss) and loss.numel() == 1:
            value = loss.detach().float().reshape(())
            self._loss = value if self._loss is None else self._loss + value

    def scale_gradients(self, trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> None:
        """Before the optimizer step: scale every gradient by ``rho`` in place (device tensors only)."""
        loss, self._loss = self._loss, None
        if not self.enabled or loss is None:
            return
        grads: List[torch.Tensor] = []
        step_sq = drift = torch.zeros((), device=loss.device)
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, c, reach = next_point_weights(group)
            g = [p.grad for p in params]
            grads += g
            norms = torch.stack(torch._foreach_norm(g)).float()
            step_sq = step_sq + lr * reach * norms.square().sum()
            for p, grad in zip(params, g):
                z = optimizer.state.get(p, {}).get("z")
                if z is not None and c:  # Schedule-Free's z after its first step (before it: z = y)
                    drift = drift + c * torch.dot(grad.reshape(-1).float(), (z - p.detach()).reshape(-1).float())
        if not grads:
            return
        loss = trainer.strategy.reduce(loss, reduce_op="mean")
        rho = polyak_factor(loss, drift, step_sq)
        torch._foreach_mul_(grads, rho.to(grads[0].dtype))
        self._sum = rho if self._sum is None else self._sum + rho
        self.state.polyak_steps += 1

    def metrics(self) -> Dict[str, float]:
        """The epoch's mean ``rho`` (one host sync, at the epoch's end), and a fresh count."""
        if not self.enabled:
            return {}
        total = self.state.polyak_sum + (float(self._sum) if self._sum is not None else 0.0)
        steps = self.state.polyak_steps
        self.state, self._sum = PolyakState(), None
        return {"lipschitz/polyak": total / steps if steps else float("nan")}

    def state_dict(self) -> Dict[str, Any]:
        if not self.enabled:
            return {}
        if self._sum is not None:  # a host copy at checkpoints only
            self.state.polyak_sum += float(self._sum)
            self._sum = None
        return asdict(self.state)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.state = PolyakState(polyak_sum=float(state.get("polyak_sum", 0.0)),
                                 polyak_steps=int(state.get("polyak_steps", 0)))
        self._sum, self._loss = None, None
