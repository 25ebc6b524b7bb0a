"""Every option of every config group composes and instantiates; the paper's values are right.

The option list is globbed from ``conf/``, so a new file is covered without touching this test.
Nothing here trains (see ``test_train.py``) or needs a dataset on disk: the datamodules of the
real datasets touch no file until ``prepare_data``/``setup``.
"""

from __future__ import annotations

import inspect
import re
from functools import cached_property
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Sequence

import hydra
import pytest
import pytorch_lightning as pl
import torch
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from lipschitz_lightning import LipschitzLR
from lipschitz_lightning.app.preflight import build_net
from lipschitz_lightning.callbacks import check_optimizer
from lipschitz_lightning.data import SklearnDataModule, SyntheticDataModule
from tests.conftest import CONF_DIR, compose_train, path_overrides

GROUPS = ["dataset", "model", "module", "optim", "lr", "trainer", "logger", "callbacks", "paths", "hydra", "debug", "experiment"]


def options(group: str) -> List[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


ALL_OPTIONS = [(group, option) for group in GROUPS for option in options(group)]

# A dataset each model fits (its input kind and loss); any other model is tried on CIFAR-10.
FITTING_DATASET: Dict[str, str] = {
    "mnist_cnn": "mnist",
    "mlp": "digits",
    "linear_regression": "diabetes",
    "logistic_regression": "breast_cancer",
    "softmax_regression": "iris",
}


def instantiate(node, **kwargs):
    return hydra.utils.instantiate(node, _convert_="all", **kwargs)


def build_trainer(cfg, tmp_path: Path):
    """Instantiate the trainer where this machine has its accelerator; else check its arguments."""
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    kwargs.pop("_target_")
    accelerator = kwargs.get("accelerator", "auto")
    if accelerator == "gpu" and not torch.cuda.is_available():
        inspect.signature(pl.Trainer).bind(**kwargs)  # every key is a Trainer argument
        return None
    return instantiate(cfg.trainer, callbacks=[], logger=False)


def test_every_group_has_its_options():
    """The option files the issue asks for exist (more may be added)."""
    wanted = {
        "dataset": {"cifar10", "cifar100", "mnist", "digits", "iris", "breast_cancer", "wine", "diabetes", "synthetic"},
        "model": {"mnist_cnn", "resnet20", "resnet56", "resnet164", "densenet40", "mlp", "linear_regression",
                  "logistic_regression", "softmax_regression"},
        "optim": {"sgd", "adamo", "rmsprop", "auto_adam", "sgd_fixed", "momentum_fixed", "rmsprop_fixed", "adam_fixed",
                  "prodigy", "dadapt_sgd", "dadapt_adam", "dog", "schedulefree_sgd"},
        "lr": {"default"},
        "trainer": {"cpu", "gpu", "ddp", "ddp_sim"},
        "logger": {"tensorboard", "csv"},
        "callbacks": {"default"},
        "debug": {"default", "fdr", "limit", "overfit", "quick"},
        "experiment": {"quickstart"},
    }
    for group, names in wanted.items():
        assert names <= set(options(group)), f"{group}: missing {names - set(options(group))}"


def test_root_defaults_and_order():
    """Defaults: dataset=cifar10 model=resnet20 optim=sgd; groups in the template's order."""
    root = yaml.safe_load((CONF_DIR / "train.yaml").read_text())
    order = [next(iter(entry)) if isinstance(entry, dict) else entry for entry in root["defaults"]]
    assert order == ["_self_", "dataset", "model", "module", "optim", "lr", "trainer", "logger", "callbacks",
                     "paths", "hydra", "experiment", "hparams_search", "debug", "override hydra/help"]
    cfg = compose_train(hydra_config=True)
    choices = cfg.hydra.runtime.choices
    assert (choices.dataset, choices.model, choices.optim) == ("cifar10", "resnet20", "sgd")
    assert choices.experiment is None and choices.debug is None
    # The headline run: CIFAR-10 batch 128, 300 epochs, ResNet20 at weight decay 1e-3, adaptive SGD.
    assert cfg.dataset.batch_size == 128 and cfg.trainer.max_epochs == 300
    assert cfg.optim.optimizer.weight_decay == pytest.approx(1e-3)
    assert cfg.optim.callback.rule == "sgd" and cfg.optim.callback.first_epoch_lr is None


class Case:
    """One option of one group, composed; its datamodule built (and checked) on first use."""

    def __init__(self, cfg, option: str, tmp_path: Path):
        self.cfg, self.option, self.tmp_path = cfg, option, tmp_path

    @cached_property
    def datamodule(self) -> pl.LightningDataModule:
        datamodule = instantiate(self.cfg.dataset)
        assert isinstance(datamodule, pl.LightningDataModule)
        assert datamodule.loss in ("softmax_ce", "bce", "mse") and datamodule.num_outputs >= 1
        return datamodule


def hydra_run_dir_and_callbacks(case: Case) -> None:
    hydra_cfg = OmegaConf.to_container(case.cfg.hydra, resolve=False)
    assert "${task_name}" in hydra_cfg["run"]["dir"] and "${run_dir:" in hydra_cfg["run"]["dir"]
    assert hydra_cfg["callbacks"]["report_failed_jobs"]["_target_"] == "lipschitz_lightning.app.hydra_callbacks.ReportFailedJobs"


def every_interpolation_resolves(case: Case) -> None:
    OmegaConf.to_container(case.cfg, resolve=True, throw_on_missing=True)


def output_dir_is_tmp_path(case: Case) -> None:
    assert case.cfg.paths.output_dir == str(case.tmp_path / "run")


def datamodule_instantiates(case: Case) -> None:
    case.datamodule


def generated_batches_have_the_input_shape(case: Case) -> None:
    datamodule = case.datamodule
    if isinstance(datamodule, (SklearnDataModule, SyntheticDataModule)):
        datamodule.setup("fit")  # no files: generated or bundled with scikit-learn
        x, y = next(iter(datamodule.train_dataloader()))
        assert tuple(x.shape[1:]) == tuple(datamodule.input_shape)


def module_takes_the_net(case: Case) -> None:
    cfg, datamodule = case.cfg, case.datamodule
    net = build_net(cfg, datamodule)
    module = instantiate(cfg.module, net=net, optimizer=instantiate(cfg.optim.optimizer), loss=datamodule.loss,
                         num_outputs=datamodule.num_outputs)
    assert isinstance(module, pl.LightningModule) and module.net is net


def net_optimizer_and_callback_fit(case: Case) -> None:
    cfg, datamodule = case.cfg, case.datamodule
    net = build_net(cfg, datamodule)
    assert isinstance(net.head, torch.nn.Linear)
    optimizer = instantiate(cfg.optim.optimizer)(params=net.parameters())
    assert isinstance(optimizer, torch.optim.Optimizer)
    if cfg.optim.get("callback") is not None:
        callback = instantiate(cfg.optim.callback, loss=datamodule.loss)
        assert isinstance(callback, LipschitzLR)
        check_optimizer(callback.rule, optimizer)
        assert callback.first_epoch_lr == (cfg.lr.first_epoch if cfg.lr.first_epoch is not None
                                           else LipschitzLR(rule=callback.rule).first_epoch_lr)


def trainer_instantiates(case: Case) -> None:
    trainer = build_trainer(case.cfg, case.tmp_path)
    if trainer is not None:
        assert isinstance(trainer, pl.Trainer)
        assert trainer.max_epochs == case.cfg.trainer.max_epochs


def ddp_sim_is_two_cpu_processes(case: Case) -> None:
    cfg = case.cfg
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 2
    assert cfg.trainer.strategy._target_ == "pytorch_lightning.strategies.DDPStrategy"  # with its collective timeout


def loggers_write_into_tmp_path(case: Case) -> None:
    loggers = [instantiate(node) for node in case.cfg.logger.values()]
    assert loggers and all(isinstance(lg, pl.loggers.Logger) for lg in loggers)
    assert all(str(case.tmp_path) in lg.log_dir for lg in loggers)


def last_checkpoint_goes_into_tmp_path(case: Case) -> None:
    callbacks = [instantiate(node) for node in case.cfg.callbacks.values()]
    assert all(isinstance(cb, pl.Callback) for cb in callbacks)
    last = [cb for cb in callbacks if isinstance(cb, pl.callbacks.ModelCheckpoint) and cb.filename == "last"]
    assert last and last[0].dirpath.startswith(str(case.tmp_path))


class GroupCase(NamedTuple):
    """How an option of a group is composed (its overrides beyond the paths) and checked (in order)."""

    overrides: Callable[[str, str], List[str]]
    checks: Sequence[Callable[[Case], None]]
    hydra_config: bool = False


def select(group: str, option: str) -> List[str]:
    return [f"{group}={option}"]


def nothing(group: str, option: str) -> List[str]:  # paths and hydra: the root config's own
    return []


COMPOSED = (every_interpolation_resolves, datamodule_instantiates)
GROUP_CASES: Dict[str, GroupCase] = {
    "dataset": GroupCase(select, COMPOSED + (generated_batches_have_the_input_shape,)),
    "model": GroupCase(lambda g, o: [f"dataset={FITTING_DATASET.get(o, 'cifar10')}"] + select(g, o),
                       COMPOSED + (net_optimizer_and_callback_fit,)),
    "module": GroupCase(select, COMPOSED + (module_takes_the_net,)),
    "optim": GroupCase(lambda g, o: ["dataset=digits", "model=mlp"] + select(g, o),
                       COMPOSED + (net_optimizer_and_callback_fit,)),
    "lr": GroupCase(select, COMPOSED + (net_optimizer_and_callback_fit,)),
    "trainer": GroupCase(select, COMPOSED + (trainer_instantiates,)),
    "logger": GroupCase(select, COMPOSED + (loggers_write_into_tmp_path,)),
    "callbacks": GroupCase(select, COMPOSED + (last_checkpoint_goes_into_tmp_path,)),
    "paths": GroupCase(nothing, (every_interpolation_resolves, output_dir_is_tmp_path)),
    "hydra": GroupCase(nothing, (hydra_run_dir_and_callbacks,), hydra_config=True),
    "debug": GroupCase(select, COMPOSED + (trainer_instantiates,)),
    "experiment": GroupCase(select, COMPOSED + (net_optimizer_and_callback_fit, trainer_instantiates)),
}
# Checks of one option beyond those of its group.
OPTION_CHECKS: Dict[tuple, Sequence[Callable[[Case], None]]] = {
    ("trainer", "ddp_sim"): (ddp_sim_is_two_cpu_processes,),
}


def test_every_group_has_its_checks():
    assert set(GROUP_CASES) == set(GROUPS)
    assert all(case.checks for case in GROUP_CASES.values())
    assert all((group, option) in ALL_OPTIONS for group, option in OPTION_CHECKS)


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=[f"{g}/{o}" for g, o in ALL_OPTIONS])
def test_option_composes_and_instantiates(group: str, option: str, tmp_path: Path):
    how = GROUP_CASES[group]
    cfg = compose_train(path_overrides(tmp_path) + how.overrides(group, option), hydra_config=how.hydra_config)
    case = Case(cfg, option, tmp_path)
    for check in (*how.checks, *OPTION_CHECKS.get((group, option), ())):
        check(case)


