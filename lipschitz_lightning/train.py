"""Train a classifier with a LipschitzLR learning rate (or a baseline optimizer) from Hydra configs.

Single device (the paper's headline run: CIFAR-10, ResNet20, adaptive SGD)::

    python -m lipschitz_lightning.train
    python -m lipschitz_lightning.train model=densenet40 optim=adamo lr.first_epoch=0.5
    python -m lipschitz_lightning.train experiment=cifar10_densenet40_momentum_adaptive

Resume a stopped run in its own folder (same TensorBoard run, same checkpoint history)::

    python -m lipschitz_lightning.train resume=logs/train/runs/<run>     # + the run's own overrides

Several devices (the rate is the same for any device count at the same effective batch)::

    python -m lipschitz_lightning.train trainer=ddp trainer.devices=4 dataset.batch_size=32

Sweep::

    python -m lipschitz_lightning.train --multirun optim=sgd,adamo,auto_adam

The configs are the repository's ``conf/`` folder (``conf/train.yaml`` is the root), shipped in
the wheel as ``lipschitz_lightning/conf`` (:func:`lipschitz_lightning.configs.config_dir`).
``train(cfg)`` is a plain function: check, build, fit, test, return the metrics. ``main`` is the
Hydra wrapper and the one place that turns a failure into its one line and exit status.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

if __name__ == "__main__":  # without the [app] extra: one line naming it, exit status 2, no traceback
    from lipschitz_lightning.app.cli import require_app

    require_app("python -m lipschitz_lightning.train")

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lipschitz_lightning.callbacks import LipschitzLRError, NonFiniteError, check_optimizer, find_head
from lipschitz_lightning.app import help as _help  # noqa: F401 - registers --help's training_groups resolver
from lipschitz_lightning.app import signals
from lipschitz_lightning.app.noise import NOISE_WARNINGS
from lipschitz_lightning.app import checkpoints, run_folder
from lipschitz_lightning.configs import config_dir
from lipschitz_lightning.data import DatasetCorruptError, DatasetNotFoundError

__all__ = ["ConfigError", "ReportFailedJobs", "main", "train"]

log = logging.getLogger(__name__)

# Failures that are the user's to fix: main() prints their message as one line (exit status 2).
USER_ERRORS = (LipschitzLRError, DatasetNotFoundError, DatasetCorruptError, NonFiniteError, checkpoints.CheckpointSaveError)




class ConfigError(ValueError):
    """A configuration that cannot train, found before training starts (one-line message)."""


# --------------------------------------------------------------------------- run folders


# new_run_dir names a run's folder (hydra.run.dir through the run_dir resolver); run_folder also
# holds the folder's lock and the resolver that defers .hydra/ until the run is accepted.
new_run_dir = run_folder.new_run_dir
_run_dir_resolver = run_folder.run_dir_resolver


# --------------------------------------------------------------------------- pre-flight checks


def _choice(cfg: DictConfig, group: str) -> str:
    """The option chosen for ``group`` (``model=densenet40`` -> ``densenet40``) for messages."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return str(choice)
    node = cfg.get(group)
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return str(target).rsplit(".", 1)[-1] if target else group


