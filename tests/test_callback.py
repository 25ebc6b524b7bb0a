"""The LipschitzLR callback: gathering, rates, DDP invariance, resume, no host sync, errors."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from torch import nn

from lipschitz_lightning import LipschitzLR
from lipschitz_lightning.callbacks import LipschitzLRError
from tests.lipschitz_toys import (
    InputRecorder,
    max_param_norm,
    OPTIMIZERS,
    RateRecorder,
    ResumableDataModule,
    ToyDataModule,
    ToyModule,
    ToyNet,
    make_data,
    trainer,
)


def toy(rule="sgd", loss="softmax_ce", k=3, seed=0, **net_kwargs):
    torch.manual_seed(seed)
    return ToyModule(ToyNet(k=k, **net_kwargs), OPTIMIZERS[rule], loss=loss)


# --------------------------------------------------------------------------- the formula, end to end

@pytest.mark.parametrize("rule", ["sgd", "adamo", "rmsprop", "auto_adam"])
def test_rates_follow_the_spec_formula_on_independently_recorded_statistics(rule):
    module = toy(rule)
    data = ToyDataModule(make_data(n=48), batch_size=16)
    first = {"sgd": 0.05, "adamo": 0.1, "rmsprop": 0.01, "auto_adam": 1e-3}[rule]
    inputs, rates = InputRecorder(), RateRecorder()
    # The raw rule (the guard is on by default and may roll back an epoch of these toy data).
    cb = LipschitzLR(rule=rule, loss="softmax_ce", first_epoch_lr=first, guard=False)
    trainer([cb, inputs, rates], max_epochs=3).fit(module, datamodule=data)

    lam, k, m, eps = 1e-3, 3, 16, 1e-7
    b1, b2 = {"sgd": (0, 0), "adamo": (0.9, 0), "rmsprop": (0, 0.9), "auto_adam": (0.9, 0.999)}[rule]
    K1 = first if rule == "adamo" else 0.0
    K2 = 0.0
    expected = []
    for epoch in inputs.epochs:
        k_z = max(float(a.norm()) for a in epoch["A"])
        s = max(float((a * a).norm()) for a in epoch["A"])
        c = (k - 1) / (k * m)
        L = c * k_z + lam * epoch["W"]
        G2 = c**2 * s + 2 * lam * epoch["W"] * c * k_z
        K1 = b1 * K1 + (1 - b1) * L
        K2 = b2 * K2 + (1 - b2) * G2
        expected.append({"sgd": 1 / L, "adamo": 1 / K1, "rmsprop": (math.sqrt(K2) + eps) / k_z,
                         "auto_adam": (math.sqrt(K2) + eps) / K1}[rule])
    assert rates.rates[0] == pytest.approx(first)
    for epoch in (1, 2):
        assert rates.rates[epoch] == pytest.approx(expected[epoch - 1], rel=1e-5)
    # what was logged describes the same numbers
    assert cb.last_stats["K_z"] == pytest.approx(max(float(a.norm()) for a in inputs.epochs[-1]["A"]), rel=1e-5)
    assert cb.last_stats["next_lr"] == pytest.approx(expected[-1], rel=1e-5)


def test_validation_and_sanity_check_are_not_recorded():
    """Validation data 100x larger than the training data would dominate K_z if it were recorded."""
    module = toy("sgd")
    train_set = make_data(n=48)
    loud = torch.utils.data.TensorDataset(train_set.tensors[0] * 100, train_set.tensors[1])

    class WithValidation(ToyDataModule):
        def val_dataloader(self):
            return torch.utils.data.DataLoader(loud, batch_size=16)

    inputs = InputRecorder()
    cb = LipschitzLR(rule="sgd", first_epoch_lr=0.05)
    trainer([cb, inputs], max_epochs=2, num_sanity_val_steps=2).fit(module, datamodule=WithValidation(train_set, 16))
    assert cb.last_stats["K_z"] == pytest.approx(max(float(a.norm()) for a in inputs.epochs[-1]["A"]), rel=1e-6)


def test_logged_keys_and_theory_check():
    module = toy("auto_adam")
    cb = LipschitzLR(rule="auto_adam", loss="softmax_ce")
    t = trainer([cb], max_epochs=2)
    t.fit(module, datamodule=ToyDataModule(make_data(), batch_size=16))
    keys = {"lipschitz/lr", "lipschitz/next_lr", "lipschitz/L", "lipschitz/K_z", "lipschitz/W", "lipschitz/K1",
            "lipschitz/K2", "lipschitz/grad_max_over_L", "lipschitz/capped", "lipschitz/bound_invalid"}
    assert keys <= set(t.callback_metrics)
    ratio = float(t.callback_metrics["lipschitz/grad_max_over_L"])
    assert 0 < ratio <= 1.0  # the bound holds on this run


def test_grad_max_over_L_matches_an_independent_measurement():
    module = toy("sgd")
    inputs = InputRecorder()
    grads = []

    class GradRecorder(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            w = pl_module.net.head.weight
            grads.append(float((w.grad + 1e-3 * w).abs().max()))

    cb = LipschitzLR(rule="sgd", loss="softmax_ce", first_epoch_lr=0.05)
    trainer([cb, inputs, GradRecorder()], max_epochs=1).fit(module, datamodule=ToyDataModule(make_data(), 16))
    assert cb.last_stats["grad_max_over_L"] == pytest.approx(max(grads) / cb.last_stats["L"], rel=1e-5)


def test_first_epoch_probe_leaves_no_trace():
    """The default first-epoch probe (sgd) runs no-grad and restores RNG and BatchNorm statistics."""
    module = toy("sgd", batchnorm=True, dropout=0.5)
    before = {n: b.clone() for n, b in module.named_buffers()}
    cb = LipschitzLR(rule="sgd", loss="softmax_ce")
    head_passes = []  # grad mode of each pass through the head while LipschitzLR's on_train_start runs

    class Opening(pl.Callback):  # placed before LipschitzLR: its on_train_start runs before the probe
        def on_train_start(self, trainer, pl_module):
            self.rng = torch.random.get_rng_state()
            self.handle = pl_module.net.head.register_forward_pre_hook(
                lambda head, args: head_passes.append(torch.is_grad_enabled()))

    class Closing(pl.Callback):  # placed after LipschitzLR: its on_train_start runs after the probe
        def on_train_start(self, trainer, pl_module):
            opening.handle.remove()
            self.rng = torch.random.get_rng_state()
            self.buffers = {n: b.clone() for n, b in pl_module.named_buffers()}

    opening, closing = Opening(), Closing()
    trainer([opening, cb, closing], max_epochs=1).fit(module, datamodule=ToyDataModule(make_data(), 16))
    assert head_passes and not any(head_passes)  # the probe ran, without autograd
    assert torch.equal(opening.rng, closing.rng)
    assert all(torch.equal(before[n], closing.buffers[n]) for n in before)
    assert cb.last_stats["lr"] > 0 and math.isfinite(cb.last_stats["lr"])


def test_probe_first_rate_is_one_over_L_of_the_initial_weights():
    module = toy("sgd")
    net = module.net
    x = make_data(n=64).tensors[0]
    with torch.no_grad():
        k_z = max(float(net.body(x[i:i + 16]).norm()) for i in range(0, 64, 16))
    L = 2 / (3 * 16) * k_z + 1e-3 * max_param_norm(module)
    rates = RateRecorder()
    cb = LipschitzLR(rule="sgd", loss="softmax_ce", init_probe_batches=4)
    trainer([cb, rates], max_epochs=1).fit(module, datamodule=ToyDataModule(make_data(n=64), 16))
    assert rates.rates[0] == pytest.approx(1 / L, rel=1e-5)


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_bce_and_mse_losses(loss):
    torch.manual_seed(0)
    module = ToyModule(ToyNet(k=1), OPTIMIZERS["sgd"], loss=loss)
    inputs, rates = InputRecorder(), RateRecorder()
    outputs = []
    module.net.head.register_forward_hook(
        lambda mod, args, out: outputs.append(out.detach().clone()) if torch.is_grad_enabled() else None)
    data = make_data(n=32, loss=loss)
    cb = LipschitzLR(rule="sgd", loss=loss, first_epoch_lr=0.01)
    trainer([cb, inputs, rates], max_epochs=1).fit(module, datamodule=ToyDataModule(data, 16))
    epoch = inputs.epochs[0]
    k_z = max(float(a.norm()) for a in epoch["A"])
    m, lam = 16, 1e-3
    if loss == "bce":
        L = k_z / (2 * m) + lam * epoch["W"]
    else:
        k_a = max(float(o.norm()) for o in outputs)
        y_norm = max(float(data.tensors[1][i:i + 16].norm()) for i in (0, 16))
        L = (k_a - y_norm) * k_z / m + lam * epoch["W"]
        assert cb.last_stats["y_norm"] == pytest.approx(y_norm, rel=1e-5)
        assert cb.last_stats["K_a"] == pytest.approx(k_a, rel=1e-5)
    assert cb.last_stats["L"] == pytest.approx(L, rel=1e-5)
    if L > 0:
        assert cb.lr == pytest.approx(1 / L, rel=1e-5)
    else:  # the least-squares form goes negative while outputs are smaller than targets
        assert cb.lr == 0.01 and cb.last_stats["bound_invalid"] == 1.0


def test_mse_probe_with_a_negative_bound_fails_before_training():
    torch.manual_seed(0)
    module = ToyModule(ToyNet(k=1), OPTIMIZERS["sgd"], loss="mse")
    data = make_data(n=32, loss="mse")
    data.tensors[1].mul_(100)  # targets far larger than the untrained outputs: K_a < |y|
    rates = RateRecorder()
    with pytest.raises(LipschitzLRError, match="least-squares bound .* is negative"):
        trainer([LipschitzLR(rule="sgd", loss="mse"), rates], max_epochs=1).fit(module, datamodule=ToyDataModule(data, 16))
    assert not rates.rates


def test_gradient_accumulation_counts_the_effective_batch():
    """batch 8 x accumulate 2 gives the same K_z, m and rate as batch 16."""
    results = []
    for batch, accumulate in ((16, 1), (8, 2)):
        module = toy("sgd")
        rates = RateRecorder()
        cb = LipschitzLR(rule="sgd", loss="softmax_ce", first_epoch_lr=0.05)
        trainer([cb, rates], max_epochs=2, accumulate_grad_batches=accumulate).fit(
            module, datamodule=ToyDataModule(make_data(), batch))
        results.append((rates.stats[0]["K_z"], rates.stats[0]["m"], rates.rates[1]))
    assert results[0][1] == results[1][1] == 16
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
    assert results[1][2] == pytest.approx(results[0][2], rel=1e-4)


def test_per_group_lr_scale_is_respected():
    module = toy("sgd")

    def two_groups(params):
        params = list(params)
        return torch.optim.SGD([{"params": params[:2]}, {"params": params[2:], "lr_scale": 0.5}], lr=0.3)

    module.optimizer_fn = two_groups
    seen = []

    class Groups(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    trainer([LipschitzLR(first_epoch_lr=0.2), Groups()], max_epochs=2).fit(module, datamodule=ToyDataModule(make_data(), 16))
    assert seen[0] == pytest.approx([0.2, 0.1])
    assert seen[-1][1] == pytest.approx(seen[-1][0] * 0.5)


def test_probe_source_uses_the_probe_dataloader():
    module = toy("sgd", dropout=0.5)
    data = ToyDataModule(make_data(n=48), 16)
    cb = LipschitzLR(rule="sgd", source="probe", first_epoch_lr=0.05)
    t = trainer([cb], max_epochs=1)
    t.fit(module, datamodule=data)
    # eval mode, final weights, un-augmented data: recompute K_z by hand
    module.eval()
    with torch.no_grad():
        x = data.dataset.tensors[0]
        k_z = max(float(module.net.body(x[i:i + 16]).norm()) for i in range(0, 48, 16))
    assert cb.last_stats["K_z"] == pytest.approx(k_z, rel=1e-5)


def test_probe_source_needs_a_probe_dataloader():
    module = toy("sgd")
    loader = torch.utils.data.DataLoader(make_data(), batch_size=16)
    with pytest.raises(ValueError, match="probe_dataloader"):
        trainer([LipschitzLR(source="probe", first_epoch_lr=0.1)], max_epochs=1).fit(module, train_dataloaders=loader)


# --------------------------------------------------------------------------- caps, bad bounds, decay

def test_max_lr_and_max_growth_caps_bind_and_are_logged():
    module = toy("adamo")
    rates = RateRecorder()
    cb = LipschitzLR(rule="adamo", first_epoch_lr=0.1, max_growth=2.0)
    t = trainer([cb, rates], max_epochs=3)
    t.fit(module, datamodule=ToyDataModule(make_data(), 16))
    assert rates.rates[1] == pytest.approx(0.2)  # AdaMo jumps far more than 2x after epoch 1
    assert rates.rates[2] <= 2 * rates.rates[1] + 1e-12
    module = toy("sgd")
    cb = LipschitzLR(rule="sgd", first_epoch_lr=0.01, max_lr=0.05)
    t = trainer([cb], max_epochs=2)
    t.fit(module, datamodule=ToyDataModule(make_data(), 16))
    assert cb.lr == pytest.approx(0.05)
    assert float(t.callback_metrics["lipschitz/capped"]) == 1.0


class Dead(nn.Module):
    """All-zero head input: K_z = 0 and, without weight decay, L = 0."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.body(x) * 0)


