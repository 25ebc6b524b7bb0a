"""A Hydra callback that ends a multirun with a table of its jobs and the winner.

Every job writes ``<job dir>/sweep_result.json`` (its overrides, the value of
``optimized_metric`` that ``train`` returned, its status) from the process that ran it, so the
summary works with any launcher (basic, joblib, submitit on a cluster) and any sweeper (basic,
Optuna). After the last job, in the launching process, the callback reads them back, logs one
line per job and the winner, and writes ``<sweep dir>/winner.yaml``::

    hydra:
      callbacks:
        sweep_summary:
          _target_: lipschitz_lightning.sweeps.SweepSummary
          mode: max

``conf/hparams_search/*.yaml`` switch it on.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

__all__ = ["RESULT_FILE", "WINNER_FILE", "SweepSummary", "read_results"]

log = logging.getLogger(__name__)

RESULT_FILE = "sweep_result.json"
WINNER_FILE = "winner.yaml"


def read_results(sweep_dir: Path) -> List[Dict[str, Any]]:
    """The ``sweep_result.json`` of every job under ``sweep_dir``, in job order."""
    results = [json.loads(path.read_text()) for path in Path(sweep_dir).glob(f"*/{RESULT_FILE}")]
    return sorted(results, key=lambda r: r["job"])


class SweepSummary(Callback):
    """Log every job's optimized metric and the best job at the end of a multirun.

    Args:
        mode: ``"max"`` (accuracies) or ``"min"`` (losses): which value wins.

    Raises:
        ValueError: an unknown ``mode``.
    """

    def __init__(self, mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"SweepSummary: mode must be 'max' or 'min'; got {mode!r}")
        self.mode = mode

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        value: Optional[float] = None
        if job_return.status == JobStatus.COMPLETED and job_return.return_value is not None:
            value = float(job_return.return_value)
        result = {
            "job": int(config.hydra.job.num),
            "overrides": list(config.hydra.overrides.task),
            "metric": config.get("optimized_metric"),
            "value": value,
            "status": job_return.status.name,
        }
        output_dir = Path(config.hydra.runtime.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / RESULT_FILE).write_text(json.dumps(result))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        metric = config.get("optimized_metric")
        results = read_results(sweep_dir)
        if not metric:
            log.warning("sweep summary: no optimized_metric is set (e.g. optimized_metric=val/acc_best); no winner")
            return
        # Show what differs from job to job (the swept values), not the overrides they share.
        shared = set.intersection(*(set(r["overrides"]) for r in results)) if results else set()
        for result in results:
            result["swept"] = " ".join(o for o in result["overrides"] if o not in shared) or "(no swept values)"
            shown = "failed" if result["status"] != "COMPLETED" else (
                "missing" if result["value"] is None else f"{result['value']:.6g}")
            log.info(f"job {result['job']}: {metric}={shown}  {result['swept']}")
        scored = [r for r in results if r["value"] is not None and math.isfinite(r["value"])]
        if not scored:
            log.warning(f"sweep summary: no job returned {metric}; no winner")
            return
        pick = max if self.mode == "max" else min
        best = pick(scored, key=lambda r: r["value"])
        winner = {"metric": metric, "value": best["value"], "job": best["job"], "swept": best["swept"],
                  "overrides": best["overrides"],
                  "jobs": len(results), "scored": len(scored)}
        (sweep_dir / WINNER_FILE).write_text(OmegaConf.to_yaml(OmegaConf.create(winner)))
        log.info(f"winner: job {best['job']} {best['swept']} ({metric}={best['value']:.6g}); "
                 f"written to {sweep_dir / WINNER_FILE}")
