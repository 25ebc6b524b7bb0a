"""The callback's policy around a rule lives in the configs (one shared base file plus each
``conf/optim/<rule>.yaml``), and the rollback guard is on by default for every rule, the paper's
four included: a healthy run's rates are the raw rule's, a blown-up AdaMo epoch is rolled back
with the guard (one log line) and trains on as published without it (``optim.callback.guard=false``)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Dict, List, Tuple

import hydra
import pytest
import pytorch_lightning as pl
import torch

from lipschitz_lightning import LipschitzLR
from lipschitz_lightning.bench.__main__ import load_config
from lipschitz_lightning.bench.runner import method_overrides
from lipschitz_lightning.train import train
from tests.conftest import CONF_DIR, compose_train, path_overrides, tiny_trainer
from tests.lipschitz_toys import OPTIMIZERS, ToyDataModule, ToyModule, ToyNet, make_data, trainer

PAPER_RULES = {"sgd": "sgd", "adamo": "adamo", "rmsprop": "rmsprop", "auto_adam": "auto_adam"}  # option -> rule
POLICY_KEYS = ("guard", "max_growth", "first_epoch_checks", "first_epoch_growth")
# What each LipschitzLR option of conf/optim sets: (guard, max_growth, first_epoch_checks, first_epoch_growth).
EXPECTED = {
    "sgd": (True, None, False, None),
    "adamo": (True, None, False, None),
    "rmsprop": (True, None, False, None),
    "auto_adam": (True, None, False, None),
    "adamo_consistent": (True, None, False, None),
    "gradbound": (True, None, True, None),
    "smooth": (True, 4.0, True, None),
    "smooth_momentum": (True, 4.0, True, None),
    "curvature": (True, 4.0, True, 2.0),
    "curvature_momentum": (True, 4.0, True, 2.0),
    "precond": (True, 4.0, True, 2.0),
    "precond_sf": (True, 4.0, True, 2.0),
    "precond_step": (True, 4.0, True, 2.0),
    "precond_sf_sgd": (True, 4.0, True, 2.0),
    "polyak_sf": (True, 4.0, True, 2.0),
}


def _lipschitz_options() -> List[str]:
    """The conf/optim options whose composed callback is a LipschitzLR."""
    found = []
    for path in sorted((CONF_DIR / "optim").glob("*.yaml")):
        callback = compose_train([f"optim={path.stem}", "dataset=digits", "model=mlp"]).optim.get("callback")
        if callback is not None and callback.get("_target_") == "lipschitz_lightning.LipschitzLR":
            found.append(path.stem)
    return found


# --------------------------------------------------------------------------- the policy in the configs


def test_every_lipschitz_option_sets_its_policy_and_the_callback_takes_it(tmp_path: Path):
    options = _lipschitz_options()
    assert set(options) == set(EXPECTED), options  # every option checked, a new one must be added here
    for option in options:
        cfg = compose_train(path_overrides(tmp_path) + [f"optim={option}", "dataset=digits", "model=mlp"])
        node = cfg.optim.callback
        composed = tuple(node.get(key) for key in POLICY_KEYS)
        assert all(key in node for key in POLICY_KEYS), (option, list(node))  # set, not left to the code
        assert composed == EXPECTED[option], (option, composed)
        callback = hydra.utils.instantiate(node, loss="softmax_ce", _convert_="all")
        taken = tuple(getattr(callback, key) for key in POLICY_KEYS)
        assert taken == EXPECTED[option], (option, taken)
        # The drop-in callback given only the rule starts it the same way as the app.
        dropin = LipschitzLR(rule=callback.rule)
        assert tuple(getattr(dropin, key) for key in POLICY_KEYS) == taken, option


def test_the_options_share_one_base_file_and_say_only_what_differs():
    base = CONF_DIR / "optim" / "base" / "lipschitz.yaml"
    assert "guard: true" in base.read_text()
    for option in EXPECTED:
        text = (CONF_DIR / "optim" / f"{option}.yaml").read_text()
        assert "base/lipschitz@callback" in text, option
        assert "guard:" not in text and "first_epoch_lr:" not in text and "Placeholder" not in text, option
    # A value set in the base can be changed without a `+`, and guard=false is the raw rule.
    cfg = compose_train(["optim=adamo", "optim.callback.guard=false", "optim.callback.max_growth=8"])
    callback = hydra.utils.instantiate(cfg.optim.callback, loss="softmax_ce", _convert_="all")
    assert callback.guard is False and callback.max_growth == 8


@pytest.mark.parametrize("option", sorted(PAPER_RULES))
def test_the_guard_is_on_by_default_for_the_paper_rules(option: str):
    assert LipschitzLR(rule=PAPER_RULES[option]).guard is True
    cfg = compose_train([f"optim={option}", "dataset=digits", "model=mlp"])
    assert hydra.utils.instantiate(cfg.optim.callback, loss="softmax_ce", _convert_="all").guard is True


def test_the_benchmark_runs_the_paper_rules_raw_and_adds_them_guarded():
    cfg = load_config(["suite=digits"])
    methods = method_overrides(cfg)
    for option in PAPER_RULES:
        for method, guard in ((option, False), (f"{option}_guarded", True)):
            train_cfg = compose_train(["dataset=digits", "model=mlp", *methods[method]])
            assert train_cfg.optim.callback.rule == PAPER_RULES[option]
            assert train_cfg.optim.callback.guard is guard, method


# --------------------------------------------------------------------------- the guard changes nothing until it fires


class StepRates(pl.Callback):
    """The optimizer's rate at every training step, and the logged ``lipschitz/*`` values per epoch."""

    def __init__(self) -> None:
        self.rates: List[float] = []
        self.logged: List[Dict[str, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates.append(float(trainer.optimizers[0].param_groups[0]["lr"]))

    def on_train_epoch_end(self, trainer, pl_module):
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("lipschitz/")})