def _instantiate(node: Any, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``; a bad value (ValueError/TypeError of the target) is a ConfigError."""
    try:
        # _convert_="all": plain lists and dicts reach the targets (and the checkpoints), not OmegaConf nodes.
        return hydra.utils.instantiate(node, _convert_="all", **kwargs)
    except hydra.errors.InstantiationException as exc:
        cause = exc
        while isinstance(cause, hydra.errors.InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, USER_ERRORS):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError, ImportError)):
            raise ConfigError(f"{what}: {cause}") from exc
        if isinstance(cause, hydra.errors.InstantiationException):
            raise ConfigError(f"{what}: {str(cause).splitlines()[0]}") from exc
        raise


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# The run's top-level numbers, checked once, before anything is built: (key, test, what it must be).
VALUE_CHECKS = (
    ("trainer.max_epochs", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
    ("dataset.batch_size", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
    ("weight_decay", lambda v: _is_number(v) and v >= 0, "a non-negative number"),
    ("lr.first_epoch", lambda v: v is None or (_is_number(v) and v > 0), "a positive number or null"),
    ("seed", lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32),
     "an integer from 0 to 4294967295 or null"),  # numpy's range, as Lightning's seed_everything checks
)


def _check_values(cfg: DictConfig) -> None:
    absent = object()
    for key, valid, must_be in VALUE_CHECKS:
        value = OmegaConf.select(cfg, key, default=absent)
        if value is not absent and not valid(value):
            raise ConfigError(f"{key} must be {must_be}; got {value!r}")


def _build_net(cfg: DictConfig, datamodule: pl.LightningDataModule) -> torch.nn.Module:
    """Instantiate ``cfg.model`` for the datamodule's input shape and head size, and check it fits."""
    model_name, dataset_name = _choice(cfg, "model"), _choice(cfg, "dataset")
    where = f"model {model_name!r} on dataset {dataset_name!r}"
    target = cfg.model.get("_target_")
    try:
        cls = hydra.utils.get_class(target) if target else None
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"model {model_name!r}: cannot import {target!r}") from exc
    supported = getattr(cls, "supported_losses", None)
    if supported is not None and datamodule.loss not in supported:
        raise ConfigError(
            f"{where}: the model is trained with loss {'/'.join(supported)} but the dataset's loss is "
            f"{datamodule.loss!r}; pick a model for this kind of dataset"
        )
    smallest = getattr(cls, "min_batch_size", 1)  # models whose layers need a batch statistic
    if datamodule.batch_size < smallest:
        raise ConfigError(f"{where}: dataset.batch_size={datamodule.batch_size} is too small, the model needs "
                          f"at least {smallest} samples per batch ({cls.min_batch_size_reason}); use "
                          f"dataset.batch_size={smallest} or more")
    input_shape = tuple(datamodule.input_shape)
    net = _instantiate(cfg.model, where, input_shape=input_shape, num_outputs=datamodule.num_outputs)
    # One tiny forward pass catches shape mismatches that only show in forward().
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, *input_shape))
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"{where}: input of shape {input_shape} does not fit the model ({exc})") from exc
    finally:
        net.train()
    if tuple(out.shape) != (2, datamodule.num_outputs):
        raise ConfigError(
            f"{where}: the model outputs shape {tuple(out.shape[1:])} per sample, "
            f"the dataset needs ({datamodule.num_outputs},)"
        )
    shape = (f"{input_shape[0]}-channel {input_shape[1]}x{input_shape[2]} images" if len(input_shape) == 3
             else f"inputs of shape {input_shape}")
    log.info(f"{model_name}: built for {dataset_name}'s {shape} and {datamodule.num_outputs} output(s)")
    return net


