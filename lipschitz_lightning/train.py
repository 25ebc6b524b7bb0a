"""Train a classifier with a LipschitzLR learning rate (or a baseline optimizer) from Hydra configs.

Single device (the paper's headline run: CIFAR-10, ResNet20, adaptive SGD)::

    python -m lipschitz_lightning.train
    python -m lipschitz_lightning.train model=densenet40 optim=adamo lr.first_epoch=0.5
    python -m lipschitz_lightning.train experiment=cifar10_densenet40_momentum_adaptive

Several devices (the rate is the same for any device count at the same effective batch)::

    python -m lipschitz_lightning.train trainer=ddp trainer.devices=4 dataset.batch_size=32

Sweep::

    python -m lipschitz_lightning.train --multirun optim=sgd,adamo,auto_adam

The configs are the repository's ``conf/`` folder (``conf/train.yaml`` is the root), shipped in
the wheel as ``lipschitz_lightning/conf`` (:func:`lipschitz_lightning.configs.config_dir`). ``train(cfg)``
is a plain function (build, fit, test, return the metrics); ``main`` is the Hydra wrapper that
turns a :class:`ConfigError` into one ``error: ...`` line and exit status 2.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from typing import Any, Dict, List, Optional, Tuple

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from lipschitz_lightning.callbacks import LipschitzLR, LipschitzLRError, check_optimizer, find_head
from lipschitz_lightning.configs import config_dir
from lipschitz_lightning.modules import SupervisedModule

__all__ = ["ConfigError", "main", "train"]

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration that cannot train, found before training starts (one-line message)."""


def _data_errors() -> Tuple[type, ...]:
    """The datamodules' missing-data and corrupt-file exceptions (their messages are one line)."""
    from lipschitz_lightning.data import DatasetCorruptError, DatasetNotFoundError

    return DatasetNotFoundError, DatasetCorruptError


# --------------------------------------------------------------------------- config helpers


