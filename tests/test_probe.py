"""The probes of a LightningModule without ``forward``: they go through its ``training_step``,
give the rates of the same model with ``forward``, and leave no trace in what the step keeps
(its logged values, a torchmetrics accumulator, lists, counters, Python's RNG)."""

from __future__ import annotations

import random

import pytest
import pytorch_lightning as pl
import torch
import torchmetrics
from torch import nn

from lipschitz_lightning import LipschitzLR
from lipschitz_lightning.callbacks import LipschitzLRError
from tests.lipschitz_toys import OPTIMIZERS, RateRecorder, ToyDataModule, ToyModule, ToyNet, make_data, trainer


class NoForward(pl.LightningModule):
    """The README's kind of module: ``training_step`` and ``configure_optimizers`` only, keeping
    the state a real one keeps."""

    def __init__(self):
        super().__init__()
        self.net = ToyNet()
        self.rows = torchmetrics.SumMetric()
        self.calls = 0
        self.batch_indices = []
        self.draws = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.calls += 1
        self.batch_indices.append(batch_idx)
        self.draws.append(random.random())
        self.rows.update(torch.tensor(float(len(x))))
        self.log("batches", 1.0, on_step=False, on_epoch=True, reduce_fx="sum")
        return nn.functional.cross_entropy(self.net(x), y)

    def on_train_epoch_end(self):
        self.epoch_rows = float(self.rows.compute())

    def configure_optimizers(self):
        return OPTIMIZERS["sgd"](self.parameters())


class ManualNoForward(NoForward):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(super().training_step(batch, batch_idx))
        optimizer.step()


def fit(module, epochs=1, **callback):
    torch.manual_seed(1)
    random.seed(0)
    rates = RateRecorder()
    fitted = trainer([LipschitzLR(rule="sgd", loss="softmax_ce", **callback), rates], max_epochs=epochs)
    fitted.fit(module, datamodule=ToyDataModule(make_data(n=48), batch_size=16))  # 3 batches an epoch
    return rates.rates, fitted


def seeded(cls):
    torch.manual_seed(0)
    return cls()


def toy_with_forward():
    torch.manual_seed(0)
    return ToyModule(ToyNet(), OPTIMIZERS["sgd"])


@pytest.mark.parametrize("callback", [{}, {"source": "probe", "first_epoch_lr": 0.1}], ids=["first_epoch", "source_probe"])
def test_a_module_without_forward_gets_the_rates_of_the_same_model_with_forward(callback):
    rates, _ = fit(seeded(NoForward), epochs=2, **callback)
    expected, _ = fit(toy_with_forward(), epochs=2, **callback)
    assert rates == pytest.approx(expected, rel=1e-6)
    assert rates[0] > 0 and rates[1] != rates[0]


def test_the_probe_through_training_step_leaves_no_trace_in_its_state():
    module = seeded(NoForward)
    rates, fitted = fit(module)  # the first-epoch probe runs the 3 training batches once more
    assert rates[0] > 0
    assert module.calls == 3 and module.batch_indices == [0, 1, 2]
    assert module.epoch_rows == 48.0  # the torchmetrics accumulator saw the training batches only
    assert float(fitted.callback_metrics["batches"]) == 3.0  # and so did self.log
    # Python's RNG continues as if there had been no probe.
    unprobed = seeded(NoForward)
    fit(unprobed, first_epoch_lr=rates[0])
    assert module.draws == unprobed.draws


def test_a_module_that_the_probe_cannot_run_gets_one_line_saying_what_to_add():
    with pytest.raises(LipschitzLRError) as error:
        fit(seeded(ManualNoForward))
    message = str(error.value)
    assert "\n" not in message
    assert "ManualNoForward" in message and "forward(self, x)" in message and "first_epoch_lr=" in message
    # With a first-epoch rate the module trains: its own steps are not probed.
    rates, _ = fit(seeded(ManualNoForward), first_epoch_lr=0.1)
    assert rates == [0.1]