# Table 3 rows (MNIST, CIFAR-10, CIFAR-100) as the paper states them:
# experiment -> (dataset, model, optim, weight decay, first-epoch x or None for the rule's default)
PAPER = {
    "mnist_cnn_sgd_adaptive": ("mnist", "mnist_cnn", "sgd", 0.0, None),
    "mnist_cnn_momentum_adaptive": ("mnist", "mnist_cnn", "adamo", 0.0, 0.1),
    "mnist_cnn_adam_adaptive": ("mnist", "mnist_cnn", "auto_adam", 0.0, 1e-3),
    "cifar10_resnet20_sgd_baseline": ("cifar10", "resnet20", "sgd_fixed", 1e-3, None),
    "cifar10_resnet20_sgd_fixed": ("cifar10", "resnet20", "sgd_fixed", 1e-3, None),
    "cifar10_resnet20_sgd_adaptive": ("cifar10", "resnet20", "sgd", 1e-3, None),
    "cifar10_resnet20_momentum_baseline": ("cifar10", "resnet20", "momentum_fixed", 1e-3, None),
    "cifar10_resnet20_momentum_adaptive_wd1e-2": ("cifar10", "resnet20", "adamo", 1e-2, 0.1),
    "cifar10_resnet20_momentum_adaptive": ("cifar10", "resnet20", "adamo", 1e-3, 1.0),
    "cifar10_resnet20_rmsprop_baseline": ("cifar10", "resnet20", "rmsprop_fixed", 1e-3, None),
    "cifar10_resnet20_rmsprop_adaptive": ("cifar10", "resnet20", "rmsprop", 1e-3, None),
    "cifar10_resnet20_adam_baseline": ("cifar10", "resnet20", "adam_fixed", 1e-3, None),
    "cifar10_resnet20_adam_fixed": ("cifar10", "resnet20", "adam_fixed", 1e-4, None),
    "cifar10_densenet40_sgd_baseline": ("cifar10", "densenet40", "sgd_fixed", 1e-4, None),
    "cifar10_densenet40_sgd_adaptive": ("cifar10", "densenet40", "sgd", 1e-4, None),
    "cifar10_densenet40_momentum_baseline": ("cifar10", "densenet40", "momentum_fixed", 1e-4, None),
    "cifar10_densenet40_momentum_adaptive": ("cifar10", "densenet40", "adamo", 1e-4, 0.5),
    "cifar10_densenet40_rmsprop_baseline": ("cifar10", "densenet40", "rmsprop_fixed", 1e-4, None),
    "cifar10_densenet40_rmsprop_adaptive": ("cifar10", "densenet40", "rmsprop", 1e-4, None),
    "cifar10_densenet40_adam_baseline": ("cifar10", "densenet40", "adam_fixed", 1e-4, None),
    "cifar10_densenet40_adam_adaptive": ("cifar10", "densenet40", "auto_adam", 1e-4, 1e-3),
    "cifar100_resnet56_sgd_adaptive": ("cifar100", "resnet56", "sgd", 1e-3, None),
    "cifar100_resnet164_sgd_baseline": ("cifar100", "resnet164", "sgd_fixed", 1e-4, None),
    "cifar100_resnet164_sgd_adaptive": ("cifar100", "resnet164", "sgd", 1e-4, None),
    "cifar100_resnet164_momentum_baseline": ("cifar100", "resnet164", "momentum_fixed", 1e-4, None),
    "cifar100_resnet164_momentum_adaptive": ("cifar100", "resnet164", "adamo", 1e-4, 0.5),
    "cifar100_resnet164_rmsprop_baseline": ("cifar100", "resnet164", "rmsprop_fixed", 1e-4, None),
    "cifar100_resnet164_rmsprop_adaptive": ("cifar100", "resnet164", "rmsprop", 1e-4, 1e-3),
    "cifar100_resnet164_adam_baseline": ("cifar100", "resnet164", "adam_fixed", 1e-4, None),
    "cifar100_densenet40_sgd_baseline": ("cifar100", "densenet40", "sgd_fixed", 1e-4, None),
    "cifar100_densenet40_sgd_adaptive": ("cifar100", "densenet40", "sgd", 1e-4, None),
    "cifar100_densenet40_momentum_baseline": ("cifar100", "densenet40", "momentum_fixed", 1e-4, None),
    "cifar100_densenet40_momentum_adaptive": ("cifar100", "densenet40", "adamo", 1e-4, 1.0),
    "cifar100_densenet40_rmsprop_baseline": ("cifar100", "densenet40", "rmsprop_fixed", 1e-4, None),
    "cifar100_densenet40_rmsprop_adaptive": ("cifar100", "densenet40", "rmsprop", 1e-4, None),
    "cifar100_densenet40_adam_baseline": ("cifar100", "densenet40", "adam_fixed", 1e-4, None),
    "cifar100_densenet40_adam_adaptive": ("cifar100", "densenet40", "auto_adam", 1e-4, 1e-3),
}
# Fixed-policy rows: the rate kept for all epochs (paper 7.4).
FIXED_RATE = {"cifar10_resnet20_sgd_fixed": 0.668, "cifar10_resnet20_adam_fixed": 0.05}
BASELINE_RATE = {"sgd_fixed": 0.01, "momentum_fixed": 0.01, "rmsprop_fixed": 1e-3, "adam_fixed": 1e-3}


