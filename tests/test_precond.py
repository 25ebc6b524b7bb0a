"""The ``precond`` rule end to end: its bound from independently recorded steps, the rate it writes
into AdamW and Schedule-Free AdamW, and the optimizers it accepts."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import schedulefree
import torch

from lipschitz_lightning import LipschitzLR
from lipschitz_lightning.math.losses import curvature_weights
from tests.lipschitz_toys import ToyDataModule, ToyModule, ToyNet, TrainModeToyModule, make_data, sf_sgd, trainer


SwitchingToyModule = TrainModeToyModule


class StepOracle(pl.Callback):
    """Recomputes, per optimizer step and from scratch, what the rule's bound is made of: the head's
    ``lambda_max(A^T C A) / m`` (exact eigenvalue) and Adam's ``g^T D g`` and ``||D g||^2``
    (placed before LipschitzLR: both read the gradient before the step)."""

    def __init__(self):
        self.curvature, self.gdg, self.dg2, self.epoch_L = [], [], [], []
        self._inputs = None

    def on_fit_start(self, trainer, pl_module):
        head = self.head = pl_module.net.head

        def hook(module, args, output):
            if module.training and torch.is_grad_enabled():
                self._inputs = (args[0].detach(), output.detach())

        head.register_forward_hook(hook)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        a, logits = self._inputs
        c = curvature_weights(logits, "softmax_ce")
        self.curvature.append(float(torch.linalg.eigvalsh((a * c[:, None]).T @ a).max()) / a.shape[0])
        w = self.head.weight
        group = optimizer.param_groups[0]
        if "betas" in group:  # Adam's preconditioner of the coming step
            b2, eps = group["betas"][1], group["eps"]
            state = optimizer.state.get(w, {})
            v_prev = state.get("exp_avg_sq", torch.zeros_like(w))
            t = group["k"] if "k" in group else int(state.get("step", torch.tensor(0.0)).item())
            v = b2 * v_prev + (1 - b2) * w.grad ** 2
            d = 1.0 / (torch.sqrt(v / (1 - b2 ** (t + 1))) + eps)
        else:  # Schedule-Free SGD: z <- z - lr g, D = I
            d = torch.ones_like(w)
        self.gdg.append(float((w.grad * d * w.grad).sum()))
        self.dg2.append(float(((d * w.grad) ** 2).sum()))

    def on_train_epoch_end(self, trainer, pl_module):
        beta = max(self.curvature)
        self.epoch_L.append(beta * sum(self.dg2) / sum(self.gdg))
        self.curvature, self.gdg, self.dg2 = [], [], []


class Logged(pl.Callback):
    def __init__(self):
        self.stats = []

    def on_train_epoch_end(self, trainer, pl_module):
        lipschitz = next(c for c in trainer.callbacks if isinstance(c, LipschitzLR))
        self.stats.append(dict(lipschitz.last_stats))


OPTIMIZERS = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.5, betas=(0.8, 0.999), weight_decay=0.0),
    "schedulefree_adamw": lambda p: schedulefree.AdamWScheduleFree(p, lr=0.5, betas=(0.8, 0.999), warmup_steps=0,
                                                                   weight_decay=0.0),
    "schedulefree_sgd": sf_sgd,  # interpolation 0.8: the same gain
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_precond_bound_and_rate_follow_independently_recorded_steps(optimizer):
    torch.manual_seed(0)
    module = SwitchingToyModule(ToyNet(k=3, hidden=8), OPTIMIZERS[optimizer])
    oracle, logged = StepOracle(), Logged()
    # The raw rule (guard off): on these random labels the loss cannot fall, and with AdamW at the
    # rate growing 4x per epoch it drifts up (1.25 -> 1.43 at lr 1.0), which the guard rolls back
    # (tests/test_guard.py); this test is of the rule's formula.
    callback = LipschitzLR(rule="precond", first_epoch_checks=True, first_epoch_growth=2.0, max_growth=4.0,
                           guard=False)
    rates = []

    class Rates(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer([oracle, callback, logged, Rates()], max_epochs=3).fit(module, datamodule=ToyDataModule(make_data(n=96), 16))
    assert len(logged.stats) == len(oracle.epoch_L) == 3
    for mine, theirs in zip(logged.stats, oracle.epoch_L):
        # The callback bounds lambda_max(A^T C A) from above by repeated squaring (at most d^(1/32) over).
        assert theirs * (1 - 1e-5) <= mine["L"] <= theirs * 8 ** (1 / 32) * (1 + 1e-5), (mine["L"], theirs)
    gain = (1 + 0.8) / (1 - 0.8)  # beta1 (the interpolation) read from the optimizer: 9 / S
    for epoch in logged.stats:
        expected = min(gain / epoch["L"], 4.0 * epoch["lr"])
        assert epoch["next_lr"] == pytest.approx(expected, rel=1e-6)
    # The first step runs at the rule's 1e-3; the first epoch's checks then follow the statistics.
    assert rates[0] == pytest.approx(1e-3)
    assert rates[1] != pytest.approx(1e-3) and all(math.isfinite(r) and r > 0 for r in rates)


def test_precond_refuses_an_optimizer_without_a_preconditioned_step():
    torch.manual_seed(0)
    module = ToyModule(ToyNet(k=3), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    with pytest.raises(ValueError, match=r"AdamWScheduleFree or schedulefree\.SGDScheduleFree; got SGD"):
        trainer([LipschitzLR(rule="precond")], max_epochs=1).fit(module, datamodule=ToyDataModule(make_data(n=32), 16))


# The digits MLP cases where the paper's rules fail raw (sgd NaN in the first epoch, adamo's jump
# to chance): the 128-64 net at batch 64, and the digits suite's net at batch 32, scaled.
DIGITS_CASES = {
    "mlp128-64-batch64": ["model.hidden_sizes=[128,64]", "dataset.batch_size=64"],
    "suite-mlp-batch32": ["dataset.batch_size=32", "dataset.scale=standard"],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(DIGITS_CASES))
@pytest.mark.parametrize("option", ["precond", "precond_sf", "precond_sf_sgd", "polyak_sf"])
def test_precond_trains_the_digits_mlp_cases_without_diverging_or_stalling(tmp_path, option, case):
    from lipschitz_lightning.train import train
    from tests.conftest import compose_train, path_overrides, tiny_trainer

    quiet = [o for o in tiny_trainer(epochs=5) if "limit_train_batches" not in o]
    cfg = compose_train(path_overrides(tmp_path) + quiet + ["dataset=digits", "model=mlp", f"optim={option}",
                                                             "seed=0", *DIGITS_CASES[case]])
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["test/loss"])
    assert metrics["test/acc"] >= 0.9, metrics["test/acc"]


class StepTerms(StepOracle):
    """StepOracle keeping every step's ``g^T D g`` and ``||D g||^2`` with its epoch."""

    def __init__(self):
        super().__init__()
        self.steps = []  # (epoch, q, p)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        self.steps.append((trainer.current_epoch, self.gdg[-1], self.dg2[-1]))


