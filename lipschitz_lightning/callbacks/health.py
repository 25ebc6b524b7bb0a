"""The run-health verdict: a wrecked or frozen run stops with one line instead of training on to
its last epoch and exiting 0.

``StopOnNonFinite`` catches a loss or weight that is NaN or infinite. A run can be wrecked while
every value stays finite, and a guarded run can be held at a rate too small to learn. At the end of
each training epoch (host reads then, never per step) :class:`RunHealth` stops the run with
:class:`UnhealthyRunError` (one line: the epoch, what was seen, what to try; exit status 2 from the
CLI) when it sees

* **a training loss orders of magnitude above its start**: the epoch's mean training loss above
  ``loss_rise`` times the run's start, the smallest loss of its first ``reference_batches``
  training batches (the smallest: a first step that blows the network up must not raise it), or above
  ``overflow_loss`` (epochs the LipschitzLR guard rolled back are not judged: their weights were
  restored);
* **an overflowing weight norm**: every weight finite, but the largest parameter norm (in float32,
  as LipschitzLR's ``W``) infinite;
* **a LipschitzLR bound unusable in every epoch so far**: ``lipschitz/bound_invalid`` 1 in each of
  the first ``invalid_epochs`` epochs (the rule keeps its previous rate, so the rate never moves);
* **a validation accuracy at chance**: for ``chance_epochs`` epochs in a row at most
  ``1/k + chance_margin`` (``k`` classes) and not improving: the accuracy rose by less than
  ``min_improvement`` from the first of them to the last, and the mean training loss fell by less
  than that fraction (a network whose loss still falls is learning, if slowly);
* **a rate frozen by a ceiling**: the LipschitzLR guard's ceiling holds the rate
  (``lipschitz/ceiling_bound``) in ``frozen_epochs`` epochs in a row while the validation accuracy
  is poor (below ``poor_accuracy``, by default half-way between chance and 1).

It only reads: the rates of every optimizer, guarded or not, stay exactly as they are. The
accuracy checks need a classifier (``softmax_ce`` or ``bce``) and validation; regression runs get
the loss, weight and bound checks only.

Defaults and why (measured on the committed benchmark results, ``benchmarks/results/``): the
paper's AdaMo on digits peaks at 100x its first loss and recovers (so ``loss_rise`` is 1e3, not
100); DoG starts two epochs at chance and then trains (so ``chance_epochs`` is 3 and the window
must not be improving); Lightning's lr-finder baseline starts at 14-19% and climbs steadily.
None of those committed healthy runs is stopped; the D-Adaptation SGD digits runs, whose training
loss grew to 1e34 while staying finite, are. The tests' tiny runs (2 batches, a handful of
validation examples, up to 4 epochs) can sit at chance while healthy: 5 epochs are needed.

Example::

    trainer = pl.Trainer(callbacks=[StopOnNonFinite(), RunHealth()])
"""

from __future__ import annotations

import math
from typing import Any, List, Optional

import pytorch_lightning as pl
import torch

from lipschitz_lightning.callbacks.lipschitz_lr import LipschitzLR
from lipschitz_lightning.callbacks.safety import NonFiniteError
from lipschitz_lightning.math.losses import LOSSES

__all__ = ["RunHealth", "UnhealthyRunError"]


class UnhealthyRunError(NonFiniteError):
    """A wrecked or frozen run (one-line message). A :class:`NonFiniteError`: a user's error to act
    on (exit status 2), and no ``on_exception.ckpt`` is written for it."""


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"RunHealth: {name} must be an int >= 1; got {value!r}")
    return value


