"""LipschitzLR with a ``torch.compile``d network: compiled once, no graph break, the same rates.

The head's pre-hook runs inside the compiled forward; it must not read Python state that changes
from step to step (an earlier version grew a list indexed by the step, which Dynamo guarded on and
recompiled at every step until its recompile limit).
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from lipschitz_lightning import LipschitzLR
from tests.lipschitz_toys import (OPTIMIZERS, RateRecorder, ToyDataModule, ToyNet, TrainModeToyModule, make_data, sf_sgd,
                                  trainer)


class DynamoCounts(pl.Callback):
    """Dynamo's compiled-graph count and graph breaks at the end of every epoch."""

    def __init__(self):
        self.graphs, self.breaks = [], []

    def on_train_epoch_end(self, trainer, pl_module):
        self.graphs.append(counters["stats"]["unique_graphs"])
        self.breaks.append(sum(counters["graph_break"].values()))


# case -> (rule, its optimizer, the callback's arguments)
CASES = {"auto_adam": ("auto_adam", OPTIMIZERS["auto_adam"], {}), "smooth": ("smooth", OPTIMIZERS["adamo"], {}),
         "curvature": ("curvature", OPTIMIZERS["adamo"], {}),
         # the per-step rate, a tensor written in place
         "precond_step": ("precond", OPTIMIZERS["auto_adam"], {"per_step": True}),
         # the Polyak factor, a tensor multiplied into the gradients at every step
         "polyak_sf": ("precond", sf_sgd, {"polyak": True})}


def fit(case, compiled, epochs=4):
    torch.manual_seed(0)
    net = ToyNet()
    rule, optimizer, kwargs = CASES[case]
    module = TrainModeToyModule(torch.compile(net) if compiled else net, optimizer)
    rates, counts = RateRecorder(), DynamoCounts()
    # the default first rate: the probe's no-grad forward is one more (warm-up) graph
    trainer([LipschitzLR(rule=rule, **kwargs), rates, counts], max_epochs=epochs).fit(
        module, datamodule=ToyDataModule(make_data(n=80), 16))
    return rates, counts


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_model_compiles_once_and_keeps_the_rates(case):
    torch._dynamo.reset()
    counters.clear()
    rates, counts = fit(case, compiled=True)
    assert counts.graphs[0] >= 1  # the forward really was compiled
    # Two graphs in all: the first-epoch probe's no-grad forward and the training forward. Not
    # one per step of the epoch (5 here), as when the hook's state changed with the step.
    assert counts.graphs[-1] <= 2
    assert counts.graphs == [counts.graphs[0]] * len(counts.graphs)  # no recompile after the first epoch
    assert not any(counts.breaks)  # no graph break (the hook traced inside the graph)
    eager, _ = fit(case, compiled=False)
    assert rates.rates == pytest.approx(eager.rates, rel=1e-5)
    for a, b in zip(rates.stats, eager.stats):
        assert a["K_z"] == pytest.approx(b["K_z"], rel=1e-5)
    torch._dynamo.reset()