def test_per_step_rate_rescales_the_epoch_rate_by_each_steps_preconditioned_ratio():
    torch.manual_seed(0)
    module = SwitchingToyModule(ToyNet(k=3, hidden=8), OPTIMIZERS["adamw"])
    terms, logged = StepTerms(), Logged()
    callback = LipschitzLR(rule="precond", first_epoch_checks=True, first_epoch_growth=2.0, max_growth=4.0,
                           per_step=True)
    rates = []  # (epoch, batch, rate in force)

    class Rates(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            assert torch.is_tensor(lr)  # the rate is a tensor on the device, written in place
            rates.append((trainer.current_epoch, batch_idx, float(lr)))

    trainer([terms, callback, logged, Rates()], max_epochs=3).fit(module, datamodule=ToyDataModule(make_data(n=96), 16))
    assert [e["rollbacks"] for e in logged.stats[:2]] == [0, 0]  # (a rollback at the end of the last epoch changes none of its rates)
    # The oracle's EWMA of the steps' ratio, updated from the second step on (the first step's
    # check sets the first reference).
    ewma, after = 0.0, []
    for i, (_, q, p) in enumerate(terms.steps):
        if i >= 1:
            ewma = q / p if ewma == 0 else 0.9 * ewma + 0.1 * q / p
        after.append(ewma)
    checked = 0
    for epoch in (1, 2):
        base = logged.stats[epoch - 1]["next_lr"]  # the epoch's rate
        previous = [(q, p) for e, q, p in terms.steps if e == epoch - 1]
        reference = sum(q for q, _ in previous) / sum(p for _, p in previous)
        first = next(i for i, (e, _, _) in enumerate(terms.steps) if e == epoch)
        in_epoch = [r for r in rates if r[0] == epoch]
        assert in_epoch[0][2] == pytest.approx(base, rel=1e-6)  # the epoch starts at its own rate
        for (_, batch, rate) in in_epoch[1:]:
            expected = min(max(base * after[first + batch - 1] / reference, base / 4), base * 4)
            assert rate == pytest.approx(expected, rel=1e-4), (epoch, batch)
            checked += 1
    assert checked == 10
    assert len({round(r, 12) for e, b, r in rates if e == 2}) > 1  # the rate moves within the epoch


def test_per_step_needs_a_rule_with_a_per_step_statistic_and_a_tensor_rate():
    with pytest.raises(ValueError, match="per_step=True needs a rule with a per-step statistic"):
        LipschitzLR(rule="curvature", per_step=True)
    torch.manual_seed(0)
    module = SwitchingToyModule(ToyNet(k=3), OPTIMIZERS["schedulefree_adamw"])
    with pytest.raises(ValueError, match="takes its rate as a Python number"):
        trainer([LipschitzLR(rule="precond", per_step=True)], max_epochs=1).fit(
            module, datamodule=ToyDataModule(make_data(n=32), 16))