def _check_optimizer(cfg: DictConfig, optimizer: Any, lipschitz: Any) -> torch.optim.Optimizer:
    """Build the optimizer once on a stand-in parameter: its arguments' types and values, and
    whether it fits the LipschitzLR rule. Returns that optimizer (for the checkpoint check)."""
    what = f"optim={_choice(cfg, 'optim')}"
    try:
        probe = optimizer(params=[torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{what}: {exc} (check optim.optimizer.* and weight_decay)") from exc
    if lipschitz is not None:
        try:
            check_optimizer(lipschitz.rule, probe)
        except ValueError as exc:
            raise ConfigError(f"{what}: {exc}") from exc
    return probe


# Optimizer settings that stay as configured during training (the rate itself is LipschitzLR's or a
# scheduler's): a checkpoint of the same optimizer class with other values is another run.
OPTIMIZER_SETTINGS = ("momentum", "dampening", "nesterov", "weight_decay", "betas", "eps", "alpha", "centered",
                      "amsgrad", "maximize", "rho", "lr_decay", "decoupled_weight_decay")


def _check_checkpoint(path: str, module: pl.LightningModule, lipschitz: Any, optimizer: torch.optim.Optimizer,
                      datamodule: pl.LightningDataModule, record: checkpoints.ResumeRecord,
                      max_epochs: Any = None) -> Dict[str, Any]:
    """The checkpoint exists, holds plain data only (loaded with ``weights_only=True``: no code in
    it runs), is a Lightning training checkpoint, and fits this run: model, LipschitzLR rule,
    optimizer class and values, the optim option's settings (:class:`checkpoints.ResumeRecord`),
    seed and batch size (the datamodule's :meth:`check_resume`), and ``max_epochs`` (not fewer
    than the checkpoint has trained). Returns the loaded checkpoint."""
    if not os.path.isfile(path):
        raise ConfigError(f"ckpt_path: no such file: {path}")
    try:
        checkpoint = checkpoints.load(path)
    except checkpoints.UnsafeCheckpointError as exc:
        raise ConfigError(f"ckpt_path: {exc}") from None
    except Exception as exc:  # torch.load raises many types on a file that is not a checkpoint
        raise ConfigError(f"ckpt_path: {path} is not a checkpoint ({type(exc).__name__})") from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "loops" not in checkpoint:
        raise ConfigError(f"ckpt_path: {path} is not a Lightning training checkpoint (no state_dict/loops)")
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    if ours != theirs:
        diff = sorted(set(ours.items()) ^ set(theirs.items()))[:2]
        raise ConfigError(f"ckpt_path: {path} holds another model than this run's (first differences: {diff}); "
                          "resume with the overrides of the run that wrote it")
    rules = {state.get("rule") for key, state in checkpoint.get("callbacks", {}).items() if key.startswith("LipschitzLR")}
    rule = lipschitz.rule if lipschitz is not None else None
    if rules and rule not in rules or (rule is not None and not rules):
        raise ConfigError(f"ckpt_path: {path} was trained with LipschitzLR rule {sorted(map(str, rules)) or 'none'}, "
                          f"this run uses {rule or 'no LipschitzLR'}; pass the run's own optim=")
    saved_groups = [s.get("param_groups", [{}])[0] for s in checkpoint.get("optimizer_states", [])]
    if saved_groups:
        saved, group = saved_groups[0], optimizer.param_groups[0]
        if set(saved) - {"params", "initial_lr"} != set(group) - {"params", "initial_lr"}:
            raise ConfigError(f"ckpt_path: {path} was trained with another optimizer than {type(optimizer).__name__}; "
                              "pass the run's own optim=")
        plain = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
        differ = [k for k in OPTIMIZER_SETTINGS if k in saved and k in group and plain(saved[k]) != plain(group[k])]
        if differ:
            there = ", ".join(f"{k}={saved[k]!r}" for k in differ)
            here = ", ".join(f"{k}={group[k]!r}" for k in differ)
            raise ConfigError(f"ckpt_path: {path} was trained with {type(optimizer).__name__}({there}), this run has "
                              f"{type(optimizer).__name__}({here}); pass the run's own optim= and its overrides")
    try:
        record.check(checkpoints.ResumeRecord.find(checkpoint))
    except ValueError as exc:
        raise ConfigError(f"ckpt_path: {path}: {exc}; pass the run's own optim= and its overrides") from None
    _check_datamodule_state(path, checkpoint, datamodule)
    info = checkpoints.info_of(path, checkpoint)
    if isinstance(max_epochs, int) and not isinstance(max_epochs, bool) and 0 <= max_epochs < info.epochs_needed:
        raise ConfigError(f"ckpt_path: {path} has trained {info.epochs_needed} epoch(s) "
                          f"({info.describe()}); this run has epochs={max_epochs}: resume with "
                          f"epochs={info.epochs_needed} or more")
    return checkpoint


def _check_datamodule_state(path: str, checkpoint: Dict[str, Any], datamodule: pl.LightningDataModule,
                            world_size: Optional[int] = None) -> None:
    """Ask the datamodule whether the checkpoint's data state continues in this run (seed, batch
    size, process count)."""
    state = checkpoint.get(type(datamodule).__qualname__)
    check = getattr(datamodule, "check_resume", None)
    if isinstance(state, dict) and check is not None:
        try:
            check(state, world_size=world_size)
        except ValueError as exc:
            raise ConfigError(f"ckpt_path: {path}: {exc}") from None
        return
    seed = getattr(datamodule, "seed", None)
    for key, state in checkpoint.items():
        if isinstance(state, dict) and "batches_done" in state and state.get("seed", seed) != seed:
            raise ConfigError(f"ckpt_path: {path} was trained with seed={state['seed']}, this run has seed={seed}; "
                              f"resume with seed={state['seed']}")


def _resume_path(cfg: DictConfig) -> Optional[str]:
    """The checkpoint to continue: ``ckpt_path``, or the one of ``resume``'s run folder with the
    most training progress (:func:`checkpoints.pick_resume`: ``last.ckpt`` or ``on_exception.ckpt``;
    the newest intact one when either is damaged, saying so)."""
    ckpt_path, resume = cfg.get("ckpt_path"), cfg.get("resume")
    if ckpt_path and resume:
        raise ConfigError("give either resume=<run folder> or ckpt_path=<checkpoint>, not both")
    if not resume:
        return str(ckpt_path) if ckpt_path else None
    folder = Path(str(resume)) / "checkpoints"
    try:
        chosen, note = checkpoints.pick_resume(folder)
    except FileNotFoundError:
        raise ConfigError(f"resume: no last.ckpt or on_exception.ckpt in {folder}") from None
    except ValueError as exc:
        raise ConfigError(f"resume: {exc}") from None
    if note:
        log.warning(note)
    else:
        log.info(f"resume: continuing from {chosen.describe()}")
    return str(chosen.path)


def _logging_of_resume(cfg: DictConfig, checkpoint: Optional[Dict[str, Any]]) -> DictConfig:
    """The config the loggers are built from: for a resumed run, TensorBoard loggers get
    ``purge_step`` (the step after the checkpoint's), so the points that an interrupted run logged
    after its checkpoint (a killed epoch, trained again now) are hidden, not shown twice."""
    if checkpoint is None or not isinstance(cfg.get("logger"), DictConfig):
        return cfg
    resumed = cfg.copy()
    for node in resumed.logger.values():
        if isinstance(node, DictConfig) and str(node.get("_target_", "")).endswith("TensorBoardLogger"):
            with open_dict(node):
                node.setdefault("purge_step", int(checkpoint.get("global_step", 0)) + 1)
    return resumed


def _check_run_folder(cfg: DictConfig, ckpt_path: Optional[str]) -> None:
    """This run owns its folder (its lock: a second live run there is refused), and a new run
    never continues (or overwrites) another run's checkpoints by accident. Temp files of a save
    that was killed are removed."""
    run = Path(str(OmegaConf.select(cfg, "paths.output_dir") or "."))
    folder = run / "checkpoints"
    if not run_folder.first_process():
        return
    try:
        run_folder.claim(run)
    except run_folder.FolderInUse as exc:
        raise ConfigError(str(exc)) from None
    checkpoints.remove_stale_temps(folder)
    if ckpt_path or not folder.is_dir():
        return
    if any(folder.glob("*.ckpt")) and not any(folder.parent.glob("hpc_ckpt_*.ckpt")):
        raise ConfigError(f"{folder.parent} already holds a run's checkpoints: continue it with "
                          f"resume={folder.parent}, or start a new run in another folder")


# --------------------------------------------------------------------------- train


def train(cfg: DictConfig) -> Dict[str, float]:
    """Check ``cfg``; build datamodule, module, callbacks, loggers and trainer; fit; test.

    Args:
        cfg: the composed ``conf/train.yaml`` (or any config with the same keys).

    Returns:
        The final metrics as floats: the fit's last-epoch values (``train/*``, ``val/*``,
        ``lipschitz/*``) and the test set's (``test/*``), so sweepers can optimise any of them.

    Raises:
        ConfigError: a configuration that cannot train, found before training starts.
        DatasetNotFoundError, DatasetCorruptError: missing or corrupt data (the message says which file).
        LipschitzLRError: LipschitzLR has no usable first rate (raised before the first step).
        NonFiniteError: the loss or the weights stopped being finite.
        SIGTERMException: SIGTERM or Ctrl-C stopped training; the checkpoint is written.
    """
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    _check_values(cfg)
    ckpt_path = _resume_path(cfg)
    _check_run_folder(cfg, ckpt_path)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule: pl.LightningDataModule = _instantiate(cfg.dataset, f"dataset={_choice(cfg, 'dataset')}")
    net = _build_net(cfg, datamodule)
    optimizer = _instantiate(cfg.optim.optimizer, f"optim={_choice(cfg, 'optim')}")
    module: pl.LightningModule = _instantiate(
        cfg.module, "module", net=net, optimizer=optimizer, loss=datamodule.loss, num_outputs=datamodule.num_outputs
    )
    lipschitz = None
    if cfg.optim.get("callback") is not None:
        lipschitz = _instantiate(cfg.optim.callback, f"optim={_choice(cfg, 'optim')}", loss=datamodule.loss)
        try:
            find_head(module, lipschitz.head_name)  # names relative to the LightningModule, as in fit
        except ValueError as exc:
            raise ConfigError(f"optim={_choice(cfg, 'optim')}: {exc}") from exc
    elif OmegaConf.select(cfg, "lr.first_epoch") is not None:
        log.warning(f"lr.first_epoch is ignored: optim={_choice(cfg, 'optim')} does not use LipschitzLR")
    probe_optimizer = _check_optimizer(cfg, optimizer, lipschitz)
    # The settings a resume of this run's checkpoints is checked against (kept in each checkpoint).
    record = checkpoints.ResumeRecord({"optim": OmegaConf.to_container(cfg.optim, resolve=True)})
    checkpoint = None
    if ckpt_path:
        checkpoint = _check_checkpoint(ckpt_path, module, lipschitz, probe_optimizer, datamodule, record,
                                       OmegaConf.select(cfg, "trainer.max_epochs"))
    # Missing or corrupt data fails here, before the trainer, a logger or a checkpoint exists
    # (files fetched by one process per machine, as Lightning does; setup() is not repeated in fit).
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        datamodule.prepare_data()
    datamodule.setup("fit")

    callbacks: List[pl.Callback] = _build_group(cfg, "callbacks") + ([lipschitz] if lipschitz is not None else [])
    callbacks.append(record)
    loggers = _build_group(_logging_of_resume(cfg, checkpoint), "logger")
    trainer: pl.Trainer = _instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)
    if checkpoint is not None:
        _check_datamodule_state(str(ckpt_path), checkpoint, datamodule, world_size=trainer.world_size)
        checkpoint = None  # the weights' copy is not needed in fit (Lightning loads the file itself)
    run_folder.write_deferred_hydra_config(cfg)  # .hydra/ of a resumed run, now that it is accepted
    if loggers and not ckpt_path:
        params: Dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        params["model/params"] = sum(p.numel() for p in module.parameters())
        for logger in loggers:
            logger.log_hyperparams(params)

    metrics: Dict[str, float] = {}
    if cfg.get("train", True):
        with _ctrl_c_stops_after_this_batch():
            # ckpt_path=None: Lightning resumes the folder's own checkpoint (there is none in a new run,
            # see _check_run_folder) or, in a requeued SLURM job, its hpc checkpoint.
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics.update(_as_floats(trainer.callback_metrics))
    if cfg.get("test", True):
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
        test_ckpt = best if cfg.get("train", True) else ckpt_path
        if test_ckpt is None:
            log.info("testing the current weights (no best checkpoint)")
        trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=True)
        metrics.update(_as_floats(trainer.callback_metrics))
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v) or k.startswith("lipschitz/")}
    _report(metrics, trainer, test_ckpt if cfg.get("test", True) else None)
    return metrics


