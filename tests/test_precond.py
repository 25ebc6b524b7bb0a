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
from tests.lipschitz_toys import ToyDataModule, ToyModule, ToyNet, make_data, trainer


class SwitchingToyModule(ToyModule):
    """A toy module that puts a Schedule-Free optimizer in train mode for training (as
    SupervisedModule does)."""

    def on_train_epoch_start(self):
        optimizer = self.optimizers().optimizer
        if hasattr(optimizer, "train"):
            optimizer.train()


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
        b2, eps = group["betas"][1], group["eps"]
        state = optimizer.state.get(w, {})
        v_prev = state.get("exp_avg_sq", torch.zeros_like(w))
        t = group["k"] if "k" in group else int(state.get("step", torch.tensor(0.0)).item())
        v = b2 * v_prev + (1 - b2) * w.grad ** 2
        d = 1.0 / (torch.sqrt(v / (1 - b2 ** (t + 1))) + eps)
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
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_precond_bound_and_rate_follow_independently_recorded_steps(optimizer):
    torch.manual_seed(0)
    module = SwitchingToyModule(ToyNet(k=3, hidden=8), OPTIMIZERS[optimizer])
    oracle, logged = StepOracle(), Logged()
    callback = LipschitzLR(rule="precond", first_epoch_checks=True, first_epoch_growth=2.0, max_growth=4.0)
    rates = []

    class Rates(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer([oracle, callback, logged, Rates()], max_epochs=3).fit(module, datamodule=ToyDataModule(make_data(n=96), 16))
    assert len(logged.stats) == len(oracle.epoch_L) == 3
    for mine, theirs in zip(logged.stats, oracle.epoch_L):
        # The callback bounds lambda_max(A^T C A) from above by repeated squaring (at most d^(1/32) over).
        assert theirs * (1 - 1e-5) <= mine["L"] <= theirs * 8 ** (1 / 32) * (1 + 1e-5), (mine["L"], theirs)
    gain = (1 + 0.8) / (1 - 0.8)  # beta1 read from the optimizer: half of Adam's edge, 9 / S
    for epoch in logged.stats:
        expected = min(gain / epoch["L"], 4.0 * epoch["lr"])
        assert epoch["next_lr"] == pytest.approx(expected, rel=1e-6)
    # The first step runs at the rule's 1e-3; the first epoch's checks then follow the statistics.
    assert rates[0] == pytest.approx(1e-3)
    assert rates[1] != pytest.approx(1e-3) and all(math.isfinite(r) and r > 0 for r in rates)


def test_precond_refuses_an_optimizer_without_adams_preconditioner():
    torch.manual_seed(0)
    module = ToyModule(ToyNet(k=3), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    with pytest.raises(ValueError, match="AdamWScheduleFree"):
        trainer([LipschitzLR(rule="precond")], max_epochs=1).fit(module, datamodule=ToyDataModule(make_data(n=32), 16))


# The digits MLP cases where the paper's rules fail raw (sgd NaN in the first epoch, adamo's jump
# to chance): the 128-64 net at batch 64, and the digits suite's net at batch 32, scaled.
DIGITS_CASES = {
    "mlp128-64-batch64": ["model.hidden_sizes=[128,64]", "dataset.batch_size=64"],
    "suite-mlp-batch32": ["dataset.batch_size=32", "dataset.scale=standard"],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(DIGITS_CASES))
@pytest.mark.parametrize("option", ["precond", "precond_sf"])
def test_precond_trains_the_digits_mlp_cases_without_diverging_or_stalling(tmp_path, option, case):
    from lipschitz_lightning.train import train
    from tests.conftest import compose_train, path_overrides, tiny_trainer

    quiet = [o for o in tiny_trainer(epochs=5) if "limit_train_batches" not in o]
    cfg = compose_train(path_overrides(tmp_path) + quiet + ["dataset=digits", "model=mlp", f"optim={option}",
                                                             "seed=0", *DIGITS_CASES[case]])
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["test/loss"])
    assert metrics["test/acc"] >= 0.9, metrics["test/acc"]
