"""``train(cfg)`` and ``python -m lipschitz_lightning.train`` on tiny synthetic data.

Every model fits a couple of batches on data it fits; every optim option trains one small model;
the mission command writes ``lipschitz/lr`` to TensorBoard once per epoch; a multirun finishes
both jobs; resume and 2-process DDP work; every bad input ends in one clear line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List

import pytest
import pytorch_lightning as pl
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lipschitz_lightning.modules import SupervisedModule
from lipschitz_lightning.train import ConfigError, train
from tests.conftest import CONF_DIR, compose_train, path_overrides, run_cli, tiny_cfg, tiny_data, tiny_trainer

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
OPTIMS = sorted(p.stem for p in (CONF_DIR / "optim").glob("*.yaml"))
LIPSCHITZ_OPTIMS = {p.stem for p in (CONF_DIR / "optim").glob("*.yaml") if "lipschitz_lightning.LipschitzLR" in p.read_text()}

# Models on flat features, with the loss they are trained with; all others take images.
TABULAR = {"mlp": "softmax_ce", "linear_regression": "mse", "logistic_regression": "bce", "softmax_regression": "softmax_ce"}


def lr_events(run_dir: Path) -> List[float]:
    """The ``lipschitz/lr`` scalars of the TensorBoard event files under ``run_dir``."""
    files = list(run_dir.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {run_dir}"
    values: List[float] = []
    for folder in sorted({f.parent for f in files}):
        accumulator = EventAccumulator(str(folder))
        accumulator.Reload()
        if "lipschitz/lr" in accumulator.Tags()["scalars"]:
            values += [event.value for event in accumulator.Scalars("lipschitz/lr")]
    return values


@pytest.mark.parametrize("model", MODELS)
def test_fit_every_model(model: str, tmp_path: Path):
    """A couple of adaptive-SGD batches for every model, on synthetic data of its kind."""
    kind, loss = ("tabular", TABULAR[model]) if model in TABULAR else ("image", "softmax_ce")
    # The least-squares bound (K_a - |y|) K_z / m is negative on untrained weights (outputs ~ 0),
    # so a regression's first epoch needs a given rate instead of the probe.
    first = ["lr.first_epoch=0.01"] if loss == "mse" else []
    cfg = tiny_cfg(tmp_path, f"model={model}", "optim=sgd", *first, kind=kind, loss=loss)
    metrics = train(cfg)
    assert math.isfinite(metrics["test/loss"])
    assert metrics["lipschitz/lr"] > 0
    if loss != "mse":
        assert 0.0 <= metrics["test/acc"] <= 1.0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("optim", OPTIMS)
def test_fit_every_optim(optim: str, tmp_path: Path):
    """Every optimizer option trains an MLP for two short epochs."""
    cfg = tiny_cfg(tmp_path, "model=mlp", f"optim={optim}", kind="tabular", epochs=2)
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["test/loss"])
    if optim in LIPSCHITZ_OPTIMS:
        assert metrics["lipschitz/lr"] > 0 and metrics["lipschitz/L"] > 0
    else:
        assert not any(key.startswith("lipschitz/") for key in metrics)


def test_schedule_free_optimizer_switches_modes(tmp_path: Path):
    """Schedule-free SGD steps in train mode; evaluation and checkpoints see eval mode."""
    import schedulefree

    modes = {"train": set(), "val": set(), "checkpoint": set()}

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            modes["train"].add(trainer.optimizers[0].param_groups[0]["train_mode"])

        def on_validation_batch_end(self, trainer, *args):
            modes["val"].add(trainer.optimizers[0].param_groups[0]["train_mode"])

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            modes["checkpoint"].add(trainer.optimizers[0].param_groups[0]["train_mode"])

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, 3))
    module = SupervisedModule(net, lambda params: schedulefree.SGDScheduleFree(params, lr=0.1), "softmax_ce", 3)
    datamodule = pl.LightningDataModule.from_datasets(
        train_dataset=torch.utils.data.TensorDataset(torch.randn(32, 10), torch.randint(0, 3, (32,))),
        val_dataset=torch.utils.data.TensorDataset(torch.randn(16, 10), torch.randint(0, 3, (16,))),
        batch_size=8,
    )
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[Spy(), pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, monitor=None)],
    )
    trainer.fit(module, datamodule=datamodule)
    assert modes == {"train": {True}, "val": {False}, "checkpoint": {False}}
    assert trainer.optimizers[0].param_groups[0]["train_mode"] is False  # eval weights after fit


@pytest.mark.slow
def test_mission_command_writes_lr_every_epoch(tmp_path: Path):
    """``python -m lipschitz_lightning.train model=densenet40 optim=adamo``, made tiny."""
    run_dir = tmp_path / "mission"
    result = run_cli(
        ["model=densenet40", "optim=adamo"]
        + tiny_data("image")
        + ["trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
           "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    values = lr_events(run_dir)
    assert len(values) == 2 and all(v > 0 for v in values)
    assert values[0] == pytest.approx(0.1)  # AdaMo's first epoch: x = 0.1 (paper 7.3.1)
    output = result.stdout + result.stderr
    assert "test accuracy:" in output and "TensorBoard logs:" in output
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_multirun_over_two_optimizers(tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        ["--multirun", "optim=sgd,adamo", "model=mlp", f"hydra.sweep.dir={sweep_dir}"]
        + tiny_data("tabular")
        + [o for o in tiny_trainer(epochs=2) if o != "~logger"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep_dir / job / "checkpoints" / "last.ckpt").is_file()
        assert len(lr_events(sweep_dir / job)) == 2
    assert lr_events(sweep_dir / "1")[0] == pytest.approx(0.1)  # job 1 is adamo


@pytest.mark.slow
def test_resume_from_last_checkpoint(tmp_path: Path):
    """A second run from last.ckpt continues the epochs and the LipschitzLR state."""
    first = train(tiny_cfg(tmp_path / "a", "model=mlp", "optim=adamo", kind="tabular", epochs=1))
    last = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    second = train(tiny_cfg(tmp_path / "b", "model=mlp", "optim=adamo", f"ckpt_path={last}", kind="tabular", epochs=2))
    # Epoch 1 of the resumed run uses the rate computed at the end of epoch 0.
    assert second["lipschitz/lr"] == pytest.approx(first["lipschitz/next_lr"])
    checkpoint = torch.load(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["epoch"] == 1


@pytest.mark.slow
def test_ddp_sim_two_cpu_processes(tmp_path: Path):
    """trainer=ddp_sim re-launches the command once (2 gloo processes on CPU), as trainer=ddp does."""
    run_dir = tmp_path / "ddp"
    result = run_cli(
        ["trainer=ddp_sim", "model=mlp", "optim=sgd", f"hydra.run.dir={run_dir}"]
        + tiny_data("tabular")
        + ["dataset.num_train=64", "trainer.max_epochs=2", "trainer.enable_progress_bar=false"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    values = lr_events(run_dir)
    assert len(values) == 2 and all(v > 0 for v in values)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


# --------------------------------------------------------------------------- bad input

BAD_INPUT = [
    pytest.param(["trainer.max_epochs=0"], "image", "trainer.max_epochs must be a positive integer", id="zero-epochs"),
    pytest.param(["trainer.max_epochs=-3"], "image", "trainer.max_epochs must be a positive integer", id="negative-epochs"),
    pytest.param(["dataset.batch_size=0"], "image", "dataset.batch_size must be a positive integer", id="zero-batch"),
    pytest.param(["model=mnist_cnn"], "tabular", "does not fit|image input", id="image-model-on-features"),
    pytest.param(["model=mnist_cnn", "dataset.input_shape=[1,4,4]"], "image", "at least 8x8", id="image-too-small"),
    pytest.param(["model=logistic_regression"], "image", "loss bce but the dataset's loss is 'softmax_ce'",
                 id="classical-model-wrong-kind"),
    pytest.param(["model=softmax_regression", "dataset.loss=mse"], "tabular", "loss softmax_ce but the dataset's loss is 'mse'",
                 id="classifier-on-regression"),
    pytest.param(["optim=sgd", "optim.optimizer.momentum=0.9"], "image", "rule 'sgd' needs torch.optim.SGD without momentum",
                 id="sgd-rule-with-momentum"),
    pytest.param(["optim=auto_adam", "optim.optimizer._target_=torch.optim.RMSprop", "~optim.optimizer.betas"], "image",
                 "rule 'auto_adam' needs torch.optim.Adam", id="auto-adam-rule-with-rmsprop"),
    pytest.param(["optim=adamo", "optim.optimizer.momentum=0.0", "optim.optimizer.dampening=0.0"], "image",
                 "rule 'adamo' needs torch.optim.SGD with momentum", id="adamo-rule-without-momentum"),
]


@pytest.mark.parametrize(("overrides", "kind", "message"), BAD_INPUT)
def test_bad_input_is_a_config_error(overrides: List[str], kind: str, message: str, tmp_path: Path):
    model = [] if any(o.startswith("model=") for o in overrides) else ["model=resnet20"]
    cfg = tiny_cfg(tmp_path, *model, *overrides, kind=kind)
    with pytest.raises(ConfigError, match=message) as info:
        train(cfg)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists(), "nothing may run before the error"


def test_missing_data_is_one_clear_error(tmp_path: Path):
    from lipschitz_lightning.data import DatasetNotFoundError

    cfg = compose_train(path_overrides(tmp_path) + tiny_trainer() + ["dataset=mnist", "model=mnist_cnn"])
    with pytest.raises(DatasetNotFoundError, match="MNIST") as info:
        train(cfg)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_cli_bad_input_prints_one_line(tmp_path: Path):
    result = run_cli(["trainer.max_epochs=0", "model=mlp", f"hydra.run.dir={tmp_path / 'run'}"] + tiny_data("tabular"),
                     cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: trainer.max_epochs must be a positive integer; got 0"
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_cli_model_that_does_not_fit_names_model_and_dataset(tmp_path: Path):
    result = run_cli(["model=resnet20", "dataset=iris", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model 'resnet20' on dataset 'iris'"), last
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_cli_unknown_option(tmp_path: Path):
    result = run_cli(["model=no_such_model"], cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'model/no_such_model'" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_cli_missing_data(tmp_path: Path):
    result = run_cli(["dataset=cifar10", f"paths.data_dir={tmp_path / 'nothing'}", f"hydra.run.dir={tmp_path / 'run'}"],
                     cwd=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: CIFAR-10 not found in") and "cifar-10-batches-bin" in last
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_cli_regression_without_first_epoch_rate_says_what_to_set(tmp_path: Path):
    """The least-squares bound is negative on untrained weights: one line naming lr.first_epoch."""
    result = run_cli(["dataset=diabetes", "model=linear_regression", "optim=sgd", "trainer=cpu", "trainer.max_epochs=1",
                      f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: LipschitzLR: the first-epoch probe") and "lr.first_epoch" in last, last
    assert "Traceback" not in result.stdout + result.stderr