def test_one_experiment_per_table3_row():
    assert set(options("experiment")) == set(PAPER) | {"quickstart"}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_experiment_matches_the_paper(name: str, tmp_path: Path):
    dataset, model, optim, weight_decay, first = PAPER[name]
    text = (CONF_DIR / "experiment" / f"{name}.yaml").read_text()
    header = text.split("\ndefaults:")[0]
    assert f"python -m lipschitz_lightning.train experiment={name}" in header, "run command in the header"
    cfg = compose_train(path_overrides(tmp_path) + [f"experiment={name}"], hydra_config=True)
    choices = cfg.hydra.runtime.choices
    assert (choices.dataset, choices.model, choices.optim) == (dataset, model, optim)
    assert cfg.trainer.max_epochs == (20 if dataset == "mnist" else 300)
    assert cfg.dataset.batch_size == (256 if dataset == "mnist" else 128)
    assert cfg.optim.optimizer.weight_decay == pytest.approx(weight_decay)
    assert cfg.lr.first_epoch == first
    if optim in BASELINE_RATE:
        assert cfg.optim.get("callback") is None
        assert cfg.optim.optimizer.lr == pytest.approx(FIXED_RATE.get(name, BASELINE_RATE[optim]))
    if optim == "adamo":  # the EWMA velocity of the paper
        assert cfg.optim.optimizer.dampening == cfg.optim.optimizer.momentum == 0.9


