"""Run folders: their names, the one run that owns each, and when Hydra writes ``.hydra/`` into them.

* :func:`new_run_dir` names a run's folder (``hydra.run.dir`` through the ``run_dir`` resolver).
* :func:`claim` takes the folder's lock (``fcntl.flock`` on ``<run>/.lock``, which holds the
  owner's pid and host): a second run in a folder that a live run owns is refused in one line;
  the kernel releases the lock when its process ends, so the lock of a killed run is taken over.
* ``hydra.output_subdir`` is ``${run_folder_subdir:${hydra.runtime.output_dir}}``: Hydra asks for
  it right before it writes ``.hydra/``; the resolver takes the lock first, and in a folder that
  already has a ``.hydra/`` (a resume, or a new run pointed at an old folder) defers the writing to
  :func:`write_deferred_hydra_config`, called by ``train`` once every check passed: a refused
  run leaves the folder's ``.hydra/`` as it was.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import logging
import os
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

__all__ = ["FolderInUse", "accept", "claim", "first_process", "new_run_dir", "remove_refused",
           "write_deferred_hydra_config"]

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class FolderInUse(RuntimeError):
    """Another live run owns the run folder (one-line message)."""


# --------------------------------------------------------------------------- names


def new_run_dir(runs_dir: str, resume: Optional[str] = None, ckpt_path: Optional[str] = None) -> str:
    """The folder of this run: ``resume``'s, the run that holds ``ckpt_path``, or a new one.

    A new folder is ``<runs_dir>/<date>_<time>_<4 hex>``, created here (``os.makedirs`` without
    ``exist_ok`` is the atomic claim), so two runs started in the same second never share one.
    Inside a SLURM job it is ``slurm-<job id>``: a requeued job finds its folder and Lightning's
    ``hpc_ckpt`` in it. Used as ``hydra.run.dir`` through the ``run_dir`` resolver.
    """
    if resume:
        return str(Path(resume).expanduser().absolute())
    if ckpt_path and Path(ckpt_path).parent.name == "checkpoints" and (Path(ckpt_path).parents[1] / ".hydra").is_dir():
        return str(Path(ckpt_path).expanduser().absolute().parents[1])
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job and os.environ.get("SLURM_ARRAY_TASK_ID") and os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    for _ in range(100):
        name = f"slurm-{job}" if job else time.strftime("%Y-%m-%d_%H-%M-%S_") + secrets.token_hex(2)
        path = Path(runs_dir) / name
        missing = [p for p in (path, *path.parents) if not p.exists()]  # what this run creates
        try:
            path.mkdir(parents=True, exist_ok=bool(job))
        except FileExistsError:
            continue
        except OSError as error:
            sys.stderr.write(f"error: cannot create the run folder {path} ({error.strerror}); "
                             f"set paths.log_dir to a writable folder\n")
            sys.exit(2)
        if path in missing:
            _CREATED[os.path.realpath(path)] = [str(p) for p in missing]
        return str(path)
    raise RuntimeError(f"no free run folder name in {runs_dir}")


_RUN_DIRS: Dict[tuple, str] = {}
# Folders new_run_dir created in this process -> the folders it created for it, deepest first.
_CREATED: Dict[str, List[str]] = {}


def run_dir_resolver(runs_dir: str, resume: Optional[str] = None, ckpt_path: Optional[str] = None) -> str:
    # Hydra (and Lightning, when it re-launches DDP processes) read hydra.run.dir more than once:
    # one folder per process and arguments.
    key = (runs_dir, resume, ckpt_path)
    if key not in _RUN_DIRS:
        _RUN_DIRS[key] = new_run_dir(runs_dir, resume, ckpt_path)
    return _RUN_DIRS[key]


# --------------------------------------------------------------------------- the lock


def first_process() -> bool:
    """Whether this is the run's first process (global rank 0 of a DDP job, or a plain run):
    the one that owns the folder. Lightning's re-launched DDP processes, torchrun's and srun's
    other ranks are not."""
    for name in ("LOCAL_RANK", "RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        value = os.environ.get(name, "0")
        if value.strip().isdigit() and int(value) != 0:
            return False
    return True


_HELD: Dict[str, int] = {}  # folder -> fd of its lock file, this process's


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        return ""
    return f"pid {text[0]} on host {text[1]}" if len(text) >= 2 else ""


def _alive_here(text: str) -> bool:
    """Whether the holder ``pid P on host H`` is a live process of this machine."""
    parts = text.split()
    if len(parts) < 5 or parts[3] != "host":
        return False
    if parts[4] != socket.gethostname():
        return True  # another machine's: cannot tell, assume it runs
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def claim(folder: os.PathLike | str) -> None:
    """Take ``<folder>/.lock`` for this process (idempotent; a process owns one run folder at a
    time: claiming another releases the previous one). Other processes of a DDP run do nothing.

    Raises:
        FolderInUse: a live process owns the folder.
    """
    if not first_process():
        return
    key = os.path.realpath(os.fspath(folder))
    if key in _HELD:
        return
    for previous in list(_HELD):
        release(previous)
    os.makedirs(key, exist_ok=True)
    path = os.path.join(key, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    before = _holder(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderInUse(f"{key} is in use by another run ({before or 'its lock file is ' + path}): "
                          "wait until it ends, or start this run in another folder") from None
    except OSError as exc:
        # A file system without flock (some network mounts): the pid and host recorded decide.
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            os.close(fd)
            raise
        if before and _alive_here(before) and before.split()[1] != str(os.getpid()):
            os.close(fd)
            raise FolderInUse(f"{key} is in use by another run ({before}); if that run is gone, "
                              f"delete {path}") from None
    if before and before.split()[1] != str(os.getpid()):
        log.info(f"took over the run folder's lock from {before}, which no longer runs")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    _HELD[key] = fd


def release(folder: os.PathLike | str) -> None:
    """Give up this process's lock of ``folder`` (the process's end does it too)."""
    fd = _HELD.pop(os.path.realpath(os.fspath(folder)), None)
    if fd is not None:
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)


# --------------------------------------------------------------------------- .hydra/ after the checks

_SUBDIRS: Dict[str, Optional[str]] = {}
_DEFERRED: Dict[str, bool] = {}


def hydra_subdir_resolver(output_dir: str) -> Optional[str]:
    """``hydra.output_subdir``: take the folder's lock, then ``.hydra`` (Hydra writes it now), or
    None where a ``.hydra/`` exists already (written by :func:`write_deferred_hydra_config`)."""
    key = os.path.realpath(output_dir)
    if key not in _SUBDIRS:
        try:
            claim(key)
        except FolderInUse as exc:
            sys.stderr.write(f"error: {exc}\n")
            sys.stderr.flush()
            sys.exit(2)
        deferred = os.path.isdir(os.path.join(key, ".hydra"))
        _SUBDIRS[key] = None if deferred else ".hydra"
        _DEFERRED[key] = deferred
    return _SUBDIRS[key]


def _write(path: Path, text: str) -> None:
    temp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def write_deferred_hydra_config(cfg: DictConfig) -> None:
    """Write ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` as Hydra does, where
    the resolver deferred them (the run was checked and accepted); otherwise nothing."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.instance().cfg
    output_dir = OmegaConf.select(hydra_cfg, "hydra.runtime.output_dir")
    key = os.path.realpath(str(output_dir)) if output_dir else None
    if key is None or not _DEFERRED.pop(key, False):
        return
    folder = Path(key) / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    task = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    _write(folder / "config.yaml", OmegaConf.to_yaml(task))
    _write(folder / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg))
    _write(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task))


# --------------------------------------------------------------------------- a refused run's folder

_ACCEPTED = {"run": False}


def accept(cfg: DictConfig) -> None:
    """The run passed every check: its folder is kept whatever happens next, and the ``.hydra/``
    that the resolver deferred is written (:func:`write_deferred_hydra_config`)."""
    _ACCEPTED["run"] = True
    write_deferred_hydra_config(cfg)


def _close_log_files(folder: str) -> None:
    """Close and drop the logging file handlers that write into ``folder`` (Hydra's run log)."""
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and \
                    os.path.realpath(handler.baseFilename).startswith(folder + os.sep):
                logger.removeHandler(handler)
                handler.close()


def remove_refused(folder: os.PathLike | str) -> bool:
    """Remove ``folder`` of a run refused before it was accepted (:func:`accept`): only a folder
    that :func:`new_run_dir` created in this process (never a resumed or given one) and only while
    it holds no checkpoint and no event file; the parents created for it go too where empty.
    Returns whether it was removed."""
    key = os.path.realpath(os.fspath(folder))
    created = _CREATED.get(key)
    if _ACCEPTED["run"] or not created or not first_process() or not os.path.isdir(key):
        return False
    root = Path(key)
    if any(root.rglob("*.ckpt")) or any(root.rglob("events.out.tfevents.*")):
        return False
    _close_log_files(key)
    release(key)
    shutil.rmtree(key, ignore_errors=True)
    _CREATED.pop(key, None)
    for parent in created[1:]:
        try:
            os.rmdir(parent)  # only while empty: another run may have made its folder there since
        except OSError:
            break
    return not os.path.exists(key)


@atexit.register
def _release_all() -> None:
    for folder in list(_HELD):
        release(folder)


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("run_dir", run_dir_resolver, replace=True)
    OmegaConf.register_new_resolver("run_folder_subdir", hydra_subdir_resolver, replace=True)


register_resolvers()