def _as_floats(metrics: Dict[str, Any]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _build_group(cfg: DictConfig, group: str) -> List[Any]:
    """Instantiate every entry of ``cfg.<group>`` that names a ``_target_``. An entry without one
    only tunes a callback that another option adds (e.g. a sweep-wide
    ``++callbacks.lr_find_cosine.num_training_steps=30`` in a run of another optim): it is logged
    and left out, since there is nothing to build."""
    built = []
    for name, node in (cfg.get(group) or {}).items():
        if isinstance(node, DictConfig) and "_target_" in node:
            built.append(_instantiate(node, f"{group}.{name}"))
        elif node is not None:
            log.info(f"{group}.{name} has no _target_ in this run (no option adds it): left out")
    return built


# Ctrl-C during fit: finish the batch, write the checkpoint, stop (lipschitz_lightning.app.signals).
_ctrl_c_stops_after_this_batch = signals.CtrlCStopsAfterThisBatch


@rank_zero_only
def _tested_weights(test_ckpt: Optional[str], trainer: pl.Trainer) -> str:
    """Which weights the test ran on: ``epoch 3 of 20, the lowest val/loss`` or ``the current weights``."""
    if not test_ckpt:
        return "the current weights"
    try:
        epoch = checkpoints.inspect(test_ckpt).epoch + 1
    except Exception:  # noqa: BLE001 - the test itself has read the file; only the label is lost
        return Path(test_ckpt).name
    chosen = trainer.checkpoint_callback
    monitor = getattr(chosen, "monitor", None)
    if monitor and os.path.abspath(test_ckpt) == os.path.abspath(getattr(chosen, "best_model_path", "") or ""):
        best = "lowest" if getattr(chosen, "mode", "min") == "min" else "highest"
        return f"the weights of epoch {epoch} of {trainer.current_epoch}, the {best} {monitor}"
    return f"the weights of epoch {epoch} ({Path(test_ckpt).name})"


def _report(metrics: Dict[str, float], trainer: pl.Trainer, test_ckpt: Optional[str] = None) -> None:
    """The last lines of a run: the test result, the weights it was measured on, and where to look."""
    if "test/acc" in metrics:
        log.info(f"test accuracy: {metrics['test/acc']:.4f} ({_tested_weights(test_ckpt, trainer)})")
    elif "test/loss" in metrics:
        log.info(f"test loss: {metrics['test/loss']:.6g} ({_tested_weights(test_ckpt, trainer)})")
    for logger in trainer.loggers:
        if isinstance(logger, pl.loggers.TensorBoardLogger):
            log.info(f"TensorBoard logs: {logger.log_dir}  (tensorboard --logdir {logger.log_dir})")
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.dirpath:
        log.info(f"checkpoints: {checkpoint.dirpath}")


# --------------------------------------------------------------------------- entry point


def _resume_command(cfg: DictConfig) -> str:
    """The command line that continues this run: its own overrides, plus resume=<its folder>."""
    run_dir = str(OmegaConf.select(cfg, "paths.output_dir"))
    overrides = []
    if HydraConfig.initialized():
        overrides = [o for o in HydraConfig.get().overrides.task
                     if not o.split("=", 1)[0].lstrip("+~") in ("resume", "ckpt_path", "hydra.run.dir")]
    return shlex.join([sys.executable, "-m", "lipschitz_lightning.train", *overrides, f"resume={run_dir}"])


def _stop_line(cfg: DictConfig, exc: BaseException) -> Optional[tuple]:
    """``(line, exit status, how)`` when a stop signal ended the run (SIGTERM, Ctrl-C once or twice)."""
    if isinstance(exc, SIGTERMException):
        how = "Ctrl-C" if _ctrl_c_stops_after_this_batch.received else "SIGTERM"
        return (f"stopped by {how}; checkpoint written; resume with: {_resume_command(cfg)}",
                signals.stop_status(how == "Ctrl-C"), how)
    # Lightning turns a KeyboardInterrupt during fit (a second Ctrl-C) into sys.exit(1).
    if isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit) and exc.code == 1):
        return f"interrupted; resume with: {_resume_command(cfg)}", signals.stop_status(True), "Ctrl-C"
    return None


