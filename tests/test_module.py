"""SupervisedModule's criteria are the losses the LipschitzLR bounds are derived for; with an
optimizer that has train/eval modes, its BatchNorm statistics are those of the evaluated weights."""

import copy
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lipschitz_lightning.modules import CRITERIA, SupervisedModule


def test_mse_is_the_papers_half_least_squares():
    # E = 1/(2m) sum (a - y)^2 (paper eq. 7) has gradient (a - y)/m: the least-squares bound's loss.
    a = torch.tensor([[1.0], [3.0], [-2.0], [0.5]], requires_grad=True)
    y = torch.tensor([[0.0], [1.0], [1.0], [0.5]])
    loss = CRITERIA["mse"]()(a, y)
    assert torch.isclose(loss, ((a - y) ** 2).sum() / (2 * 4))
    loss.backward()
    assert torch.allclose(a.grad, (a - y).detach() / 4)


# ---------------------------------------------------------------- BatchNorm statistics at the eval point

IMAGES = torch.randn(48, 3, 6, 6, generator=torch.Generator().manual_seed(0))
LABELS = torch.randint(0, 3, (48,), generator=torch.Generator().manual_seed(1))


def conv_bn_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Dropout(0.3),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
    )


def schedule_free(params):
    import schedulefree

    return schedulefree.SGDScheduleFree(params, lr=0.5, momentum=0.9)


def plain_sgd(params):
    return torch.optim.SGD(params, lr=0.5, momentum=0.9)


class AtValidation(pl.Callback):
    """The network's state at each validation's first batch and at the last training batch before it."""

    def __init__(self) -> None:
        self.trained, self.evaluated, self.modes = [], [], []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.last = copy.deepcopy(pl_module.net.state_dict())

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            self.trained.append(self.last)
            self.evaluated.append(copy.deepcopy(pl_module.net.state_dict()))
            self.modes.append([m.training for m in pl_module.net.modules()])


def fit(tmp_path: Path, optimizer, shuffle: bool = False, epochs: int = 1, **module_args):
    module = SupervisedModule(conv_bn_net(), optimizer, "softmax_ce", 3, **module_args)
    spy = AtValidation()
    trainer = pl.Trainer(
        max_epochs=epochs, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[spy],
        accelerator="cpu", devices=1, val_check_interval=0.5, limit_val_batches=1,
    )
    pl.seed_everything(5, verbose=False)
    trainer.fit(module, DataLoader(TensorDataset(IMAGES, LABELS), batch_size=8, shuffle=shuffle),
                DataLoader(TensorDataset(IMAGES[:8], LABELS[:8]), batch_size=8))
    return module, trainer, spy


def stats_at(state, batches: int):
    """BatchNorm's statistics by hand: the mean over the first training batches (in order) of each
    batch's channel mean and unbiased variance of the convolution's output at the weights ``state``."""
    conv = torch.nn.Conv2d(3, 4, 3)
    conv.load_state_dict({"weight": state["0.weight"], "bias": state["0.bias"]})
    with torch.no_grad():
        outs = [conv(IMAGES[8 * i:8 * (i + 1)]) for i in range(batches)]
    means = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs])
    variances = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in outs])
    return means.mean(0), variances.mean(0)


def test_schedule_free_batchnorm_statistics_are_those_of_the_eval_weights(tmp_path: Path):
    """Before each validation, the running statistics are recomputed at the eval-mode (averaged)
    weights over the first training batches: the hand computation at those weights, and not the
    statistics gathered during training; the layers' modes, momentum and batch count as before."""
    module, trainer, spy = fit(tmp_path, schedule_free, bn_recompute_batches=3)
    assert len(spy.evaluated) == 2  # two validations in the epoch (val_check_interval=0.5)
    for trained, evaluated in zip(spy.trained, spy.evaluated):
        mean, var = stats_at(evaluated, 3)
        assert torch.allclose(evaluated["1.running_mean"], mean, atol=1e-6)
        assert torch.allclose(evaluated["1.running_var"], var, atol=1e-6)
        assert not torch.allclose(trained["1.running_mean"], mean, atol=1e-4)
        assert evaluated["1.num_batches_tracked"] == trained["1.num_batches_tracked"]
        assert not torch.equal(trained["0.weight"], evaluated["0.weight"])  # eval weights: x, not y
    assert spy.modes == [[False] * 8] * 2  # the network is evaluated in eval mode
    assert module.net[1].momentum == 0.1
    seconds = trainer.callback_metrics["bench/bn_recompute_seconds"]
    assert 0 < float(seconds) < 10


