"""The raw-result files of the benchmark suites: their columns, how a run's CSV log becomes rows.

Two files per suite under ``benchmarks/results/`` (committed; the report reads only them):

* ``<suite>_epochs.csv``: one row per run and epoch (:data:`EPOCH_COLUMNS`);
* ``<suite>_runs.csv``: one row per finished run (:data:`RUN_COLUMNS`): its status, final test
  accuracy, command line and the machine it ran on.

Rows are appended run by run, so an interrupted suite keeps every run it finished. The classical
experiments' tables (``classical_*.csv``) are written here too, a data set's rows replaced as a
whole (:func:`upsert_rows`).

:func:`read_metrics` is the one reader of Lightning's ``CSVLogger`` files (``metrics.csv``): the
suites' rows, ``python -m lipschitz_lightning.plot`` and ``scripts/rules_table.py`` go through it.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

__all__ = ["EPOCH_COLUMNS", "EPOCH_METRICS", "RUN_COLUMNS", "ResultsFormatError", "append_rows", "epoch_rows",
           "read_metrics", "read_rows", "test_metrics", "upsert_rows"]

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


class ResultsFormatError(ValueError):
    """A results file this version cannot extend without losing data (one-line message)."""


def _number(text: str) -> Optional[float]:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _metric_rows(files: Iterable[Path]) -> Iterator[Tuple[Optional[int], Dict[str, float]]]:
    """``(epoch, {column: value})`` of every row of the CSV logs ``files``, in file order; the
    empty cells and those that are not numbers left out (``epoch``: None where the row has none)."""
    for path in files:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                epoch = _number(row.get("epoch") or "")
                values = {key: value for key, value in ((k, _number(v)) for k, v in row.items() if k and k != "epoch")
                          if value is not None}
                yield (int(epoch) if epoch is not None else None), values


def read_metrics(files: Iterable[Path], wanted: Optional[Callable[[str], bool]] = None,
                 test_rows: bool = True) -> Dict[int, Dict[str, float]]:
    """The values of Lightning ``CSVLogger`` files (``metrics.csv``) by epoch: ``{epoch: {key: value}}``.

    Lightning writes several rows per epoch (training, validation and the callbacks' metrics);
    they are merged by their ``epoch`` column, a later row's value winning (a resumed run logs
    its epochs again). Rows without an epoch are skipped.

    Args:
        files: The run's log files, read in this order.
        wanted: Which keys to keep (None: every column but ``epoch``).
        test_rows: False leaves out the test row (logged after the fit, at ``epoch == max_epochs``,
            holding ``test/*``).
    """
    merged: Dict[int, Dict[str, float]] = {}
    for epoch, values in _metric_rows(files):
        if epoch is None or (not test_rows and any(k.startswith("test/") for k in values)):
            continue
        merged.setdefault(epoch, {}).update((k, v) for k, v in values.items() if wanted is None or wanted(k))
    return dict(sorted(merged.items()))


def epoch_rows(metrics_csv: Path) -> List[Dict[str, float]]:
    """The per-epoch metrics (:data:`EPOCH_METRICS`) of one run from its Lightning ``CSVLogger`` file.

    The test row is left out: see :func:`test_metrics`.
    """
    merged = read_metrics([metrics_csv], EPOCH_METRICS.__contains__, test_rows=False)
    return [dict(values, epoch=epoch) for epoch, values in merged.items() if values]


def test_metrics(metrics_csv: Path) -> Dict[str, float]:
    """``test/acc`` and ``test/loss`` of one run's CSV log (empty if the test did not run)."""
    out: Dict[str, float] = {}
    for _, values in _metric_rows([metrics_csv]):
        out.update((k, v) for k, v in values.items() if k in ("test/acc", "test/loss"))
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


def upsert_rows(path: Path, columns: Sequence[str], key: str, value: str, rows: Iterable[Dict[str, object]]) -> None:
    """Replace the rows of the CSV ``path`` whose ``key`` column is ``value`` by ``rows``; keep the others.

    The file is rewritten with the current ``columns`` (older rows empty in new columns) and
    replaced in one rename, so a reader never sees half of it. A file with columns this version
    does not know is refused, as by :func:`append_rows`.
    """
    header, kept = _read_header_rows(path)
    _check_columns(path, header, columns)
    kept = [r for r in kept if r.get(key) != value]
    _write_all(path, columns, kept + [{k: _cell(r.get(k)) for k in columns} for r in rows])


def _read_header_rows(path: Path) -> Tuple[List[str], List[Dict[str, str]]]:
    if not path.exists():
        return [], []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _check_columns(path: Path, header: Sequence[str], columns: Sequence[str]) -> None:
    unknown = [c for c in header if c not in columns]
    if unknown:
        raise ResultsFormatError(f"{path}: columns {unknown} are not this version's ({', '.join(columns)}); "
                                 "not writing to it")


def _write_all(path: Path, columns: Sequence[str], rows: Iterable[Dict[str, object]]) -> None:
    """Write ``rows`` as the whole file ``path`` (a temporary file renamed into place, fsynced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _migrate(path: Path, columns: Sequence[str]) -> None:
    header, old_rows = _read_header_rows(path)
    if header == list(columns):
        return
    _check_columns(path, header, columns)
    _write_all(path, columns, old_rows)


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float):  # numpy's float64 too: written as the plain float it is
        return "nan" if math.isnan(value) else repr(float(value))
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
