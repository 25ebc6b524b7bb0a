"""The checks of ``python -m lipschitz_lightning.train`` before anything trains or is written.

Each component checks its own inputs (the datamodule its batch size and seed, the callback its
head and optimizer, each one whether a checkpoint fits it); this module calls those checks at
the earliest point that can run them and turns their ``ValueError`` into a one-line
:class:`ConfigError`, named by the config key the user set. What it checks itself is the app's
own input: the run's top-level numbers, the run folder, the checkpoint file, and the network
built for the dataset.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, Optional

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lipschitz_lightning.app import checkpoints, run_folder
from lipschitz_lightning.callbacks import LipschitzLR, LipschitzLRError, NonFiniteError, check_optimizer, find_head
from lipschitz_lightning.data import DatasetCorruptError, DatasetNotFoundError
from lipschitz_lightning.data.base import SettingError

__all__ = ["ConfigError", "USER_ERRORS", "VALUE_CHECKS", "build_net", "check_checkpoint", "check_head",
           "check_optimizer_fits", "check_run_folder", "check_values", "choice", "instantiate", "resume_path"]

log = logging.getLogger(__name__)

# Failures that are the user's to fix: main() prints their message as one line (exit status 2).
USER_ERRORS = (LipschitzLRError, DatasetNotFoundError, DatasetCorruptError, NonFiniteError, checkpoints.CheckpointSaveError)


class ConfigError(ValueError):
    """A configuration that cannot train, found before training starts (one-line message)."""


def choice(cfg: DictConfig, group: str) -> str:
    """The option chosen for ``group`` (``model=densenet40`` -> ``densenet40``) for messages."""
    if HydraConfig.initialized():
        chosen = HydraConfig.get().runtime.choices.get(group)
        if chosen:
            return str(chosen)
    node = cfg.get(group)
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return str(target).rsplit(".", 1)[-1] if target else group


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# The run's own top-level numbers, checked once, before anything is built: (key, test, what it must
# be). The datamodule's (batch size, seed) are its own to check: see DATAMODULE_SETTINGS.
VALUE_CHECKS = (
    ("trainer.max_epochs", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
    ("weight_decay", lambda v: _is_number(v) and v >= 0, "a non-negative number"),
    ("lr.first_epoch", lambda v: v is None or (_is_number(v) and v > 0), "a positive number or null"),
)

# A datamodule argument it refused (data.base.SettingError) -> (its config key, what it must be).
# The seed is the run's top-level ``seed`` (``dataset.seed: ${seed}``; null: no seed_everything).
DATAMODULE_SETTINGS = {
    "batch_size": ("dataset.batch_size", "a positive integer"),
    "seed": ("seed", "an integer from 0 to 4294967295 or null"),  # numpy's range, as seed_everything checks
}


def check_values(cfg: DictConfig) -> None:
    absent = object()
    for key, valid, must_be in VALUE_CHECKS:
        value = OmegaConf.select(cfg, key, default=absent)
        if value is not absent and not valid(value):
            raise ConfigError(f"{key} must be {must_be}; got {value!r}")


def _setting_error(cfg: DictConfig, error: SettingError) -> Optional[ConfigError]:
    """The one line of a datamodule's refused argument, by the config key the user set."""
    if error.setting not in DATAMODULE_SETTINGS or error.value is None:
        return None
    key, must_be = DATAMODULE_SETTINGS[error.setting]
    if key == "seed" and cfg.get("seed") != error.value:
        key = "dataset.seed"  # set apart from the run's seed
    return ConfigError(f"{key} must be {must_be}; got {error.value!r}")


def instantiate(node: Any, what: str, cfg: Optional[DictConfig] = None, **kwargs: Any) -> Any:
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
        if isinstance(cause, SettingError) and cfg is not None:
            named = _setting_error(cfg, cause)
            if named is not None:
                raise named from exc
        if isinstance(cause, (ValueError, TypeError, ImportError)):
            raise ConfigError(f"{what}: {cause}") from exc
        if isinstance(cause, hydra.errors.InstantiationException):
            raise ConfigError(f"{what}: {str(cause).splitlines()[0]}") from exc
        raise


# --------------------------------------------------------------------------- the network


def _model_class(cfg: DictConfig, where: str) -> Any:
    target = cfg.model.get("_target_")
    try:
        return hydra.utils.get_class(target) if target else None
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"model {choice(cfg, 'model')!r}: cannot import {target!r}") from exc


def _check_model_class(cls: Any, datamodule: pl.LightningDataModule, where: str) -> None:
    """What the model class says it needs (a loss, a smallest batch), before it is built."""
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