@pytest.mark.parametrize(("optimizer", "batches"), [(plain_sgd, 8), (schedule_free, 0)])
def test_batchnorm_statistics_stay_without_train_eval_modes_or_when_off(optimizer, batches, tmp_path: Path):
    """torch.optim SGD (no train/eval modes), or bn_recompute_batches=0: validation sees the
    statistics training gathered, and nothing is logged."""
    _, trainer, spy = fit(tmp_path, optimizer, bn_recompute_batches=batches)
    for trained, evaluated in zip(spy.trained, spy.evaluated):
        for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
            assert torch.equal(trained[key], evaluated[key])
    assert "bench/bn_recompute_seconds" not in trainer.callback_metrics


def test_recomputing_batchnorm_statistics_leaves_training_as_it_was(tmp_path: Path):
    """Shuffled loader, dropout, a validation in the middle of each epoch: the weights after two
    epochs are those of the same run without the recomputation (no step, same random streams,
    same training batches)."""
    on, _, _ = fit(tmp_path / "on", schedule_free, shuffle=True, epochs=2)
    off, _, _ = fit(tmp_path / "off", schedule_free, shuffle=True, epochs=2, bn_recompute_batches=0)
    params_on, params_off = dict(on.net.named_parameters()), dict(off.net.named_parameters())
    for name, value in params_off.items():
        assert torch.equal(params_on[name], value), name
    assert torch.equal(on.net[1].num_batches_tracked, off.net[1].num_batches_tracked)


@pytest.mark.parametrize("value", [-1, 1.5, True, "8"])
def test_bn_recompute_batches_must_be_a_non_negative_int(value):
    with pytest.raises(ValueError, match=r"^bn_recompute_batches must be an int >= 0 \(0: off\); got "):
        SupervisedModule(conv_bn_net(), schedule_free, "softmax_ce", 3, bn_recompute_batches=value)


@pytest.mark.slow
def test_schedule_free_resnet_resumed_mid_epoch_evaluates_as_the_whole_run(tmp_path: Path):
    """ResNet20 (BatchNorm) with schedule-free SGD on the shuffled, augmented CIFAR-10 datamodule:
    stopped by SIGTERM in the middle of epoch 2 and resumed, it logs the uninterrupted run's
    validation values epoch by epoch (recomputed statistics included)."""
    import shlex

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests._dataset_files import write_cifar10_binary
    from tests.conftest import run_cli
    from tests.test_resume import assert_same, epoch_scalars

    write_cifar10_binary(tmp_path / "cifar", per_file=40)

    def args(run_dir: Path, *extra: str):
        return ["dataset=cifar10", f"paths.data_dir={tmp_path / 'cifar'}", "dataset.verify_checksums=false",
                "dataset.batch_size=16", "dataset.num_workers=0", "model=resnet20", "optim=schedulefree_sgd",
                "trainer=cpu", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
                "+trainer.enable_model_summary=false", "seed=3", "~callbacks.run_health", "test=false",
                f"hydra.run.dir={run_dir}", *extra]

    whole = run_cli(args(tmp_path / "whole"), cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    stop = run_cli(args(tmp_path / "split", "+callbacks.signal._target_=tests._signal_at_step.SignalAtStep",
                        "+callbacks.signal.step=18"), cwd=tmp_path)  # 13 steps per epoch: epoch 2's 6th
    assert stop.returncode == 143, stop.stderr[-3000:]
    command = stop.stderr.strip().splitlines()[-1].split("resume with: ", 1)[1]
    resumed = run_cli(shlex.split(command)[3:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = epoch_scalars(tmp_path / "whole")
    assert len(expected["val/loss"]) == 2
    assert_same(epoch_scalars(tmp_path / "split"), expected)
    events = EventAccumulator(str(next((tmp_path / "whole").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert "bench/bn_recompute_seconds" in events.Tags()["scalars"]  # the statistics were recomputed