def _choice(cfg: DictConfig, group: str) -> str:
    """The option chosen for ``group`` (``model=densenet40`` -> ``densenet40``) for messages."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return str(choice)
    node = cfg.get(group)
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return str(target).rsplit(".", 1)[-1] if target else group


def _root_cause(exc: BaseException) -> BaseException:
    """Unwrap Hydra's InstantiationException to the exception the target raised."""
    while isinstance(exc, hydra.errors.InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _instantiate(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that turns a ValueError/TypeError of the target into a ConfigError."""
    try:
        # _convert_="all": plain lists and dicts reach the targets (and the checkpoints), not OmegaConf nodes.
        return hydra.utils.instantiate(node, _convert_="all", **kwargs)
    except hydra.errors.InstantiationException as exc:
        cause = _root_cause(exc)
        if isinstance(cause, _data_errors()):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(f"{what}: {cause}") from exc
        raise


def _check_positive(cfg: DictConfig) -> None:
    epochs = OmegaConf.select(cfg, "trainer.max_epochs")
    if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs <= 0):
        raise ConfigError(f"trainer.max_epochs must be a positive integer; got {epochs!r}")
    batch_size = OmegaConf.select(cfg, "dataset.batch_size")
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0):
        raise ConfigError(f"dataset.batch_size must be a positive integer; got {batch_size!r}")


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
    input_shape = tuple(datamodule.input_shape)
    net = _instantiate(cfg.model, where, input_shape=input_shape, num_outputs=datamodule.num_outputs)
    # One tiny forward pass catches shape mismatches that only show in forward().
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, *input_shape))
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"{where}: input of shape {input_shape} does not fit the model ({exc})") from exc
    finally:
        net.train(was_training)
    if tuple(out.shape) != (2, datamodule.num_outputs):
        raise ConfigError(
            f"{where}: the model outputs shape {tuple(out.shape[1:])} per sample, "
            f"the dataset needs ({datamodule.num_outputs},)"
        )
    return net


def _build_callbacks(cfg: DictConfig) -> List[pl.Callback]:
    callbacks: List[pl.Callback] = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if isinstance(node, DictConfig) and "_target_" in node:
            callbacks.append(_instantiate(node, f"callbacks.{name}"))
    return callbacks


def _build_loggers(cfg: DictConfig) -> List[Any]:
    loggers: List[Any] = []
    for name, node in (cfg.get("logger") or {}).items():
        if isinstance(node, DictConfig) and "_target_" in node:
            loggers.append(_instantiate(node, f"logger.{name}"))
    return loggers


def _build_lipschitz(
    cfg: DictConfig, datamodule: pl.LightningDataModule, module: pl.LightningModule, optimizer: Any
) -> Optional[LipschitzLR]:
    """The optim option's LipschitzLR callback, checked against the optimizer before training."""
    node = cfg.optim.get("callback")
    first_epoch = OmegaConf.select(cfg, "lr.first_epoch")
    if node is None:
        if first_epoch is not None:
            warnings.warn(
                f"lr.first_epoch={first_epoch} is ignored: optim={_choice(cfg, 'optim')} does not use LipschitzLR",
                stacklevel=2,
            )
        return None
    callback = _instantiate(node, f"optim={_choice(cfg, 'optim')}", loss=datamodule.loss)
    try:
        # Head names are relative to the LightningModule, as the callback resolves them in fit.
        find_head(module, callback.head_name)
        # A throwaway optimizer on the module's parameters: same class and param-group values.
        check_optimizer(callback.rule, optimizer(params=module.parameters()))
    except ValueError as exc:
        raise ConfigError(f"optim={_choice(cfg, 'optim')}: {exc}") from exc
    return callback


def _log_hyperparameters(cfg: DictConfig, loggers: List[Any], module: pl.LightningModule) -> None:
    if not loggers:
        return
    params: Dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    params["model/params"] = sum(p.numel() for p in module.parameters())
    for logger in loggers:
        logger.log_hyperparams(params)


def _as_floats(metrics: Dict[str, Any]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


# --------------------------------------------------------------------------- train


def train(cfg: DictConfig) -> Dict[str, float]:
    """Build datamodule, module, callbacks, loggers and trainer from ``cfg``; fit; test.

    Args:
        cfg: the composed ``conf/train.yaml`` (or any config with the same keys).

    Returns:
        The final metrics as floats: the fit's last-epoch values (``train/*``, ``val/*``,
        ``lipschitz/*``) and the test set's (``test/*``), so sweepers can optimise any of them.

    Raises:
        ConfigError: a configuration that cannot train, found before training starts.
        DatasetNotFoundError: the dataset's files are missing (the message says where to put them).
        DatasetCorruptError: a dataset file fails its checksum (the message names it).
        LipschitzLRError: LipschitzLR has no usable first rate (raised before the first step).
    """
    _check_positive(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    datamodule: pl.LightningDataModule = _instantiate(cfg.dataset, f"dataset={_choice(cfg, 'dataset')}")
    if getattr(datamodule, "batch_size", 1) is not None and datamodule.batch_size <= 0:
        raise ConfigError(f"dataset.batch_size must be a positive integer; got {datamodule.batch_size!r}")
    net = _build_net(cfg, datamodule)
    optimizer = _instantiate(cfg.optim.optimizer, f"optim={_choice(cfg, 'optim')}")
    module = SupervisedModule(net=net, optimizer=optimizer, loss=datamodule.loss, num_outputs=datamodule.num_outputs,
                              compile=cfg.get("compile", False), channels_last=cfg.get("channels_last", False))
    lipschitz = _build_lipschitz(cfg, datamodule, module, optimizer)

    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        # Missing data fails here, before any trainer state (or on-exception checkpoint) exists.
        # One process per machine, as Lightning does; DDP processes launched later find the files.
        datamodule.prepare_data()

    callbacks = _build_callbacks(cfg)
    if lipschitz is not None:
        callbacks.append(lipschitz)
    loggers = _build_loggers(cfg)
    trainer: pl.Trainer = _instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)
    _log_hyperparameters(cfg, loggers, module)

    metrics: Dict[str, float] = {}
    if cfg.get("train", True):
        with warnings.catch_warnings():
            # With OnExceptionCheckpoint, ckpt_path=None means "resume from this run's last or
            # on-exception checkpoint if there is one": say nothing when there is none (a new run).
            warnings.filterwarnings("ignore", message=r".*\.fit\(ckpt_path=None\)` was called without a model")
            warnings.filterwarnings("ignore", message=r'.*\.fit\(ckpt_path="last"\) is set, but there is no last')
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics.update(_as_floats(trainer.callback_metrics))
    if cfg.get("test", True):
        checkpoint = trainer.checkpoint_callback
        ckpt_path = getattr(checkpoint, "best_model_path", "") or None
        if not cfg.get("train", True):
            ckpt_path = cfg.get("ckpt_path")
        if ckpt_path is None:
            log.info("testing the current weights (no best checkpoint)")
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics.update(_as_floats(trainer.callback_metrics))
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v) or k.startswith("lipschitz/")}
    _report(metrics, trainer)
    return metrics


@rank_zero_only
def _report(metrics: Dict[str, float], trainer: pl.Trainer) -> None:
    """The last lines of a run: the test result and where to look."""
    if "test/acc" in metrics:
        log.info(f"test accuracy: {metrics['test/acc']:.4f}")
    elif "test/loss" in metrics:
        log.info(f"test loss: {metrics['test/loss']:.6g}")
    for logger in trainer.loggers:
        if isinstance(logger, pl.loggers.TensorBoardLogger):
            log.info(f"TensorBoard logs: {logger.log_dir}  (tensorboard --logdir {logger.log_dir})")
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.dirpath:
        log.info(f"checkpoints: {checkpoint.dirpath}  (resume with ckpt_path=<dir>/last.ckpt)")


@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> Optional[float]:
    """Hydra entry point: run :func:`train`, print a bad configuration as one line (exit 2)."""
    try:
        metrics = train(cfg)
    except (ConfigError, LipschitzLRError, *_data_errors()) as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


if __name__ == "__main__":
    main()
