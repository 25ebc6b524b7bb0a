"""A wrecked or frozen run never ends with exit 0 and no word (issue 15, item 6): the run-health
verdict (``RunHealth``), the guard's ceiling lifted after a rollback, and ``StopOnNonFinite``
naming a checkpoint only when one exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from lipschitz_lightning import LipschitzLR
from lipschitz_lightning.callbacks import NonFiniteError, RunHealth, StopOnNonFinite, UnhealthyRunError
from tests.conftest import run_cli, tiny_data
from tests.lipschitz_toys import OPTIMIZERS, ToyDataModule, ToyModule, ToyNet, make_data, trainer

DIGITS_128_64 = ["dataset=digits", "model=mlp", "model.hidden_sizes=[128,64]", "dataset.batch_size=64", "trainer=cpu",
                 "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false", "~logger"]


def cli(tmp_path: Path, *args: str):
    return run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}", f"paths.data_dir={tmp_path / 'data'}"], cwd=tmp_path)


def last_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert lines, result.stdout[-2000:]
    return lines[-1]


def test_accuracy(result) -> float:
    found = re.findall(r"test accuracy: ([0-9.]+)", result.stdout + result.stderr)
    assert found, (result.stdout + result.stderr)[-3000:]
    return float(found[-1])


test_accuracy.__test__ = False  # a helper, not a test


# --------------------------------------------------------------------------- through the CLI


@pytest.mark.slow
def test_issue8_row_stops_in_epoch_1_with_one_line(tmp_path: Path):
    """Issue 8's own row (the paper's unguarded sgd at 7.18: loss 1.8e25, W inf, bound unusable):
    was 30 epochs at 10% and exit 0. Now epoch 1 says what was seen and what to try."""
    # The raw rule, as issue 8 ran it (the guard, on by default now, rolls that epoch back instead).
    result = cli(tmp_path, *DIGITS_128_64, "optim=sgd", "optim.callback.guard=false", "epochs=3")
    line = last_line(result)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert line.startswith("error: run stopped in epoch 1 (learning rate 7.179): the training loss averaged 1.8"), line
    assert "times its start" in line and "W = inf" in line, line
    assert "optim.callback.guard=true" in line, line


@pytest.mark.slow
def test_a_run_that_never_learns_stops_at_chance(tmp_path: Path):
    """A rate of 0: every weight stays at its start, the accuracy at chance; was exit 0 after all
    epochs. Stopped after chance_epochs (5) epochs."""
    result = cli(tmp_path, *DIGITS_128_64, "optim=sgd_fixed", "optim.optimizer.lr=0", "epochs=7")
    line = last_line(result)
    assert result.returncode == 2, result.stderr[-3000:]
    assert line.startswith("error: run stopped in epoch 5 (learning rate 0): the validation accuracy stayed at chance"), line
    assert "10 classes: 10.0%" in line and "try a smaller rate (optim.optimizer.lr=)" in line, line


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["smooth", "curvature"])
def test_a_bad_first_rate_is_rolled_back_and_the_run_trains(tmp_path: Path, rule: str):
    """The guarded rules at lr.first_epoch=1000: the guard kept a quarter of a rate cut from
    blown-up features (1.3e-6) as a ceiling for ever, 8-15% and exit 0. Now the retry runs at the
    rule's own rate for the restored weights and the run trains."""
    result = cli(tmp_path, "experiment=quickstart", "epochs=3", "lr.first_epoch=1000", f"optim={rule}",
                 "trainer.enable_progress_bar=false", "~logger")
    assert result.returncode == 0, result.stderr[-3000:]
    assert test_accuracy(result) >= 0.85


@pytest.mark.slow
def test_nan_in_epoch_1_names_no_checkpoint(tmp_path: Path):
    """NaN in the first epoch, before any checkpoint: the line said "the last finite epoch is in
    last.ckpt", a file that does not exist."""
    result = cli(tmp_path, "model=mlp", "model.hidden_sizes=[8]", "trainer=cpu", "trainer.max_epochs=3",
                 "trainer.enable_progress_bar=false", *tiny_data("tabular"), "optim=sgd_fixed",
                 "optim.optimizer.lr=1e12", "dataset.noise_std=100")
    line = last_line(result)
    assert result.returncode == 2, result.stderr[-3000:]
    assert line.startswith("error: the training loss became NaN or infinite in epoch 1"), line
    assert "last.ckpt" not in line and "no checkpoint was written before it" in line, line
    assert not list((tmp_path / "run").rglob("*.ckpt"))


# --------------------------------------------------------------------------- the callback on toys


def test_stop_on_non_finite_names_the_checkpoint_that_exists(tmp_path: Path):
    class NanInEpoch2(ToyModule):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if self.current_epoch == 1 else loss

    torch.manual_seed(0)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last", save_top_k=1, monitor=None)
    t = trainer([StopOnNonFinite(), checkpoint], max_epochs=3, enable_checkpointing=True)
    with pytest.raises(NonFiniteError) as error:
        t.fit(NanInEpoch2(ToyNet(), OPTIMIZERS["sgd"]), datamodule=ToyDataModule(make_data(), 16))
    saved = tmp_path / "last.ckpt"
    assert saved.is_file()
    assert str(error.value).endswith(f"the last finite epoch is in {saved}"), str(error.value)


