"""TensorBoard run names: a multirun job is named by its swept overrides instead of its number.

``conf/logger/tensorboard.yaml`` asks :func:`tensorboard_version` for the logger's ``version``
(the folder below ``<run dir>/tensorboard/``). A single run keeps its events straight in
``tensorboard/`` (``version=""``); job 1 of ``--multirun optim=sgd,adamo`` writes them into
``multiruns/<ts>/1/tensorboard/optim=adamo/``, so TensorBoard lists it as ``.../1/tensorboard/optim=adamo``.
A run that resumes into a folder that already has events (``resume=<job folder>``) keeps
writing into the same TensorBoard run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional, Set

__all__ = ["job_name", "tensorboard_version"]

# Keys that say where things are or how to resume, not what the run is.
_NOT_A_NAME = ("hydra.", "paths.", "resume", "ckpt_path")
_MAX_LENGTH = 200  # a folder name; file systems allow 255 bytes


def _existing_version(save_dir: Path) -> Optional[str]:
    """The TensorBoard run already in ``save_dir`` (a resumed run's), or None for a new one."""
    if not save_dir.is_dir():
        return None
    if any(save_dir.glob("events.out.tfevents.*")):
        return ""
    folders = sorted({f.parent.name for f in save_dir.glob("*/events.out.tfevents.*")})
    return folders[0] if len(folders) == 1 else None


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _swept_keys(sweep_dir: Path, sweeper_params: Iterable[str]) -> Set[str]:
    """The keys a multirun varies: the sweeper's ``params`` and the command line's sweeps
    (``optim=sgd,adamo``, ``lr.first_epoch=range(...)``), which Hydra's basic sweeper keeps in
    ``<sweep dir>/multirun.yaml`` (read there, not in ``sys.argv``: any launcher starts the job)."""
    keys = set(map(str, sweeper_params))
    saved = sweep_dir / "multirun.yaml"
    if saved.is_file():
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        original = OmegaConf.select(OmegaConf.load(saved), "hydra.overrides.task", default=None) or []
        parsed = OverridesParser.create().parse_overrides([str(o) for o in original])
        keys |= {o.key_or_group for o in parsed if o.is_sweep_override()}
    return keys


def job_name(overrides: Iterable[str], swept: Set[str]) -> str:
    """A job's name from its overrides: those of the ``swept`` keys (``optim=adamo,lr.first_epoch=0.5``);
    without any, every override that is not a path (``hydra.*``, ``paths.*``, resume); ``""`` if none."""
    own: List[str] = [str(o) for o in overrides]
    chosen = [o for o in own if _key(o) in swept] or [o for o in own if not _key(o).startswith(_NOT_A_NAME)]
    name = ",".join(chosen).replace("/", "_").replace("\\", "_")
    return name[:_MAX_LENGTH]


def tensorboard_version(save_dir: str) -> str:
    """The TensorBoard logger's ``version`` for this job: see the module's docstring."""
    existing = _existing_version(Path(save_dir))
    if existing is not None:
        return existing
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return ""
    if not HydraConfig.initialized():
        return ""
    config = HydraConfig.get()
    if config.mode != RunMode.MULTIRUN:
        return ""
    params = config.sweeper.get("params") or {}
    name = job_name(config.overrides.task, _swept_keys(Path(config.sweep.dir), params.keys()))
    return name or str(config.job.num)
