"""The rollback guard's ceiling: the retry's rate after a rollback, and its lift as the following
epochs stay healthy (``math.guard.retry_rate``, ``math.guard.lift_ceiling``; docs/rules.md section 5)."""

from __future__ import annotations

import math

import pytest
import torch

from lipschitz_lightning import LipschitzLR
from lipschitz_lightning.math.guard import drifted, lift_ceiling, retry_rate
from tests.lipschitz_toys import ScriptedLoss, RateRecorder, ToyDataModule, make_data, trainer

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


def test_drifted_needs_a_higher_rate_and_a_loss_above_the_margin():
    # The CIFAR-10 collapse's epoch 4: best 0.979, rate 1.15 -> 4.23, mean loss 1.253.
    assert drifted(1.253, 0.979, 4.23, 1.15, 0.1, 2.3)
    assert not drifted(1.253, 0.979, 1.15, 1.15, 0.1, 2.3)  # the same rate
    assert not drifted(1.253, 0.979, 1.26, 1.15, 0.1, 2.3)  # up by 9.6%: not a rise
    assert drifted(1.253, 0.979, 1.27, 1.15, 0.1, 2.3)
    assert not drifted(1.253, 0.979, 1.0, 1.15, 0.1, 2.3)  # a lower rate
    assert not drifted(1.07, 0.979, 4.23, 1.15, 0.1, 2.3)  # within 10% of the best
    assert drifted(1.08, 0.979, 4.23, 1.15, 0.1, 2.3)
    assert not drifted(1.253, 0.979, 4.23, 1.15, 0.0, 2.3)  # off
    assert not drifted(1.253, None, 4.23, 1.15, 0.1, 2.3)  # no accepted epoch yet
    assert not drifted(1.253, 0.979, 4.23, None, 0.1, 2.3)
    # A converged run's noise: 3x the best, but by less than a thousandth of the initial loss.
    assert not drifted(3e-5, 1e-5, 4.23, 1.15, 0.1, 2.3)


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
    for key in ("ceiling_bound", "epoch_max_lr", "start_rate", "best_loss", "last_rate", "drifts"):
        state.pop(key)
    fresh = LipschitzLR(rule="gradbound", guard=True)
    fresh.load_state_dict(state)
    assert fresh.lr == cb.lr
    assert fresh.state_dict()["ceiling"] == state["ceiling"]


# The drift test (docs/rules.md section 5): the scripted mean losses per epoch, with the features
# halved in epochs 1 and 2, so that the rule's rate (from the epoch before) rises into epochs 2 and 3.
BEST, WORSE = [0.5] * 4, [0.6] * 4  # 0.6 is 1.2x the best: under the loss test's factor 2
SHRINKING = [1.0, 0.5, 0.25, 0.25, 0.25, 0.25]


def drift_run(script, scales, **kwargs):
    torch.manual_seed(0)
    rates = RateRecorder()
    cb = LipschitzLR(rule="gradbound", guard=True, first_epoch_checks=False, **kwargs)
    trainer([cb, rates], max_epochs=len(script)).fit(ScriptedLoss(script, scales),
                                                    datamodule=ToyDataModule(make_data(n=64), 16))
    return cb, rates


def test_a_loss_that_drifts_up_for_two_epochs_as_the_rate_rises_is_rolled_back(caplog):
    script = [[1.0] * 4, BEST, WORSE, WORSE, WORSE, WORSE]
    with caplog.at_level("WARNING", logger="lipschitz_lightning.callbacks.lipschitz_lr"):
        cb, rates = drift_run(script, SHRINKING)
    r = rates.rates
    assert r[2] > r[1] * 1.1 and r[3] > r[2] * 1.1  # the rate rose into epochs 2 and 3
    assert [s["rollbacks"] for s in rates.stats] == [0, 0, 0, 1, 1, 1]  # epoch 3, the second drift
    assert r[4] == pytest.approx(0.25 * r[3])  # retried at a quarter of the drifted epoch's rate
    assert "drifted up for 2 epochs as the rate rose" in caplog.text


@pytest.mark.parametrize("case", ["one drifting epoch", "the rate did not rise", "within the margin", "off"])
def test_no_rollback_without_a_sustained_drift_at_a_rising_rate(case):
    script, scales, kwargs = [[1.0] * 4, BEST, WORSE, WORSE, WORSE, WORSE], SHRINKING, {}
    if case == "one drifting epoch":
        script = [[1.0] * 4, BEST, WORSE, BEST, WORSE, BEST]
    elif case == "the rate did not rise":
        scales = [1.0] * 6
    elif case == "within the margin":
        kwargs = {"guard_drift": 0.25}  # 0.6 is 1.2x the best
    else:
        kwargs = {"guard_drift": 0}
    cb, rates = drift_run(script, scales, **kwargs)
    assert cb.rollbacks == 0
    if scales is SHRINKING:
        assert rates.rates[3] > rates.rates[2] * 1.1 > rates.rates[1] * 1.1 ** 2


def test_guard_drift_must_be_a_number_at_least_0():
    for bad in (-0.1, math.inf, True, "0.1"):
        with pytest.raises(ValueError, match="guard_drift"):
            LipschitzLR(rule="smooth", guard_drift=bad)