def test_quickstart_composes(tmp_path: Path):
    cfg = compose_train(path_overrides(tmp_path) + ["experiment=quickstart"], hydra_config=True)
    choices = cfg.hydra.runtime.choices
    assert (choices.dataset, choices.model, choices.optim, choices.trainer) == ("digits", "mlp", "sgd", "cpu")
    assert cfg.dataset.name == "digits" and cfg.dataset.num_workers == 0
    assert 5 <= cfg.trainer.max_epochs <= 50
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.task_name == "quickstart"
    assert "tensorboard" in cfg.logger


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optim=adamo"], 0.1),  # the rule's own default
        (["optim=adamo", "lr.first_epoch=0.5"], 0.5),
        (["optim=adamo", "lr.first_epoch=0.3"], 0.3),
        (["optim=sgd", "lr.first_epoch=auto"], "auto"),
        (["optim=rmsprop", "lr.first_epoch=1e-3"], 1e-3),
        (["experiment=cifar10_densenet40_momentum_adaptive", "lr.first_epoch=1.0"], 1.0),  # command line wins
        (["experiment=cifar10_densenet40_momentum_adaptive", "lr.first_epoch=null"], 0.1),  # back to the rule's own
    ],
)
def test_first_epoch_rate_override(overrides: List[str], expected, tmp_path: Path):
    cfg = compose_train(path_overrides(tmp_path) + overrides)
    callback = instantiate(cfg.optim.callback, loss="softmax_ce")
    assert callback.first_epoch_lr == expected