# Runs the guard never stops (4 steps per epoch; AdaMo at x = 1, where K_0 = x does not jump).
HEALTHY = {"sgd": 0.02, "adamo": 1.0, "rmsprop": 0.01, "auto_adam": 1e-3}


@pytest.mark.parametrize("rule", sorted(HEALTHY))
def test_a_healthy_guarded_run_logs_the_raw_rules_rates(rule: str):
    def run(**kwargs):
        torch.manual_seed(0)
        module = ToyModule(ToyNet(), OPTIMIZERS[rule])
        record = StepRates()
        trainer([LipschitzLR(rule=rule, first_epoch_lr=HEALTHY[rule], **kwargs), record], max_epochs=4).fit(
            module, datamodule=ToyDataModule(make_data(), 16))
        return record

    guarded, raw = run(), run(guard=False)
    assert len(guarded.logged) == 4 and guarded.logged[-1]["lipschitz/rollbacks"] == 0  # on, never fired
    assert "lipschitz/rollbacks" not in raw.logged[-1]
    assert len(guarded.rates) == 16 and guarded.rates == raw.rates  # exactly, at every step
    for key in ("lipschitz/lr", "lipschitz/next_lr", "lipschitz/L", "lipschitz/K_z"):
        assert [e[key] for e in guarded.logged] == [e[key] for e in raw.logged], key


# --------------------------------------------------------------------------- the mission case: AdaMo's jump


def _adamo_on_digits(tmp_path: Path, *extra: str) -> Tuple[List[Dict[str, float]], float]:
    """The paper's AdaMo (K_0 = x = 0.1) on digits, MLP 128-64, batch 64, 3 epochs: the rate jumps
    from 0.1 to about 9 after the first epoch. Returns the logged rows with LipschitzLR values and
    the test accuracy."""
    quiet = [o for o in tiny_trainer(epochs=3, logger=True) if "limit_train_batches" not in o]
    cfg = compose_train(path_overrides(tmp_path) + quiet + [
        "logger=csv", "dataset=digits", "model=mlp", "model.hidden_sizes=[128,64]", "dataset.batch_size=64",
        "optim=adamo", "seed=0", *extra])
    metrics = train(cfg)
    with open(tmp_path / "run" / "csv" / "metrics.csv") as handle:
        rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]
    return [row for row in rows if "lipschitz/lr" in row], float(metrics["test/acc"])


@pytest.mark.slow
def test_adamos_blown_up_jump_is_rolled_back_with_the_guard_and_not_without(tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="lipschitz_lightning.callbacks.lipschitz_lr"):
        guarded, guarded_acc = _adamo_on_digits(tmp_path / "guarded")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("LipschitzLR guard:")]
    raw, raw_acc = _adamo_on_digits(tmp_path / "raw", "optim.callback.guard=false")
    assert len(guarded) == len(raw) == 3

    # Both start as the paper: x = 0.1, then 1/K with K = 0.9 x + 0.1 L.
    for run in (guarded, raw):
        assert run[0]["lipschitz/lr"] == pytest.approx(0.1)
        assert run[0]["lipschitz/next_lr"] == pytest.approx(1 / (0.9 * 0.1 + 0.1 * run[0]["lipschitz/L"]), rel=1e-5)
        assert run[0]["lipschitz/next_lr"] > 5  # the jump
    assert guarded[0]["lipschitz/next_lr"] == raw[0]["lipschitz/next_lr"]  # the same rates until it fires

    # With the guard: the jumped epoch is rolled back, one log line says so, the retry is slower.
    assert guarded[1]["lipschitz/rollbacks"] == 1 and len(lines) == 1, lines
    assert "in epoch 1" in lines[0] and "retrying at lr=" in lines[0]
    assert guarded[1]["lipschitz/next_lr"] == pytest.approx(guarded[1]["lipschitz/lr"] / 4, rel=1e-5)
    assert guarded[1]["lipschitz/K1"] == pytest.approx(guarded[0]["lipschitz/K1"])  # its state restored too

    # Without: no rollback and the paper's recurrence at every epoch, the jumped epoch included
    # (an epoch whose bound is unusable, K_z = 0 once every ReLU died, keeps its rate and K).
    assert all("lipschitz/rollbacks" not in row for row in raw)
    K, lr = 0.1, 0.1
    for row in raw:
        assert row["lipschitz/lr"] == pytest.approx(lr, rel=1e-5)
        if row["lipschitz/bound_invalid"] == 0:
            K = 0.9 * K + 0.1 * row["lipschitz/L"]
            lr = 1 / K
        assert row["lipschitz/K1"] == pytest.approx(K, rel=1e-5)
        assert row["lipschitz/next_lr"] == pytest.approx(lr, rel=1e-5)
    assert guarded_acc > raw_acc + 0.2, (guarded_acc, raw_acc)  # the guard is what makes it train