def _number(name: str, value: Any, low: float, low_inclusive: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (value == low and not low_inclusive):
        bound = ">=" if low_inclusive else ">"
        raise ValueError(f"RunHealth: {name} must be a finite number {bound} {low}; got {value!r}")
    return float(value)


class RunHealth(pl.Callback):
    """Stop a wrecked or frozen run at an epoch's end with one line (see the module docstring).

    Args:
        loss_rise: the epoch's mean training loss may be at most this times the run's start, the
            smallest loss of its first ``reference_batches`` batches (default 1e3).
        overflow_loss: ... and at most this, whatever the start (default 1e30).
        reference_batches: how many of the run's first training batches give the start (default 4).
        invalid_epochs: epochs in a row, from the first, with an unusable LipschitzLR bound (default 3).
        chance_epochs: epochs in a row at chance, not improving, that stop the run (default 5).
        chance_margin: "at chance" is a validation accuracy at most ``1/k + chance_margin`` (default 0.05).
        min_improvement: over those epochs the accuracy must have risen by at least this, or the
            mean training loss have fallen by at least this fraction, to go on (default 0.01).
        frozen_epochs: epochs in a row held at the guard's ceiling, with a poor accuracy, that stop
            the run (default 5).
        poor_accuracy: the accuracy below which a held rate counts as frozen; ``None``: half-way
            between chance and 1 (0.55 for 10 classes).
        num_classes: ``k``; ``None``: the module's ``hparams.num_outputs`` (2 for ``bce``).

    Raises:
        ValueError: a bad argument.
    """

    def __init__(
        self,
        loss_rise: float = 1e3,
        overflow_loss: float = 1e30,
        reference_batches: int = 4,
        invalid_epochs: int = 3,
        chance_epochs: int = 5,
        chance_margin: float = 0.05,
        min_improvement: float = 0.01,
        frozen_epochs: int = 5,
        poor_accuracy: Optional[float] = None,
        num_classes: Optional[int] = None,
    ) -> None:
        self.loss_rise = _number("loss_rise", loss_rise, 1.0, low_inclusive=False)
        self.overflow_loss = _number("overflow_loss", overflow_loss, 0.0, low_inclusive=False)
        self.reference_batches = _positive_int("reference_batches", reference_batches)
        self.invalid_epochs = _positive_int("invalid_epochs", invalid_epochs)
        self.chance_epochs = _positive_int("chance_epochs", chance_epochs)
        self.chance_margin = _number("chance_margin", chance_margin, 0.0)
        self.min_improvement = _number("min_improvement", min_improvement, 0.0)
        self.frozen_epochs = _positive_int("frozen_epochs", frozen_epochs)
        if poor_accuracy is not None and not (0 < _number("poor_accuracy", poor_accuracy, 0.0) <= 1):
            raise ValueError(f"RunHealth: poor_accuracy must be in (0, 1] or null; got {poor_accuracy!r}")
        self.poor_accuracy = poor_accuracy
        if num_classes is not None:
            _positive_int("num_classes", num_classes)
            if num_classes < 2:
                raise ValueError(f"RunHealth: num_classes must be >= 2; got {num_classes!r}")
        self.num_classes = num_classes

        # Saved in checkpoints (plain values): the run's start and the epochs' history.
        self.reference_loss: Optional[float] = None
        self.accuracies: List[float] = []  # validation accuracy of the last epochs judged
        self.losses: List[float] = []  # and their mean training loss
        self.invalid_streak = 0  # epochs in a row, from the first, with an unusable bound (-1: not from the first)
        self.frozen_streak = 0  # epochs in a row held at the guard's ceiling
        # Per epoch, on the device (no host sync per step).
        self._loss_sum: Optional[torch.Tensor] = None
        self._loss_count = 0
        self._ref_min: Optional[torch.Tensor] = None
        self._ref_count = 0
        self._val_acc: Optional[float] = None
        self._epoch_loss = math.nan
        self._epoch_count = 0
        self._rollbacks_at_start = 0

    # ------------------------------------------------------------------ gathering

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loss_sum, self._loss_count = None, 0
        self._val_acc = None
        self._rollbacks_at_start = sum(cb.rollbacks for cb in self._lipschitz(trainer))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return
        value = loss.detach().float().reshape(())
        self._loss_sum = value.clone() if self._loss_sum is None else self._loss_sum.add_(value)
        self._loss_count += 1
        if self.reference_loss is None and self._ref_count < self.reference_batches:
            self._ref_min = value.clone() if self._ref_min is None else torch.minimum(self._ref_min, value)
            self._ref_count += 1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        acc = trainer.callback_metrics.get("val/acc")
        if acc is not None:
            self._val_acc = float(acc)

    # ------------------------------------------------------------------ the verdict

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reduce_losses(trainer, pl_module)
        findings = self._loss_and_weights(trainer, pl_module) + self._lipschitz_findings(trainer)
        findings += self._accuracy_findings(pl_module)
        if findings:
            self._stop(trainer, findings)

    def _reduce_losses(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The epoch's mean training loss and (after the first epoch) the run's start, the same on
        every rank: one ``all_reduce`` of three numbers under DDP, and one host read."""
        finalize = self.reference_loss is None and self._ref_count > 0
        device = pl_module.device
        zero = torch.zeros((), device=device)
        packed = torch.stack([
            self._loss_sum.to(device) if self._loss_sum is not None else zero,
            torch.tensor(float(self._loss_count), device=device),
            self._ref_min.to(device) if finalize and self._ref_min is not None else zero,
        ])
        world = trainer.world_size
        if world > 1:
            packed = trainer.strategy.reduce(packed, reduce_op="sum")
        loss_sum, count, ref = (float(x) for x in packed.double().cpu())
        self._epoch_loss = loss_sum / count if count else math.nan
        self._epoch_count = int(count)
        if finalize:
            self.reference_loss = ref / world  # the ranks' starts, averaged
            self._ref_min = None

    def _loss_and_weights(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> List[str]:
        found = []
        rolled_back = sum(cb.rollbacks for cb in self._lipschitz(trainer)) > self._rollbacks_at_start
        if self._epoch_count and not rolled_back:
            mean = self._epoch_loss
            start = self.reference_loss
            if not math.isfinite(mean) or mean > self.overflow_loss:
                found.append(f"the training loss averaged {mean:.3g}, above {self.overflow_loss:.3g}")
            elif start is not None and start > 0 and mean > self.loss_rise * start:
                found.append(f"the training loss averaged {mean:.3g}, {mean / start:.3g} times its start ({start:.4g})")
        params = [p.detach() for p in pl_module.parameters()]
        if params:
            with torch.no_grad():
                norm = torch.stack([torch.linalg.vector_norm(p.float()) for p in params]).max()
                finite = torch.stack([torch.isfinite(p).all() for p in params]).all()
            if bool(finite) and not math.isfinite(float(norm)):
                found.append("a weight's norm overflows float32 (W = inf) while every weight is finite")
        return found

    def _lipschitz_findings(self, trainer: pl.Trainer) -> List[str]:
        found = []
        callbacks = [cb for cb in self._lipschitz(trainer) if cb.last_stats]
        invalid = any(cb.last_stats.get("bound_invalid") == 1.0 for cb in callbacks)
        if self.invalid_streak >= 0:  # -1 once an epoch had a usable bound: only a streak from the start counts
            self.invalid_streak = self.invalid_streak + 1 if invalid else -1
        if self.invalid_streak >= self.invalid_epochs:
            found.append(f"the LipschitzLR bound was unusable (lipschitz/bound_invalid) in every epoch so far "
                         f"({self.invalid_streak}), so the rate never moved")
        held = any(cb.last_stats.get("ceiling_bound") == 1.0 for cb in callbacks)
        self.frozen_streak = self.frozen_streak + 1 if held else 0
        return found

    def _accuracy_findings(self, pl_module: pl.LightningModule) -> List[str]:
        k = self._classes(pl_module)
        if self._val_acc is None or k is None:
            return []
        self.accuracies = (self.accuracies + [self._val_acc])[-self.chance_epochs:]
        self.losses = (self.losses + [self._epoch_loss])[-self.chance_epochs:]
        found = []
        chance = 1.0 / k
        window, losses = self.accuracies, self.losses
        loss_fell = (len(losses) == len(window) and all(math.isfinite(x) for x in losses)
                     and losses[-1] < (1 - self.min_improvement) * losses[0])
        if (len(window) == self.chance_epochs and all(a <= chance + self.chance_margin for a in window)
                and window[-1] - window[0] < self.min_improvement and not loss_fell):
            found.append(f"the validation accuracy stayed at chance ({', '.join(f'{a:.1%}' for a in window)} "
                         f"in the last {len(window)} epochs; {k} classes: {chance:.1%})")
        poor = self.poor_accuracy if self.poor_accuracy is not None else (1.0 + chance) / 2
        if self.frozen_streak >= self.frozen_epochs and self._val_acc < poor:
            found.append(f"the guard's ceiling held the rate for {self.frozen_streak} epochs in a row while the "
                         f"validation accuracy is {self._val_acc:.1%} (below {poor:.1%})")
        return found

    def _classes(self, pl_module: pl.LightningModule) -> Optional[int]:
        if self.num_classes is not None:
            return self.num_classes
        hparams = getattr(pl_module, "hparams", {}) or {}
        spec = LOSSES.get(hparams.get("loss"))
        if spec is None:
            return None
        if not spec.output_per_class:
            return spec.fixed_classes or None
        outputs = hparams.get("num_outputs")
        if isinstance(outputs, int) and outputs >= 2:
            return outputs
        return None

    @staticmethod
    def _lipschitz(trainer: pl.Trainer) -> List[LipschitzLR]:
        return [cb for cb in trainer.callbacks if isinstance(cb, LipschitzLR)]

    def _stop(self, trainer: pl.Trainer, findings: List[str]) -> None:
        lrs = sorted({float(g["lr"]) for opt in trainer.optimizers for g in opt.param_groups})
        rate = ", ".join(f"{lr:.4g}" for lr in lrs)
        lipschitz = self._lipschitz(trainer)
        if any("ceiling" in f for f in findings):
            advice = ("try a smaller first rate (lr.first_epoch=0.1) or let the guard lift its ceiling faster "
                      "(+optim.callback.guard_lift=4)")
        elif not lipschitz:
            advice = "try a smaller rate (optim.optimizer.lr=), standardised inputs (dataset.scale=standard) or a LipschitzLR optim (optim=smooth)"
        else:
            advice = ("try a smaller first rate (lr.first_epoch=0.1), standardised inputs (dataset.scale=standard)"
                      + ("" if any(cb.guard for cb in lipschitz)
                         else " or the rollback guard (optim.callback.guard=true, the default)"))
        raise UnhealthyRunError(
            f"run stopped in epoch {trainer.current_epoch + 1} (learning rate {rate}): {'; '.join(findings)}; {advice}"
        )

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        return {
            "reference_loss": self.reference_loss,
            "accuracies": list(self.accuracies),
            "losses": list(self.losses),
            "invalid_streak": self.invalid_streak,
            "frozen_streak": self.frozen_streak,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.reference_loss = state_dict.get("reference_loss")
        self.accuracies = [float(a) for a in state_dict.get("accuracies", [])]
        self.losses = [float(x) for x in state_dict.get("losses", [])]
        self.invalid_streak = int(state_dict.get("invalid_streak", 0))
        self.frozen_streak = int(state_dict.get("frozen_streak", 0))