def test_short_runs_without_plus(tmp_path: Path):
    """The batch limits and the logging interval are plain overrides (no `+`), and debug=quick
    shrinks a run without debug=default's anomaly detection, DEBUG logging and task_name."""
    cfg = compose_train(path_overrides(tmp_path) + ["trainer.limit_train_batches=30", "trainer.limit_val_batches=0.5",
                                                    "trainer.limit_test_batches=5", "trainer.log_every_n_steps=10"])
    assert (cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches) == (30, 0.5)
    assert (cfg.trainer.limit_test_batches, cfg.trainer.log_every_n_steps) == (5, 10)
    default = compose_train(path_overrides(tmp_path))
    assert default.trainer.limit_train_batches == default.trainer.limit_val_batches == 1.0  # Lightning's: all

    cfg = compose_train(path_overrides(tmp_path) + ["experiment=quickstart", "debug=quick"], hydra_config=True)
    assert cfg.task_name == "quickstart" and not cfg.trainer.get("detect_anomaly", False)
    assert cfg.hydra.job_logging.root.level != "DEBUG"
    assert 1 <= cfg.trainer.limit_train_batches <= 20 and cfg.trainer.max_epochs >= 2
    assert cfg.trainer.log_every_n_steps <= cfg.trainer.limit_train_batches  # no "smaller than the logging interval"
    assert (cfg.dataset.name, cfg.optim.callback.rule) == ("digits", "sgd")  # the run itself stays


def test_weight_decay_follows_model_and_override(tmp_path: Path):
    base = path_overrides(tmp_path)
    assert compose_train(base + ["model=densenet40", "optim=adamo"]).optim.optimizer.weight_decay == pytest.approx(1e-4)
    assert compose_train(base + ["model=resnet20"]).optim.optimizer.weight_decay == pytest.approx(1e-3)
    assert compose_train(base + ["weight_decay=0.05", "optim=prodigy"]).optim.optimizer.weight_decay == 0.05


def test_unknown_option_is_a_hydra_error():
    with pytest.raises(ConfigCompositionException, match="model/no_such_model"):
        compose_train(["model=no_such_model"])


def test_every_experiment_header_states_its_run_command():
    for path in (CONF_DIR / "experiment").glob("*.yaml"):
        assert re.search(rf"python -m lipschitz_lightning\.train experiment={re.escape(path.stem)}\b", path.read_text())