def _failure_line(cfg: DictConfig, exc: BaseException) -> Optional[tuple]:
    """``(line, exit status)`` for a failure that is the user's to act on; None for a bug."""
    stop = _stop_line(cfg, exc)
    if stop is not None:
        return stop[:2]
    if isinstance(exc, (ConfigError, *USER_ERRORS)):
        return f"error: {exc}", 2
    peer = signals.peer_failure(exc)
    if peer is not None:
        timeout = OmegaConf.select(cfg, "trainer.strategy.timeout.seconds", default=None)
        return signals.peer_failure_line(peer, timeout, _resume_command(cfg)), 1
    return None


def _blocked_stop_line(cfg: DictConfig, resume: str) -> Any:
    """The line of a DDP rank that a stop signal found blocked on a peer (see signals.StopWatch)."""
    def line(how: str) -> str:
        return (f"stopped by {how} while DDP rank {signals.rank()} waited for a peer that stopped answering; "
                f"no checkpoint of this step; resume with: {resume}")
    return line


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == hydra.types.RunMode.MULTIRUN


@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> Optional[float]:
    """Hydra entry point: run :func:`train`; a user's failure is one line and a non-zero status.

    In a multirun the failure is raised for Hydra to record (the sweep goes on; see
    :class:`ReportFailedJobs`); a single run exits with the status. A stop signal ends the
    multirun: the job that got it writes its checkpoint and the jobs after it do not run.
    """
    if _in_multirun() and signals.sweep.stopped_by:
        raise JobNotRun(f"not run: the multirun was stopped by {signals.sweep.stopped_by}")
    try:
        with signals.StopWatch(_blocked_stop_line(cfg, _resume_command(cfg))):
            metrics = train(cfg)
    except BaseException as exc:  # noqa: B036 - SIGTERM arrives as SystemExit
        failure = _failure_line(cfg, exc)
        if failure is None:
            raise
        line, status = failure
        if signals.peer_failure(exc) is not None:
            signals.kill_children()  # the ranks Lightning started: a frozen one would stay
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        if _in_multirun():
            stop = _stop_line(cfg, exc)
            if stop is not None:
                signals.sweep.stop(stop[2], status)
                raise JobStopped(f"{status}\n{line}") from None
            raise JobFailed(line) from None
        sys.exit(status)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


