"""The statistics of the report: one record per run (:class:`RunStats`), one per method over its
runs (:class:`MethodStats`), and the per-epoch curves, from the rows of the results files."""

from __future__ import annotations

import math
import statistics
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from lipschitz_lightning.bench.report.kinds import method_kind

__all__ = ["REFERENCE", "MethodStats", "RunStats", "curves", "finite", "mean_spread", "number", "run_stats", "summarise"]

# The reference of the seconds-per-step ratio.
REFERENCE = "sgd_fixed"

Row = Dict[str, object]


def finite(values: Iterable[Optional[float]]) -> List[float]:
    return [float(v) for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]


def number(text: Optional[str]) -> Optional[float]:
    """A cell of a results file as read by ``csv``: its number, or None (empty, not a number)."""
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def mean_spread(values: Sequence[float]) -> Tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _lr(row: Row) -> Optional[float]:
    """The rate of an epoch: LipschitzLR's, else the harness's (lr x d / eta for the others)."""
    return row.get("lipschitz/lr") if row.get("lipschitz/lr") is not None else row.get("bench/lr")


@dataclass
class RunStats:
    """One run (a row of ``<suite>_runs.csv``) and its epochs' figures.

    ``best``/``final``: None without a finite test accuracy (``final`` is 0 where the last epoch's
    is not finite); ``diverged``: why the run counts as diverged, or None; ``rollbacks``: the
    epochs the guard rolled back, None where the run did not record it.
    """

    seed: int
    epochs: int
    best: Optional[float]
    final: Optional[float]
    diverged: Optional[str]
    epochs_to_target: Optional[int]
    seconds_to_target: Optional[float]
    steps: List[float]
    state: List[float]
    lrs: List[float]
    grad_ratios: List[float]
    rollbacks: Optional[int]


def _diverged(run: Row, accs: List[float], losses: List[Optional[float]], chance: float) -> Optional[str]:
    """A NaN/inf training loss (or a failed run), a final accuracy at most 1.5x chance, or a final
    training loss above the first epoch's."""
    nan = any(v is None or not math.isfinite(v) for v in losses) or run.get("status") != "ok"
    end_acc = accs[-1] if accs else 0.0
    fl = finite(losses)
    rising = len(fl) >= 2 and fl[-1] > fl[0]
    if nan or end_acc <= 1.5 * chance or rising:
        return "NaN/failed" if nan else ("chance" if end_acc <= 1.5 * chance else "loss up")
    return None


def _to_target(rows: List[Row], target: float) -> Tuple[Optional[int], Optional[float]]:
    """Epochs (1-based) and elapsed seconds at the first epoch at or above ``target``."""
    for r in rows:
        acc = r.get("val/acc")
        if acc is not None and math.isfinite(acc) and acc >= target - 1e-6:  # float32 accuracies
            seconds = r.get("bench/elapsed_seconds")
            return int(r["epoch"]) + 1, (float(seconds) if seconds is not None else None)
    return None, None


def run_stats(run: Row, rows: List[Row], target: float, chance: float) -> RunStats:
    """The figures of one run from its epoch rows (sorted by epoch)."""
    accs = [r.get("val/acc") for r in rows]
    finite_accs = finite(accs)
    final = None
    if finite_accs:
        final = finite_accs[-1] if accs and accs[-1] is not None and math.isfinite(accs[-1]) else 0.0
    epochs_to, seconds_to = _to_target(rows, target)
    counted = finite(r.get("lipschitz/rollbacks") for r in rows)  # cumulative per run
    return RunStats(
        seed=int(run["seed"]), epochs=len(rows), best=max(finite_accs) if finite_accs else None, final=final,
        diverged=_diverged(run, finite_accs, [r.get("train/loss") for r in rows], chance),
        epochs_to_target=epochs_to, seconds_to_target=seconds_to,
        steps=finite(r.get("bench/step_seconds") for r in rows),
        state=finite(r.get("bench/state_bytes_per_param") for r in rows),
        lrs=finite(_lr(r) for r in rows), grad_ratios=finite(r.get("lipschitz/grad_max_over_L") for r in rows),
        rollbacks=int(max(counted)) if counted else None)


