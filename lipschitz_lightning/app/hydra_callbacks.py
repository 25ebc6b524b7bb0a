"""The Hydra callback of a multirun (``hydra.callbacks`` in ``conf/hydra/default.yaml``): it goes on
past a failing job and lists the failed ones at the end; a stop signal ends it instead."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, List, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from lipschitz_lightning.app import signals

__all__ = ["JobFailed", "JobNotRun", "JobStopped", "ReportFailedJobs"]


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
    The list goes to stderr and to the multirun's own log, ``<sweep dir>/<task_name>.log``.
    """

    MARKERS = {"JobFailed": "FAILED", "JobStopped": "STOPPED", "JobNotRun": "NOT_RUN"}

    def __init__(self) -> None:
        self.sweep_dir: Optional[Path] = None
        self.log_file: Optional[Path] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.log_file = self.sweep_dir / f"{config.get('task_name') or 'multirun'}.log"

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED or not HydraConfig.get().mode == hydra.types.RunMode.MULTIRUN:
            return
        # Read as a completed job's value: a failed job's value is its exception, raised (and
        # announced as "Error executing job") by the getter; kept for failures, not for stops.
        job_return.status = JobStatus.COMPLETED
        error = job_return.return_value
        # By name: a job run under `python -m` may raise another module's class of that name.
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

    def _summary(self) -> tuple:
        """The lines of the multirun's end and its exit status (None: it ended well)."""
        failed, stopped, not_run = (self._jobs(m) for m in ("FAILED", "STOPPED", "NOT_RUN"))
        lines, status = [], None
        if failed:
            lines.append(f"{len(failed)} job(s) of the multirun failed:")
            lines += [f"  job {job} ({varied}): {(rest + [''])[0]}" for job, varied, rest in failed]
            status = 2
        if stopped:
            job, varied, rest = stopped[0]
            status = int(rest[0]) if rest and rest[0].isdigit() else 143
            how = signals.sweep.stopped_by or ("Ctrl-C" if status == 130 else "SIGTERM")
            lines.append(f"the multirun was stopped by {how} in job {job} ({varied}); {len(not_run)} job(s) did not run:")
            lines += [f"  job {job}: {varied}" for job, varied, _ in not_run]
        return lines, status

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.sweep_dir is None:
            return
        from lipschitz_lightning.app.exits import echo  # exits raises this module's job errors

        lines, status = self._summary()
        for line in lines:
            echo(line, log_file=self.log_file)
        sys.stderr.flush()
        if status is not None:
            sys.exit(status)
