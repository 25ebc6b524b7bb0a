"""The rollback guard's ceiling: the retry's rate after a rollback, and its lift as the following
epochs stay healthy (``math.guard.retry_rate``, ``math.guard.lift_ceiling``; docs/rules.md section 5)."""

from __future__ import annotations

import math

import pytest
import torch

from lipschitz_lightning import LipschitzLR
from lipschitz_lightning.math.guard import lift_ceiling, retry_rate
from tests.lipschitz_toys import OPTIMIZERS, ScriptedLoss, RateRecorder, ToyDataModule, ToyModule, ToyNet, make_data, trainer

# --------------------------------------------------------------------------- the math, by hand


def test_retry_rate_is_a_quarter_of_the_largest_failed_rate():
    assert retry_rate(0.4, 0.25) == pytest.approx(0.1)
    assert retry_rate(0.4, 0.25, None) == pytest.approx(0.1)


def test_retry_rate_is_at_most_the_rules_rate_for_the_restored_weights():
    # A first epoch started at 1000; its first step's statistics (the initial weights) gave 0.1.
    assert retry_rate(1000.0, 0.25, 0.1) == pytest.approx(0.1)
    # A restored rate above the shrunk one changes nothing.
    assert retry_rate(0.4, 0.25, 0.3) == pytest.approx(0.1)
    # An unusable restored rate is ignored.
    for bad in (math.nan, math.inf, 0.0, -1.0):
        assert retry_rate(0.4, 0.25, bad) == pytest.approx(0.1)


def test_lift_ceiling_doubles_until_it_no_longer_binds_then_removes_it():
    # Ceiling 0.01, the rule proposes 0.05 every epoch: 0.02, 0.04, then 0.05 <= 0.08: gone.
    ceiling, seen = 0.01, []
    while ceiling is not None:
        ceiling = lift_ceiling(ceiling, 0.05, 2.0)
        seen.append(ceiling)
    assert seen == [pytest.approx(0.02), pytest.approx(0.04), None]
    # A rule already under the lifted ceiling: removed at once.
    assert lift_ceiling(0.01, 0.015, 2.0) is None
    assert lift_ceiling(0.01, 0.02, 2.0) is None  # equal: no longer binds
    # factor 1: the ceiling is kept (the guard without the lift); no ceiling stays none.
    assert lift_ceiling(0.01, 0.05, 1.0) == 0.01
    assert lift_ceiling(0.01, 0.001, 1.0) == 0.01
    assert lift_ceiling(None, 0.05, 2.0) is None


# --------------------------------------------------------------------------- through the callback


def scripted_run(guard_lift=None, epochs=6):
    healthy = [0.02] * 4
    # epoch 0 falls to the reference 0.02, epoch 1 is back at chance (rolled back), then healthy
    script = [[2.3, 0.5, 0.03, 0.02], [2.3] * 4] + [healthy] * (epochs - 2)
    torch.manual_seed(0)
    rates = RateRecorder()
    kwargs = {} if guard_lift is None else {"guard_lift": guard_lift}
    cb = LipschitzLR(rule="gradbound", guard=True, first_epoch_checks=False, **kwargs)
    trainer([cb, rates], max_epochs=epochs).fit(ScriptedLoss(script), datamodule=ToyDataModule(make_data(n=64), 16))
    return cb, rates


def test_the_ceiling_is_lifted_as_the_epochs_after_a_rollback_stay_healthy():
    cb, rates = scripted_run()
    r0 = rates.rates[0]
    assert cb.rollbacks == 1
    assert rates.rates[1] == pytest.approx(r0)  # the failing epoch ran at the rule's rate
    # The retry at a quarter of it, then doubled per healthy epoch until the rule's own rate (the
    # same features every epoch: R, the last epoch's, free again) is below it.
    rule = rates.rates[-1]
    assert rule == pytest.approx(r0, rel=0.05)
    ceilings = [r0 * f for f in (0.25, 0.5, 1.0, 2.0)]
    assert rates.rates[2:] == [pytest.approx(min(rule, c)) for c in ceilings]
    held = [s["ceiling_bound"] for s in rates.stats]
    # epoch 1 rolled back (the retry is held), then held while the lifted ceiling is below the rule
    assert held == [0.0, 1.0] + [float(c * 2 < rule) for c in ceilings]
    assert held[2] == 1.0 and held[-1] == 0.0
    assert math.isnan(rates.stats[-1]["ceiling"])  # removed


def test_guard_lift_1_keeps_the_ceiling():
    cb, rates = scripted_run(guard_lift=1.0, epochs=5)
    r0 = rates.rates[0]
    assert rates.rates[2:] == [pytest.approx(r0 * 0.25)] * 3
    assert [s["ceiling_bound"] for s in rates.stats][1:] == [1.0] * 4


def test_guard_lift_must_be_at_least_1():
    with pytest.raises(ValueError, match="guard_lift"):
        LipschitzLR(rule="smooth", guard_lift=0.5)


def test_a_checkpoint_without_the_lift_state_loads():
    cb, _ = scripted_run(epochs=3)
    state = cb.state_dict()
    for key in ("ceiling_bound", "epoch_max_lr", "start_rate"):
        state.pop(key)
    fresh = LipschitzLR(rule="gradbound", guard=True)
    fresh.load_state_dict(state)
    assert fresh.lr == cb.lr
    assert fresh.state_dict()["ceiling"] == state["ceiling"]