def test_unusable_bound_keeps_the_previous_rate_and_warns_once():
    module = ToyModule(Dead(), lambda p: torch.optim.SGD(p, lr=0.1))
    rates = RateRecorder()
    cb = LipschitzLR(rule="sgd", first_epoch_lr=0.03)
    t = trainer([cb, rates], max_epochs=3)
    with pytest.warns(UserWarning, match="unusable bound") as record:
        t.fit(module, datamodule=ToyDataModule(make_data(), 16))
    assert rates.rates == pytest.approx([0.03, 0.03, 0.03])
    assert sum("unusable bound" in str(w.message) for w in record) == 1
    assert float(t.callback_metrics["lipschitz/bound_invalid"]) == 1.0


def test_time_based_decay_on_top():
    module = toy("sgd")
    seen = []

    class Steps(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((trainer.global_step, trainer.optimizers[0].param_groups[0]["lr"]))

    cb = LipschitzLR(rule="sgd", first_epoch_lr=0.1, decay=0.5)
    trainer([cb, Steps()], max_epochs=1).fit(module, datamodule=ToyDataModule(make_data(), 16))
    assert [lr for _, lr in seen] == pytest.approx([0.1 / (1 + 0.5 * step) for step, _ in seen])


# --------------------------------------------------------------------------- no host sync per step

class SyncGuard:
    """Makes host transfers of tensors fail while ``active``."""

    NAMES = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__")

    def __init__(self, monkeypatch):
        self.active = False
        self.calls = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def guarded(tensor, *args, __original=original, __name=name, **kwargs):
                if self.active:
                    raise AssertionError(f"host sync: Tensor.{__name} on the per-step path")
                return __original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, guarded)

    @contextmanager
    def on(self, active=True):
        previous, self.active = self.active, active
        try:
            yield
        finally:
            self.active = previous


