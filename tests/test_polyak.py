"""``LipschitzLR(polyak=True)``: each step of Schedule-Free SGD is the Polyak step of its batch loss,
capped by the rule's rate, checked against an independent recomputation per step (the gradients
before and after the callback, the optimizer's ``z`` before and after the step), the logged mean
factor, the optimizers it refuses, and one DDP run equal to one process on the global batch."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch

from lipschitz_lightning import LipschitzLR
from lipschitz_lightning.math.updates import polyak_factor
from tests.lipschitz_toys import RateRecorder, ToyDataModule, ToyNet, TrainModeToyModule, make_data, sf_sgd, trainer


def test_polyak_factor_is_the_capped_polyak_step_over_the_rules_step():
    t = lambda x: torch.tensor(float(x))  # noqa: E731
    # (f + drift) / sum lr a ||g||^2 = (1.5 - 0.5) / 2 = 0.5
    assert float(polyak_factor(t(1.5), t(-0.5), t(2.0))) == pytest.approx(0.5)
    assert float(polyak_factor(t(10.0), t(0.0), t(2.0))) == 1.0  # the rule's rate caps it
    assert float(polyak_factor(t(0.2), t(-0.5), t(2.0))) == 0.0  # linear model below 0 already: no step
    assert float(polyak_factor(t(1.0), t(0.0), t(0.0))) == 1.0  # no gradient: the rate as it is
    assert math.isnan(float(polyak_factor(t(float("nan")), t(0.0), t(2.0))))  # left to the guard
    assert math.isnan(float(polyak_factor(t(float("inf")), t(-float("inf")), t(2.0))))


class Before(pl.Callback):
    """Placed before LipschitzLR: each step's batch loss, raw gradients and parameters."""

    def __init__(self):
        self.steps, self.epochs, self._loss = [], [], None

    def on_before_backward(self, trainer, pl_module, loss):
        self._loss = float(loss.detach())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.steps.append(dict(epoch=trainer.current_epoch, f=self._loss, params=params,
                               grads=[p.grad.detach().clone() for p in params],
                               y=[p.detach().clone() for p in params]))


class After(pl.Callback):
    """Placed after LipschitzLR: the gradients it left, and the parameters after the step (the
    point the next gradient is taken at, in train mode)."""

    def __init__(self, before: Before):
        self.before = before

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before.steps[-1]["scaled"] = [p.grad.detach().clone() for p in self.before.steps[-1]["params"]]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = self.before.steps[-1]
        step["y_next"] = [p.detach().clone() for p in step["params"]]

    def on_train_epoch_end(self, trainer, pl_module):
        lipschitz = next(c for c in trainer.callbacks if isinstance(c, LipschitzLR))
        self.before.epochs.append(dict(lipschitz.last_stats))


def test_each_step_lands_at_the_zero_of_the_losss_linear_model_unless_the_rate_caps_it():
    torch.manual_seed(0)
    module = TrainModeToyModule(ToyNet(k=3, hidden=8), sf_sgd)
    before = Before()
    callback = LipschitzLR(rule="precond", first_epoch_checks=True, first_epoch_growth=2.0, max_growth=4.0,
                           polyak=True)
    trainer([before, callback, After(before)], max_epochs=3).fit(module, datamodule=ToyDataModule(make_data(n=96), 16))
    assert len(before.steps) == 18 and len(before.epochs) == 3
    dot = lambda a, b: sum(float((x * y).sum()) for x, y in zip(a, b))  # noqa: E731
    capped = landed = 0
    for step in before.steps:
        g = step["grads"]
        rho = dot(step["scaled"], g) / dot(g, g)  # the factor the callback applied
        for raw, scaled in zip(g, step["scaled"]):
            torch.testing.assert_close(scaled, raw * rho, rtol=1e-5, atol=1e-7)  # one factor for every gradient
        assert 0.0 <= rho <= 1.0 + 1e-6
        step["rho"] = rho
        # The loss's linear model at the point the next gradient is taken at, after the optimizer's step.
        model = step["f"] + dot(g, [b - a for a, b in zip(step["y"], step["y_next"])])
        if rho < 1 - 1e-6:
            assert model == pytest.approx(0.0, abs=1e-4 * step["f"]), step["epoch"]  # the Polyak step
            landed += 1
        else:
            assert model >= -1e-6  # the rule's rate stopped it short of the zero
            capped += 1
    assert landed and capped  # both cases ran (the first steps at the first epoch's small rate are capped)
    for epoch, logged in enumerate(before.epochs):
        mine = [s["rho"] for s in before.steps if s["epoch"] == epoch]
        assert logged["polyak"] == pytest.approx(sum(mine) / len(mine), rel=1e-4)


def test_polyak_refuses_an_optimizer_whose_step_does_not_scale_with_the_gradient():
    torch.manual_seed(0)
    module = TrainModeToyModule(ToyNet(k=3), lambda p: torch.optim.AdamW(p, lr=1e-3))
    with pytest.raises(ValueError, match="needs a step linear in the gradient"):
        trainer([LipschitzLR(rule="precond", polyak=True)], max_epochs=1).fit(
            module, datamodule=ToyDataModule(make_data(n=32), 16))
    with pytest.raises(ValueError, match="polyak must be true or false"):
        LipschitzLR(rule="precond", polyak="yes")


def test_polyak_is_off_by_default_and_logs_nothing():
    torch.manual_seed(0)
    module = TrainModeToyModule(ToyNet(k=3), sf_sgd)
    callback = LipschitzLR(rule="precond")
    trainer([callback], max_epochs=1).fit(module, datamodule=ToyDataModule(make_data(n=32), 16))
    assert "polyak" not in callback.last_stats


@pytest.mark.slow
def test_polyak_under_ddp_gives_every_rank_the_same_factor(tmp_path):
    """Each rank's loss is its own half of the batch: without the all-reduce of f the ranks' factors
    would differ, and with them their steps. (Not compared with one process: the curvature bound of
    ``precond`` sums the ranks' bounds, docs/rules.md section 7, so the rates differ by design.)"""
    torch.manual_seed(0)
    module = TrainModeToyModule(ToyNet(k=3, hidden=8), sf_sgd)
    trainer([LipschitzLR(rule="precond", polyak=True), RateRecorder(str(tmp_path))], max_epochs=3, devices=2,
            strategy="ddp_spawn", use_distributed_sampler=False).fit(module, datamodule=ToyDataModule(make_data(n=64), 8))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    factors = [[s["polyak"] for s in r["stats"]] for r in ranks]
    assert len(factors[0]) == 3 and factors[0] == factors[1]
    assert ranks[0]["rates"] == ranks[1]["rates"]
    assert any(f < 1.0 for f in factors[0])  # the factor was at work