class JobFailed(RuntimeError):
    """One job of a multirun failed; its line was printed."""


class JobStopped(RuntimeError):
    """A stop signal ended this job of a multirun, and the multirun (``"<status>\\n<line>"``)."""


class JobNotRun(RuntimeError):
    """A job of a multirun after the one a stop signal ended: not run."""


class ReportFailedJobs(HydraCallback):
    """A multirun goes on past a failing job and lists the failed ones at the end (exit status 2).

    Each failed job leaves ``<job dir>/FAILED`` with its line (launchers may run jobs in other
    processes); the job is recorded as done so that Hydra's sweeper starts the next one.

    A stop signal (SIGTERM, Ctrl-C) ends the multirun instead: the job that got it leaves
    ``STOPPED`` (its checkpoint is written), the jobs after it are not run (``NOT_RUN``), and the
    end lists them by their overrides, with the stop's status (143 for SIGTERM, 130 for Ctrl-C).
    """

    MARKERS = {"JobFailed": "FAILED", "JobStopped": "STOPPED", "JobNotRun": "NOT_RUN"}

    def __init__(self) -> None:
        self.sweep_dir: Optional[Path] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED or not HydraConfig.get().mode == hydra.types.RunMode.MULTIRUN:
            return
        # Read as a completed job's value: a failed job's value is its exception, raised (and
        # announced as "Error executing job") by the getter; kept for failures, not for stops.
        job_return.status = JobStatus.COMPLETED
        error = job_return.return_value
        # By name: under `python -m` the job raises __main__.JobFailed, not this module's class.
        name = type(error).__name__
        marker = self.MARKERS.get(name, "FAILED")
        if marker == "FAILED":
            job_return.status = JobStatus.FAILED
            try:
                job_return.return_value
            except Exception as failure:  # noqa: BLE001 - any job failure is listed
                error = failure
        line = str(error) if name in self.MARKERS else f"{type(error).__name__}: {error}"
        Path(HydraConfig.get().runtime.output_dir, marker).write_text(
            f"{shlex.join(job_return.overrides or [])}\n{line}\n")
        job_return.status = JobStatus.COMPLETED
        job_return.return_value = None

    def _jobs(self, marker: str) -> List[tuple]:
        """``(job number, what the sweep varied for it, rest of the marker)`` of every job with ``marker``."""
        assert self.sweep_dir is not None
        found = sorted(self.sweep_dir.glob(f"*/{marker}"), key=lambda f: (len(f.parent.name), f.parent.name))
        # Name each job by what the sweep varied (the overrides not shared by every job).
        every = [set(OmegaConf.load(f)) for f in self.sweep_dir.glob("*/.hydra/overrides.yaml")]
        shared = set.intersection(*every) if every else set()
        jobs = []
        for path in found:
            overrides, *rest = path.read_text().splitlines() or [""]
            varied = " ".join(o for o in shlex.split(overrides) if o not in shared) or overrides
            jobs.append((path.parent.name, varied, rest))
        return jobs

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.sweep_dir is None:
            return
        failed, stopped, not_run = (self._jobs(m) for m in ("FAILED", "STOPPED", "NOT_RUN"))
        if failed:
            sys.stderr.write(f"{len(failed)} job(s) of the multirun failed:\n")
            for job, varied, rest in failed:
                sys.stderr.write(f"  job {job} ({varied}): {(rest + [''])[0]}\n")
        if stopped:
            job, varied, rest = stopped[0]
            status = int(rest[0]) if rest and rest[0].isdigit() else 143
            how = signals.sweep.stopped_by or ("Ctrl-C" if status == 130 else "SIGTERM")
            sys.stderr.write(f"the multirun was stopped by {how} in job {job} ({varied}); "
                             f"{len(not_run)} job(s) did not run:\n")
            for job, varied, _ in not_run:
                sys.stderr.write(f"  job {job}: {varied}\n")
            sys.stderr.flush()
            sys.exit(status)
        sys.stderr.flush()
        if failed:
            sys.exit(2)


if __name__ == "__main__":
    main()
