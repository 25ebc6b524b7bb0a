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
Hydra wrapper; the application's parts are in :mod:`lipschitz_lightning.app`: the checks before
anything trains (``preflight``), the run folder (``run_folder``), the one line and exit status of a
failure (``exits``), the multirun's callback (``hydra_callbacks``), signals and checkpoints.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

if __name__ == "__main__":  # without the [app] extra: one line naming it, exit status 2, no traceback
    from lipschitz_lightning.app.cli import require_app

    require_app("python -m lipschitz_lightning.train")

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only

from lipschitz_lightning.app import help as _help  # noqa: F401 - registers --help's training_groups resolver
from lipschitz_lightning.app import checkpoints, exits, preflight, run_folder, signals
from lipschitz_lightning.app.hydra_callbacks import JobFailed, JobNotRun, JobStopped  # noqa: F401
from lipschitz_lightning.app.noise import NOISE_WARNINGS
from lipschitz_lightning.app.preflight import USER_ERRORS, ConfigError, choice, instantiate  # noqa: F401
from lipschitz_lightning.configs import config_dir

__all__ = ["ConfigError", "main", "train"]

log = logging.getLogger(__name__)

# Names kept where tests and user code import them from here (their homes are in app/).
new_run_dir = run_folder.new_run_dir


# --------------------------------------------------------------------------- check and build


def _check(cfg: DictConfig) -> Optional[str]:
    """The run's own values, the checkpoint to continue (if any) and the run folder."""
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    preflight.check_values(cfg)
    ckpt_path = preflight.resume_path(cfg)
    preflight.check_run_folder(cfg, ckpt_path)
    return ckpt_path


def _build_parts(cfg: DictConfig) -> Tuple[pl.LightningDataModule, pl.LightningModule, Any]:
    """Datamodule, module and LipschitzLR callback (None without one), each checked as it is built."""
    optim = f"optim={choice(cfg, 'optim')}"
    datamodule: pl.LightningDataModule = instantiate(cfg.dataset, f"dataset={choice(cfg, 'dataset')}", cfg)
    if cfg.get("seed") is not None:  # the datamodule has checked it (dataset.seed: ${seed})
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
    net = preflight.build_net(cfg, datamodule)
    optimizer = instantiate(cfg.optim.optimizer, optim)
    module: pl.LightningModule = instantiate(
        cfg.module, "module", net=net, optimizer=optimizer, loss=datamodule.loss, num_outputs=datamodule.num_outputs
    )
    lipschitz = None
    if cfg.optim.get("callback") is not None:
        lipschitz = instantiate(cfg.optim.callback, optim, loss=datamodule.loss)
        preflight.check_head(cfg, module, lipschitz)
    elif OmegaConf.select(cfg, "lr.first_epoch") is not None:
        log.warning(f"lr.first_epoch is ignored: {optim} does not use LipschitzLR")
    preflight.check_optimizer_fits(cfg, optimizer, lipschitz)
    return datamodule, module, lipschitz


def _build_group(cfg: DictConfig, group: str) -> List[Any]:
    """Instantiate every entry of ``cfg.<group>`` that names a ``_target_``. An entry without one
    only tunes a callback that another option adds (e.g. a sweep-wide
    ``++callbacks.lr_find_cosine.num_training_steps=30`` in a run of another optim): it is logged
    and left out, since there is nothing to build."""
    built = []
    for name, node in (cfg.get(group) or {}).items():
        if isinstance(node, DictConfig) and "_target_" in node:
            built.append(instantiate(node, f"{group}.{name}"))
        elif node is not None:
            log.info(f"{group}.{name} has no _target_ in this run (no option adds it): left out")
    return built


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


def _build_trainer(cfg: DictConfig, parts: tuple, ckpt_path: Optional[str]) -> pl.Trainer:
    """Check the checkpoint against each part, fetch the data, then the callbacks, loggers, trainer.
    Missing or corrupt data fails here, before the trainer, a logger or a checkpoint exists (files
    fetched by one process per machine, as Lightning does; setup() is not repeated in fit)."""
    datamodule, module, lipschitz = parts
    # The settings a resume of this run's checkpoints is checked against (kept in each checkpoint).
    record = checkpoints.ResumeRecord({"optim": OmegaConf.to_container(cfg.optim, resolve=True)})
    checkpoint = None
    if ckpt_path:
        checkpoint = preflight.check_checkpoint(ckpt_path, module, lipschitz, datamodule, record,
                                                OmegaConf.select(cfg, "trainer.max_epochs"))
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        datamodule.prepare_data()
    datamodule.setup("fit")
    callbacks: List[pl.Callback] = _build_group(cfg, "callbacks") + ([lipschitz] if lipschitz is not None else [])
    callbacks.append(record)
    loggers = _build_group(_logging_of_resume(cfg, checkpoint), "logger")
    trainer: pl.Trainer = instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)
    if checkpoint is not None:  # the process count is known now
        preflight.check_datamodule(str(ckpt_path), checkpoint, datamodule, world_size=trainer.world_size)
    run_folder.accept(cfg)  # kept from here on; .hydra/ of a resumed run, now that it is accepted
    if loggers and not ckpt_path:
        params: Dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        params["model/params"] = sum(p.numel() for p in module.parameters())
        for logger in loggers:
            logger.log_hyperparams(params)
    return trainer


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
    ckpt_path = _check(cfg)
    datamodule, module, lipschitz = parts = _build_parts(cfg)
    trainer = _build_trainer(cfg, parts, ckpt_path)
    metrics: Dict[str, float] = {}
    if cfg.get("train", True):
        with signals.CtrlCStopsAfterThisBatch():
            # ckpt_path=None: Lightning resumes the folder's own checkpoint (there is none in a new run,
            # see preflight.check_run_folder) or, in a requeued SLURM job, its hpc checkpoint.
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics.update(_as_floats(trainer.callback_metrics))
    test_ckpt = None
    if cfg.get("test", True):
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
        test_ckpt = best if cfg.get("train", True) else ckpt_path
        if test_ckpt is None:
            log.info("testing the current weights (no best checkpoint)")
        trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=True)
        metrics.update(_as_floats(trainer.callback_metrics))
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v) or k.startswith("lipschitz/")}
    _report(metrics, trainer, test_ckpt)
    return metrics


def _as_floats(metrics: Dict[str, Any]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


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


@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> Optional[float]:
    """Hydra entry point: run :func:`train`; a user's failure is one line and a non-zero status
    (:func:`lipschitz_lightning.app.exits.run_or_exit`)."""
    metrics = exits.run_or_exit(train, cfg)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


if __name__ == "__main__":
    main()