class GuardSwitch(pl.Callback):
    """A pair of these brackets LipschitzLR: ``on`` placed just before it in the callbacks list and
    on the head's hooks, ``off`` just after, so that the guard is active exactly while LipschitzLR's
    per-step hooks (and its hooks on the head) run. ``seen`` counts the hooks it bracketed."""

    def __init__(self, guard, active, seen):
        self.guard, self.active, self.seen = guard, active, seen

    def switch(self, hook):
        self.guard.active = self.active
        if self.active:
            self.seen[hook] = self.seen.get(hook, 0) + 1

    def on_fit_start(self, trainer, pl_module):  # after LipschitzLR's setup put its hooks on the head
        head = pl_module.net.head  # ``on`` goes first, ``off`` after LipschitzLR's own hooks
        self.handles = [head.register_forward_pre_hook(lambda m, a: self.switch("head input"), prepend=self.active),
                        head.register_forward_hook(lambda m, a, o: self.switch("head output"), prepend=self.active)]

    def on_fit_end(self, trainer, pl_module):
        for handle in self.handles:
            handle.remove()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.switch("on_train_batch_start")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.switch("on_before_optimizer_step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # the epoch's last batch end runs the once-per-epoch computation, which may sync
        if batch_idx + 1 < trainer.num_training_batches:
            self.switch("on_train_batch_end")
        else:
            self.guard.active = False


def test_per_step_path_never_moves_a_value_to_the_host(monkeypatch):
    guard = SyncGuard(monkeypatch)
    cb = LipschitzLR(rule="auto_adam", loss="softmax_ce")
    seen = {}
    module = toy("auto_adam")
    trainer([GuardSwitch(guard, True, seen), cb, GuardSwitch(guard, False, seen)], max_epochs=2).fit(
        module, datamodule=ToyDataModule(make_data(), 16))
    # 4 steps per epoch, each bracketed (the last batch end of each epoch aside); the probe's passes as well
    assert seen["on_train_batch_start"] == seen["on_before_optimizer_step"] == 8 and seen["on_train_batch_end"] == 6
    assert seen["head input"] >= 8
    assert cb.epochs_done == 2  # the once-per-epoch computation ran at both epochs' ends


# --------------------------------------------------------------------------- resume

def test_resume_reproduces_the_rates_of_an_uninterrupted_run(tmp_path):
    data = ToyDataModule(make_data(), 16)
    full = RateRecorder()
    trainer([LipschitzLR(rule="adamo", guard=False), full], max_epochs=4).fit(toy("adamo"), datamodule=data)

    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer([LipschitzLR(rule="adamo", guard=False), ckpt], max_epochs=2, enable_checkpointing=True).fit(
        toy("adamo"), datamodule=data)
    resumed = RateRecorder()
    cb = LipschitzLR(rule="adamo", guard=False)
    trainer([cb, resumed, ModelCheckpoint(dirpath=tmp_path / "b")], max_epochs=4, enable_checkpointing=True).fit(
        toy("adamo", seed=99), datamodule=data, ckpt_path=str(tmp_path / "last.ckpt"))
    assert len(resumed.rates) == 2
    assert resumed.rates == pytest.approx(full.rates[2:], rel=1e-6)
    assert cb.state.t == 4


class _CrashAfterTwoSteps(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == 1:
            raise RuntimeError("crash")


def crash_after_two_steps(tmp_path, data):
    """A run that crashes after the second step of epoch 0, leaving tmp_path/on_exception.ckpt."""
    with pytest.raises(RuntimeError, match="crash"):
        trainer([LipschitzLR(first_epoch_lr=0.05), _CrashAfterTwoSteps(), OnExceptionCheckpoint(dirpath=tmp_path)],
                max_epochs=2, enable_checkpointing=True, default_root_dir=tmp_path / "a").fit(toy("sgd"), datamodule=data)


def test_interrupted_epoch_keeps_its_statistics(tmp_path):
    """A crash mid-epoch: the on-exception checkpoint carries the epoch's statistics so far, and the
    resumed epoch ends with the K_z of an uninterrupted one."""
    data = ToyDataModule(make_data(), 16)
    full = RateRecorder()
    trainer([LipschitzLR(first_epoch_lr=0.05), full], max_epochs=2).fit(toy("sgd"), datamodule=data)

    crash_after_two_steps(tmp_path, data)
    checkpoint = torch.load(tmp_path / "on_exception.ckpt", weights_only=False)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("LipschitzLR")]
    assert len(state["pending_steps"]) == 2

    resumed = RateRecorder()
    trainer([LipschitzLR(first_epoch_lr=0.05), resumed], max_epochs=2, enable_checkpointing=True,
            default_root_dir=tmp_path / "b").fit(
        toy("sgd", seed=7), datamodule=data, ckpt_path=str(tmp_path / "on_exception.ckpt"))
    assert resumed.stats[0]["K_z"] == pytest.approx(full.stats[0]["K_z"], rel=1e-6)
    assert resumed.stats[0]["next_lr"] == pytest.approx(full.rates[1], rel=1e-4)


def test_a_checkpoint_in_the_first_format_still_resumes(tmp_path):
    """On-exception checkpoints written before the step vector grew (4 columns A2, A4, OUT2, Y2 and
    m from ``local_batch``) load and give the K_z of an uninterrupted epoch."""
    data = ToyDataModule(make_data(), 16)
    full = RateRecorder()
    trainer([LipschitzLR(first_epoch_lr=0.05), full], max_epochs=2).fit(toy("sgd"), datamodule=data)

    crash_after_two_steps(tmp_path, data)
    path = tmp_path / "on_exception.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    (key,) = [k for k in checkpoint["callbacks"] if k.startswith("LipschitzLR")]
    state = checkpoint["callbacks"][key]
    old = {k: state[k] for k in ("rule", "lr", "K1", "K2", "t", "epochs_done", "warned_invalid", "pending_grad_max")}
    old["pending_steps"] = [s[[0, 1, 3, 4]] for s in state["pending_steps"]]  # A2, A4, OUT2, Y2
    old["local_batch"] = 16
    checkpoint["callbacks"][key] = old
    torch.save(checkpoint, path)

    resumed = RateRecorder()
    trainer([LipschitzLR(first_epoch_lr=0.05), resumed], max_epochs=2, enable_checkpointing=True,
            default_root_dir=tmp_path / "b").fit(toy("sgd", seed=7), datamodule=data, ckpt_path=str(path))
    assert resumed.stats[0]["K_z"] == pytest.approx(full.stats[0]["K_z"], rel=1e-6)
    assert resumed.stats[0]["m"] == 16


class Interrupt(pl.Callback):
    """Stops a run in epoch 1, step 2: by Ctrl-C after the backward pass but before the optimizer
    step (``before_step``), or by a crash in ``on_train_batch_end`` after the step, before
    LipschitzLR's own ``on_train_batch_end`` has run (``after_step``; listed before it)."""

    def __init__(self, where):
        self.where = where

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.where == "before_step" and trainer.current_epoch == 1 and trainer.global_step == 7:
            raise KeyboardInterrupt

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.where == "after_step" and trainer.current_epoch == 1 and batch_idx == 2:
            raise RuntimeError("crash after the optimizer step")


@pytest.mark.parametrize("guard", [False, None], ids=["raw", "default-guard"])
@pytest.mark.parametrize("where", ["before_step", "after_step"])
def test_resume_from_an_interruption_mid_step_continues_the_same_rates(tmp_path, where, guard):
    """The on-exception checkpoint holds the statistics of exactly the steps that finished, so the
    resumed run logs the rates (and takes the optimizer steps) of an uninterrupted one; with the
    default guard, which rolls the interrupted epoch back in the uninterrupted run, the resumed run
    rolls it back too (from the snapshot of its start that the checkpoint holds)."""
    data = make_data(n=80)  # 5 steps of 16 per epoch, unshuffled

    def run(callbacks, seed=0, **kwargs):
        rates = RateRecorder()
        t = trainer([*callbacks, rates], max_epochs=4, enable_checkpointing=True, **kwargs)
        t.fit(toy("adamo", seed=seed), datamodule=ResumableDataModule(data, 16))
        return t, rates

    full_trainer, full = run([LipschitzLR(rule="adamo", guard=guard)], default_root_dir=tmp_path / "full")

    interrupted = [Interrupt(where), LipschitzLR(rule="adamo", guard=guard), OnExceptionCheckpoint(dirpath=tmp_path)]
    with pytest.raises(SystemExit if where == "before_step" else RuntimeError):
        run(interrupted, default_root_dir=tmp_path / "a")
    checkpoint = torch.load(tmp_path / "on_exception.ckpt", weights_only=False)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("LipschitzLR")]
    assert len(state["pending_steps"]) == (2 if where == "before_step" else 3)  # the finished steps of epoch 1

    resumed = RateRecorder()
    t = trainer([LipschitzLR(rule="adamo", guard=guard), resumed], max_epochs=4, enable_checkpointing=True,
                default_root_dir=tmp_path / "b")
    t.fit(toy("adamo", seed=7), datamodule=ResumableDataModule(data, 16), ckpt_path=str(tmp_path / "on_exception.ckpt"))
    assert t.global_step == full_trainer.global_step == 20  # no step lost, none taken twice
    assert [s["lr"] for s in resumed.stats] == pytest.approx([s["lr"] for s in full.stats[1:]], rel=1e-6)
    assert [s["K_z"] for s in resumed.stats] == pytest.approx([s["K_z"] for s in full.stats[1:]], rel=1e-6)
    assert resumed.stats[-1]["next_lr"] == pytest.approx(full.stats[-1]["next_lr"], rel=1e-6)
    if guard is None:  # the interrupted epoch is the one the guard rolls back
        assert [s["rollbacks"] for s in full.stats] == [0, 1, 1, 1]
        assert [s["rollbacks"] for s in resumed.stats] == [1, 1, 1]


