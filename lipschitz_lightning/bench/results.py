"""The raw-result files of the benchmark suites: their columns, how a run's CSV log becomes rows.

Two files per suite under ``benchmarks/results/`` (committed; the report reads only them):

* ``<suite>_epochs.csv``: one row per run and epoch (:data:`EPOCH_COLUMNS`);
* ``<suite>_runs.csv``: one row per finished run (:data:`RUN_COLUMNS`): its status, final test
  accuracy, command line and the machine it ran on.

Rows are appended run by run, so an interrupted suite keeps every run it finished.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

__all__ = ["EPOCH_COLUMNS", "EPOCH_METRICS", "RUN_COLUMNS", "append_rows", "epoch_rows", "read_rows", "test_metrics"]

# Metrics logged by the training app (train/*, val/*: val is the test split), by LipschitzLR
# (lipschitz/*) and by the harness's BenchProbe and LRFinderCosine (bench/*).
EPOCH_METRICS: tuple[str, ...] = (
    "train/loss", "train/acc", "val/loss", "val/acc",
    "lipschitz/lr", "lipschitz/L", "lipschitz/grad_max_over_L", "lipschitz/capped", "lipschitz/bound_invalid",
    "bench/lr", "bench/lr_find", "bench/train_seconds", "bench/steps", "bench/step_seconds",
    "bench/elapsed_seconds", "bench/state_bytes_per_param",
    # added later: files written before it gain the column, empty for their rows (append_rows)
    "lipschitz/rollbacks",
)
EPOCH_COLUMNS: tuple[str, ...] = ("suite", "method", "seed", "epoch", *EPOCH_METRICS)
RUN_COLUMNS: tuple[str, ...] = (
    "suite", "method", "seed", "epochs", "status", "returncode", "test_acc", "test_loss", "wall_seconds",
    "error", "finished_at", "host", "cpu", "cpu_count", "device", "torch", "lightning", "git_commit",
    "command",
)


def _number(text: str) -> Optional[float]:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def epoch_rows(metrics_csv: Path) -> List[Dict[str, float]]:
    """The per-epoch metrics of one run from its Lightning ``CSVLogger`` file.

    Lightning writes several rows per epoch (training, validation and the callbacks' metrics);
    they are merged by their ``epoch`` column. The test row (logged after the fit, at
    ``epoch == max_epochs``, holding ``test/*``) is left out: see :func:`test_metrics`.
    """
    merged: Dict[int, Dict[str, float]] = {}
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            epoch = _number(row.get("epoch", ""))
            if epoch is None or any(k.startswith("test/") and row[k] not in ("", None) for k in row):
                continue
            target = merged.setdefault(int(epoch), {})
            for key in EPOCH_METRICS:
                value = _number(row.get(key, ""))
                if value is not None:
                    target[key] = value
    return [dict(values, epoch=epoch) for epoch, values in sorted(merged.items()) if values]


def test_metrics(metrics_csv: Path) -> Dict[str, float]:
    """``test/acc`` and ``test/loss`` of one run's CSV log (empty if the test did not run)."""
    out: Dict[str, float] = {}
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            for key in ("test/acc", "test/loss"):
                value = _number(row.get(key, ""))
                if value is not None:
                    out[key] = value
    return out


def append_rows(path: Path, columns: Sequence[str], rows: Iterable[Dict[str, object]]) -> None:
    """Append ``rows`` to the CSV ``path`` (header written when the file is new), then fsync.

    A file written before a column was added is first rewritten with the current columns (its
    rows keep their values, empty in the new columns). A file with columns this version does not
    know (written by a newer one) is refused rather than silently cut.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        _migrate(path, columns)
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})
        handle.flush()
        os.fsync(handle.fileno())


def _migrate(path: Path, columns: Sequence[str]) -> None:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        if header == list(columns):
            return
        unknown = [c for c in header if c not in columns]
        if unknown:
            raise ValueError(f"{path}: columns {unknown} are not this version's ({', '.join(columns)}); "
                             "not appending to it")
        old_rows = list(reader)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for row in old_rows:
            writer.writerow({k: row.get(k, "") for k in columns})
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value


def read_rows(path: Path) -> List[Dict[str, object]]:
    """Rows of a results CSV with numbers as floats (``nan`` kept), other cells as strings."""
    if not path.exists():
        return []
    out: List[Dict[str, object]] = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            parsed: Dict[str, object] = {}
            for key, text in row.items():
                if key in ("suite", "method", "status", "error", "finished_at", "host", "cpu", "device", "torch",
                           "lightning", "git_commit", "command"):
                    parsed[key] = text
                else:
                    parsed[key] = _number(text) if text not in ("nan",) else float("nan")
            out.append(parsed)
    return out
