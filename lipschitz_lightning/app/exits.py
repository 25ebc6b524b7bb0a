"""How a run of ``python -m lipschitz_lightning.train`` ends when it does not finish: one line and
an exit status (:func:`run_or_exit`, the one place that turns a failure into them).

* a user's error (:data:`preflight.USER_ERRORS`, :class:`preflight.ConfigError`): ``error: ...``, 2;
* a stop signal: ``stopped by SIGTERM|Ctrl-C; checkpoint written; resume with: <command>``, 143/130;
* a lost DDP peer: its line (:func:`signals.peer_failure_line`), 1;
* anything else is a bug: raised, with its traceback.

Every line goes to stderr and to the run's log file (:func:`echo`). A new run refused before it
trained leaves nothing behind: its folder is removed (:func:`run_folder.remove_refused`), and its
line is then on stderr only. In a multirun the failure is raised for Hydra to record (the sweep goes
on, :class:`hydra_callbacks.ReportFailedJobs` lists it at the end); a stop signal ends the multirun.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lipschitz_lightning.app import run_folder, signals
from lipschitz_lightning.app.hydra_callbacks import JobFailed, JobNotRun, JobStopped
from lipschitz_lightning.app.preflight import USER_ERRORS, ConfigError

__all__ = ["echo", "failure_line", "in_multirun", "resume_command", "run_or_exit", "stop_line", "to_log_files"]

log = logging.getLogger("lipschitz_lightning.train")


def resume_command(cfg: DictConfig) -> str:
    """The command line that continues this run: its own overrides, plus resume=<its folder>."""
    run_dir = str(OmegaConf.select(cfg, "paths.output_dir"))
    overrides = []
    if HydraConfig.initialized():
        overrides = [o for o in HydraConfig.get().overrides.task
                     if not o.split("=", 1)[0].lstrip("+~") in ("resume", "ckpt_path", "hydra.run.dir")]
    return shlex.join([sys.executable, "-m", "lipschitz_lightning.train", *overrides, f"resume={run_dir}"])


def stop_line(cfg: DictConfig, exc: BaseException) -> Optional[Tuple[str, int, str]]:
    """``(line, exit status, how)`` when a stop signal ended the run (SIGTERM, Ctrl-C once or twice)."""
    if isinstance(exc, SIGTERMException):
        how = "Ctrl-C" if signals.CtrlCStopsAfterThisBatch.received else "SIGTERM"
        return (f"stopped by {how}; checkpoint written; resume with: {resume_command(cfg)}",
                signals.stop_status(how == "Ctrl-C"), how)
    # Lightning turns a KeyboardInterrupt during fit (a second Ctrl-C) into sys.exit(1).
    if isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit) and exc.code == 1):
        return f"interrupted; resume with: {resume_command(cfg)}", signals.stop_status(True), "Ctrl-C"
    return None


def failure_line(cfg: DictConfig, exc: BaseException) -> Optional[Tuple[str, int]]:
    """``(line, exit status)`` for a failure that is the user's to act on; None for a bug."""
    stop = stop_line(cfg, exc)
    if stop is not None:
        return stop[:2]
    if isinstance(exc, (ConfigError, *USER_ERRORS)):
        return f"error: {exc}", 2
    peer = signals.peer_failure(exc)
    if peer is not None:
        timeout = OmegaConf.select(cfg, "trainer.strategy.timeout.seconds", default=None)
        return signals.peer_failure_line(peer, timeout, resume_command(cfg)), 1
    return None


def blocked_stop_line(resume: str) -> Callable[[str], str]:
    """The line of a DDP rank that a stop signal found blocked on a peer (see signals.StopWatch)."""
    def line(how: str) -> str:
        text = (f"stopped by {how} while DDP rank {signals.rank()} waited for a peer that stopped answering; "
                f"no checkpoint of this step; resume with: {resume}")
        to_log_files(text)  # the watcher writes it to stderr, then ends the process
        return text
    return line


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == hydra.types.RunMode.MULTIRUN


# --------------------------------------------------------------------------- the lines


def _log_files() -> Iterator[logging.FileHandler]:
    """The file handlers of the logging configuration (Hydra's ``<task_name>.log``), each once."""
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    seen = set()
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler) and id(handler) not in seen:
                seen.add(id(handler))
                yield handler


def echo(line: str, log_file: Optional[Path] = None) -> None:
    """Write ``line`` to stderr, as always, and to the run's log file: the file handlers only (the
    console handlers would print it twice), or ``log_file`` where given (a multirun's own log)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    if log_file is not None:
        with open(log_file, "a", encoding="utf-8") as out:
            out.write(line + "\n")
        return
    to_log_files(line)


def to_log_files(line: str) -> None:
    """Write ``line`` to the logging configuration's file handlers only (not to the terminal)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, line, None, None)
    for handler in _log_files():
        if record.levelno >= handler.level:
            handler.handle(record)


def _refused(exc: BaseException) -> bool:
    """A user's error: the run is refused (or failed) with one ``error:`` line."""
    return isinstance(exc, (ConfigError, *USER_ERRORS))


def run_or_exit(train: Callable[[DictConfig], Dict[str, float]], cfg: DictConfig) -> Dict[str, float]:
    """``train(cfg)``; a user's failure is one line and a non-zero status (single run: ``sys.exit``;
    multirun: raised for :class:`ReportFailedJobs`). A stop signal ends the multirun: the job that
    got it writes its checkpoint and the jobs after it do not run."""
    if in_multirun() and signals.sweep.stopped_by:
        raise JobNotRun(f"not run: the multirun was stopped by {signals.sweep.stopped_by}")
    try:
        with signals.StopWatch(blocked_stop_line(resume_command(cfg))):
            return train(cfg)
    except BaseException as exc:  # noqa: B036 - SIGTERM arrives as SystemExit
        failure = failure_line(cfg, exc)
        if failure is None:
            raise
        line, status = failure
        if signals.peer_failure(exc) is not None:
            signals.kill_children()  # the ranks Lightning started: a frozen one would stay
        if not in_multirun() and _refused(exc) and HydraConfig.initialized():
            # A new run refused before it trained: its folder goes (with .hydra/ and its log file),
            # so its line is on stderr only. A resumed or given folder is kept as it was.
            run_folder.remove_refused(HydraConfig.get().runtime.output_dir)
        echo(line)
        if in_multirun():
            stop = stop_line(cfg, exc)
            if stop is not None:
                signals.sweep.stop(stop[2], status)
                raise JobStopped(f"{status}\n{line}") from None
            raise JobFailed(line) from None
        sys.exit(status)