# --------------------------------------------------------------------------- DDP (gloo, CPU)

@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_double_batch(tmp_path):
    data = make_data(n=64)
    runs = {}
    for name, devices, batch in (("single", 1, 16), ("ddp", 2, 8)):
        out = tmp_path / name
        out.mkdir()
        strategy = "ddp_spawn" if devices > 1 else "auto"
        trainer([LipschitzLR(rule="sgd", loss="softmax_ce"), RateRecorder(str(out))], max_epochs=3,
                devices=devices, strategy=strategy, use_distributed_sampler=False).fit(toy("sgd"), datamodule=ToyDataModule(data, batch))
        runs[name] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(devices)]
    single, ranks = runs["single"][0], runs["ddp"]
    assert ranks[0]["rates"] == ranks[1]["rates"]  # every rank holds the same rate
    for r in ranks:
        for a, b in zip(r["stats"], single["stats"]):
            assert a["m"] == b["m"] == 16
            assert a["K_z"] == pytest.approx(b["K_z"], rel=1e-5)
            assert a["L"] == pytest.approx(b["L"], rel=1e-5)
        assert r["rates"] == pytest.approx(single["rates"], rel=1e-5)


# --------------------------------------------------------------------------- clear errors

class NoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 1)

    def forward(self, x):
        return self.conv(x.unsqueeze(1)).mean(-1).expand(-1, 3)