def build_net(cfg: DictConfig, datamodule: pl.LightningDataModule) -> torch.nn.Module:
    """Instantiate ``cfg.model`` for the datamodule's input shape and head size, and check it fits."""
    model_name, dataset_name = choice(cfg, "model"), choice(cfg, "dataset")
    where = f"model {model_name!r} on dataset {dataset_name!r}"
    _check_model_class(_model_class(cfg, where), datamodule, where)
    input_shape = tuple(datamodule.input_shape)
    net = instantiate(cfg.model, where, input_shape=input_shape, num_outputs=datamodule.num_outputs)
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


# --------------------------------------------------------------------------- the callback and the optimizer


def check_head(cfg: DictConfig, module: pl.LightningModule, lipschitz: Any) -> None:
    """The callback's own head lookup (it repeats it in ``setup``), run now on the built module:
    names relative to the LightningModule, as in fit."""
    try:
        find_head(module, lipschitz.head_name)
    except ValueError as exc:
        raise ConfigError(f"optim={choice(cfg, 'optim')}: {exc}") from exc


def check_optimizer_fits(cfg: DictConfig, optimizer: Any, lipschitz: Any) -> None:
    """Build the optimizer once on a stand-in parameter: its arguments' types and values, and
    (the callback's own check, repeated in its ``on_fit_start``) whether it fits the rule."""
    what = f"optim={choice(cfg, 'optim')}"
    try:
        probe = optimizer(params=[torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{what}: {exc} (check optim.optimizer.* and weight_decay)") from exc
    if lipschitz is not None:
        try:
            check_optimizer(lipschitz.rule, probe)
            lipschitz.polyak.check(probe)
        except ValueError as exc:
            raise ConfigError(f"{what}: {exc}") from exc


# --------------------------------------------------------------------------- checkpoints


def _load_checkpoint(path: str) -> Dict[str, Any]:
    """The checkpoint exists, holds plain data only (``weights_only=True``: no code in it runs) and
    is a Lightning training checkpoint."""
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
    return checkpoint


def _check_rule(path: str, checkpoint: Dict[str, Any], lipschitz: Any) -> None:
    """The LipschitzLR rule the checkpoint was trained with is this run's (also when this run has
    no LipschitzLR: the callback's class says which rules a checkpoint holds). Rules are compared
    by their registry names, so a checkpoint of ``adam`` resumes as ``auto_adam``."""
    rules = LipschitzLR.rules_of(checkpoint)
    rule = lipschitz.rule if lipschitz is not None else None
    if rules and rule not in rules or (rule is not None and not rules):
        raise ConfigError(f"ckpt_path: {path} was trained with LipschitzLR rule {sorted(rules) or 'none'}, "
                          f"this run uses {rule or 'no LipschitzLR'}; pass the run's own optim=")


def check_datamodule(path: str, checkpoint: Dict[str, Any], datamodule: pl.LightningDataModule,
                     world_size: Optional[int] = None) -> None:
    """Ask the datamodule whether the checkpoint's data state continues in this run (seed, batch
    size, process count: :meth:`BaseDataModule.check_checkpoint`)."""
    check = getattr(datamodule, "check_checkpoint", None)
    if check is None:
        return
    try:
        check(checkpoint, world_size=world_size)
    except ValueError as exc:
        raise ConfigError(f"ckpt_path: {path}: {exc}") from None


def check_checkpoint(path: str, module: pl.LightningModule, lipschitz: Any, datamodule: pl.LightningDataModule,
                     record: checkpoints.ResumeRecord, max_epochs: Any = None) -> Dict[str, Any]:
    """The checkpoint is a Lightning training checkpoint that fits this run, as each component
    says: the LipschitzLR rule, the module (network and optimizer: its ``check_resume``), the optim
    option's settings (:class:`checkpoints.ResumeRecord`), the datamodule (seed, batch size), and
    ``max_epochs`` (not fewer than the checkpoint has trained). Returns the loaded checkpoint."""
    checkpoint = _load_checkpoint(path)
    _check_rule(path, checkpoint, lipschitz)
    check = getattr(module, "check_resume", None)
    if check is not None:
        try:
            check(checkpoint)
        except ValueError as exc:
            raise ConfigError(f"ckpt_path: {path} {exc}") from None
    try:
        record.check(checkpoints.ResumeRecord.find(checkpoint))
    except ValueError as exc:
        raise ConfigError(f"ckpt_path: {path}: {exc}; pass the run's own optim= and its overrides") from None
    check_datamodule(path, checkpoint, datamodule)
    info = checkpoints.info_of(path, checkpoint)
    if isinstance(max_epochs, int) and not isinstance(max_epochs, bool) and 0 <= max_epochs < info.epochs_needed:
        raise ConfigError(f"ckpt_path: {path} has trained {info.epochs_needed} epoch(s) "
                          f"({info.describe()}); this run has epochs={max_epochs}: resume with "
                          f"epochs={info.epochs_needed} or more")
    return checkpoint


def resume_path(cfg: DictConfig) -> Optional[str]:
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


def check_run_folder(cfg: DictConfig, ckpt_path: Optional[str]) -> None:
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