def test_an_unusable_bound_in_every_epoch_stops_the_run():
    """Least squares with outputs smaller than the targets: the bound is negative in every epoch
    and the rate never moves (lipschitz/bound_invalid 1)."""
    def run(callbacks):
        torch.manual_seed(0)
        module = ToyModule(ToyNet(k=1), OPTIMIZERS["sgd"], loss="mse")
        cb = LipschitzLR(rule="sgd", loss="mse", first_epoch_lr=0.01)
        invalid = []

        class Record(pl.Callback):
            def on_train_epoch_end(self, trainer, pl_module):
                invalid.append(cb.last_stats["bound_invalid"])

        trainer([cb, Record(), *callbacks], max_epochs=3).fit(module, datamodule=ToyDataModule(make_data(n=32, loss="mse"), 16))
        return invalid

    assert run([]) == [1.0, 1.0, 1.0]  # the setting: unusable in every epoch, and nothing said
    with pytest.raises(UnhealthyRunError, match=r"run stopped in epoch 2 .*bound was unusable .* in every epoch so far \(2\)"):
        run([RunHealth(invalid_epochs=2)])


class ScriptedAccuracy(ToyModule):
    """Scripted step losses per epoch (zero gradient) and a scripted validation accuracy."""

    def __init__(self, losses, accuracies):
        super().__init__(ToyNet(), OPTIMIZERS["sgd"])
        self.losses, self.accuracies = losses, accuracies

    def training_step(self, batch, batch_idx):
        x, _ = batch
        epoch = min(self.current_epoch, len(self.losses) - 1)
        return self(x).sum() * 0.0 + self.losses[epoch][batch_idx]

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", self.accuracies[min(self.current_epoch, len(self.accuracies) - 1)])


class ValData(ToyDataModule):
    def val_dataloader(self):
        return self.train_dataloader()


def scripted(losses, accuracies, epochs, *callbacks):
    torch.manual_seed(0)
    module = ScriptedAccuracy(losses, accuracies)
    trainer(list(callbacks), max_epochs=epochs, limit_val_batches=1, num_sanity_val_steps=0).fit(
        module, datamodule=ValData(make_data(n=64), 16))


def test_a_rate_held_at_the_guards_ceiling_with_a_poor_accuracy_stops_the_run():
    """The guard rolls epoch 2 back and, never lifted (guard_lift=1), its ceiling holds every later
    rate while the accuracy stays poor (40%, 3 classes: chance 33%, poor below 67%)."""
    losses = [[2.3, 0.5, 0.03, 0.02], [2.3] * 4, [0.02] * 4]
    guard = dict(rule="gradbound", guard=True, first_epoch_checks=False)
    health = dict(num_classes=3, chance_epochs=99, frozen_epochs=4)
    with pytest.raises(UnhealthyRunError, match=r"epoch 5 .*the guard's ceiling held the rate for 4 epochs in a row "
                                                r"while the validation accuracy is 40.0% \(below 66.7%\)"):
        scripted(losses, [0.4], 6, LipschitzLR(guard_lift=1.0, **guard), RunHealth(**health))
    # With the lift the ceiling is gone after three healthy epochs: no verdict.
    scripted(losses, [0.4], 6, LipschitzLR(**guard), RunHealth(**health))


def test_chance_needs_epochs_in_a_row_that_do_not_improve():
    flat = [[2.3, 1.0, 0.5, 0.4]] * 7  # the same training loss every epoch
    # DoG's start on digits (committed benchmark): two epochs near chance, then it trains.
    scripted(flat, [0.35, 0.36, 0.72, 0.9, 0.95, 0.96], 6, RunHealth(num_classes=3))
    # A slow but steady climb from chance goes on.
    scripted(flat, [0.34, 0.345, 0.35, 0.355, 0.36, 0.365, 0.37], 7, RunHealth(num_classes=3))
    # At chance, but the training loss still falls (2% per epoch): learning, it goes on.
    falling = [[2.3 * 0.98 ** e] * 4 for e in range(7)]
    scripted(falling, [0.34], 7, RunHealth(num_classes=3))
    # Four epochs at chance are not enough.
    scripted(flat, [0.34], 4, RunHealth(num_classes=3))
    with pytest.raises(UnhealthyRunError, match=r"epoch 5 .*stayed at chance \(34.0%, 34.0%, 34.0%, 34.0%, 34.0%"):
        scripted(flat, [0.34], 7, RunHealth(num_classes=3))


def test_a_loss_orders_of_magnitude_above_its_start_stops_the_run():
    start = [2.3, 2.3, 2.3, 2.3]
    scripted([start, [200.0] * 4, [2.0] * 4], [0.9], 3, RunHealth())  # 87x: the paper's AdaMo recovers from that
    with pytest.raises(UnhealthyRunError, match=r"epoch 2 .*averaged 2.3e\+04, 1e\+04 times its start \(2.3\)"):
        scripted([start, [2.3e4] * 4, [2.0] * 4], [0.9], 3, RunHealth())
    with pytest.raises(UnhealthyRunError, match=r"epoch 1 .*averaged 1e\+31, above 1e\+30"):
        scripted([[1e31] * 4], [0.9], 2, RunHealth())


def test_an_overflowing_weight_norm_stops_the_run():
    class Overflow(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                with torch.no_grad():
                    pl_module.net.head.weight.fill_(3e38)  # finite; its norm is not

    losses = [[2.3, 1.0, 0.5, 0.4]] * 3
    with pytest.raises(UnhealthyRunError, match=r"epoch 2 .*overflows float32 \(W = inf\) while every weight is finite"):
        scripted(losses, [0.9], 3, Overflow(), RunHealth())


def test_bad_arguments_are_refused():
    for kwargs in ({"loss_rise": 1.0}, {"chance_epochs": 0}, {"num_classes": 1}, {"poor_accuracy": 2.0},
                   {"overflow_loss": float("inf")}):
        with pytest.raises(ValueError, match="RunHealth"):
            RunHealth(**kwargs)