@pytest.mark.parametrize(
    "net, callback, optimizer, match",
    [
        (NoLinear(), LipschitzLR(), OPTIMIZERS["sgd"], "no nn.Linear"),
        (ToyNet(), LipschitzLR(head="classifier"), OPTIMIZERS["sgd"], "does not exist"),
        (ToyNet(), LipschitzLR(head="net.body"), OPTIMIZERS["sgd"], "not an nn.Linear"),
        (ToyNet(k=1), LipschitzLR(loss="softmax_ce"), OPTIMIZERS["sgd"], "k >= 2"),
        (ToyNet(), LipschitzLR(rule="adamo"), OPTIMIZERS["sgd"], "SGD with momentum"),
        (ToyNet(), LipschitzLR(rule="sgd"), OPTIMIZERS["adamo"], "without momentum"),
        (ToyNet(), LipschitzLR(rule="auto_adam"), OPTIMIZERS["sgd"], "Adam or torch.optim.AdamW"),
        (ToyNet(), LipschitzLR(rule="rmsprop"), OPTIMIZERS["auto_adam"], "RMSprop"),
    ],
)
def test_bad_setups_fail_before_training(net, callback, optimizer, match):
    module = ToyModule(net, optimizer)
    steps = []

    class Count(pl.Callback):
        def on_train_batch_start(self, *args):
            steps.append(1)

    with pytest.raises(ValueError, match=match):
        trainer([callback, Count()], max_epochs=1).fit(module, datamodule=ToyDataModule(make_data(), 16))
    assert not steps


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rule": "nesterov"}, "unknown rule"),
        ({"loss": "hinge"}, "unknown loss"),
        ({"source": "disk"}, "unknown source"),
        ({"first_epoch_lr": -1.0}, "first_epoch_lr"),
        ({"first_epoch_lr": "fast"}, "first_epoch_lr"),
        ({"betas": (0.9, 1.5)}, "betas"),
        ({"max_lr": 0}, "max_lr"),
        ({"max_growth": -2}, "max_growth"),
        ({"decay": -1}, "decay"),
        ({"probe_batches": 0}, "probe_batches"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LipschitzLR(**kwargs)