def _median(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


@dataclass
class MethodStats:
    """One method over its runs: the row of a suite's table.

    ``best``/``final``: (mean, spread) of the runs' best and final test accuracy; ``reached``: runs
    that reached the target, ``epochs_to_target``/``seconds_to_target`` their median;
    ``step_ratio``: the median over seeds of the run's median step time over :data:`REFERENCE`'s.
    Read as attributes, or by name (``stats["best"]``) as the mapping earlier versions returned.
    """

    runs: int
    seeds: List[int]
    epochs: int
    best: Tuple[float, float]
    final: Tuple[float, float]
    reached: int
    epochs_to_target: Optional[float]
    seconds_to_target: Optional[float]
    step_seconds: Optional[float]
    state_bytes: Optional[float]
    diverged: List[Tuple[int, str]]
    lr_min: Optional[float]
    lr_max: Optional[float]
    grad_max_over_L: Optional[float]
    lipschitz: bool
    rollbacks: List[Tuple[int, int]] = field(default_factory=list)
    step_ratio: Optional[float] = None

    def __getitem__(self, name: str) -> object:
        return getattr(self, name)

    @classmethod
    def of(cls, method: str, runs: List[RunStats]) -> "MethodStats":
        to_epochs = [r.epochs_to_target for r in runs if r.epochs_to_target is not None]
        to_seconds = [r.seconds_to_target for r in runs if r.seconds_to_target is not None]
        steps, state = [v for r in runs for v in r.steps], [v for r in runs for v in r.state]
        lrs, ratios = [v for r in runs for v in r.lrs], [v for r in runs for v in r.grad_ratios]
        return cls(
            runs=len(runs), seeds=sorted(r.seed for r in runs), epochs=max((r.epochs for r in runs), default=0),
            best=mean_spread([r.best for r in runs if r.best is not None]),
            final=mean_spread([r.final for r in runs if r.final is not None]),
            reached=len(to_epochs), epochs_to_target=_median(to_epochs), seconds_to_target=_median(to_seconds),
            step_seconds=_median(steps), state_bytes=max(state) if state else None,
            diverged=[(r.seed, r.diverged) for r in runs if r.diverged is not None],
            lr_min=min(lrs) if lrs else None, lr_max=max(lrs) if lrs else None,
            grad_max_over_L=max(ratios) if ratios else None, lipschitz=method_kind(method).lipschitz,
            rollbacks=[(r.seed, r.rollbacks) for r in runs if r.rollbacks is not None])


def _by_run(epochs: List[Row]) -> "OrderedDict[Tuple[str, int], List[Row]]":
    by_run: "OrderedDict[Tuple[str, int], List[Row]]" = OrderedDict()
    for row in epochs:
        by_run.setdefault((str(row["method"]), int(row["seed"])), []).append(row)
    return by_run


def _step_ratios(by_run: Dict[Tuple[str, int], List[Row]], methods: Iterable[str]) -> Dict[str, Optional[float]]:
    """Ratio per seed (runs of one seed ran back to back, under about the same machine load), then the median."""
    per_seed: Dict[Tuple[str, int], float] = {}
    for (method, seed), rows in by_run.items():
        steps = finite(r.get("bench/step_seconds") for r in rows)
        if steps:
            per_seed[(method, seed)] = statistics.median(steps)
    out = {}
    for method in methods:
        ratios = [v / per_seed[(REFERENCE, seed)] for (m, seed), v in per_seed.items()
                  if m == method and per_seed.get((REFERENCE, seed))]
        out[method] = _median(ratios)
    return out


def summarise(runs: List[Row], epochs: List[Row], target: float, chance: float) -> "OrderedDict[str, MethodStats]":
    """Per method (in the order of ``runs``): accuracies, time to target, cost, divergence and LR figures.

    ``epochs`` rows are one per run and epoch (``val/acc`` is the test split's accuracy);
    ``runs`` rows one per run. Divergence of a run: a NaN/inf training loss, a final accuracy at
    most 1.5x chance, or a final training loss above the first epoch's.
    """
    by_run = _by_run(epochs)
    order = list(OrderedDict.fromkeys(str(row["method"]) for row in runs))
    out: "OrderedDict[str, MethodStats]" = OrderedDict()
    for method in order:
        per_run = [run_stats(run, sorted(by_run.get((method, int(run["seed"])), []), key=lambda r: r["epoch"]),
                             target, chance) for run in runs if run["method"] == method]
        out[method] = MethodStats.of(method, per_run)
    for method, ratio in _step_ratios(by_run, out).items():
        out[method].step_ratio = ratio
    return out


def curves(epochs: List[Row], key: str) -> "OrderedDict[str, Tuple[List[int], List[float]]]":
    """Per method, the mean over seeds of ``key`` per epoch (1-based); ``lr``: the rate (:func:`_lr`)."""
    acc: "OrderedDict[str, Dict[int, List[float]]]" = OrderedDict()
    for row in epochs:
        value = _lr(row) if key == "lr" else row.get(key)
        if value is None or not math.isfinite(value):
            continue
        acc.setdefault(str(row["method"]), {}).setdefault(int(row["epoch"]) + 1, []).append(float(value))
    return OrderedDict((m, (sorted(d), [statistics.fmean(d[e]) for e in sorted(d)])) for m, d in acc.items())
