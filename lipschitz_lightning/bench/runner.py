"""Run a benchmark suite: every method x seed as one ``python -m lipschitz_lightning.train`` run.

::

    python -m lipschitz_lightning.bench suite=digits              # 30 epochs x 5 seeds x all methods
    python -m lipschitz_lightning.bench suite=mnist seeds=[0,1] epochs=3
    python -m lipschitz_lightning.bench suite=digits only=[sgd,prodigy] extra=[trainer.limit_train_batches=2]

A suite (``conf/suite/<name>.yaml``) names the task (dataset, model, epochs, seeds, target
accuracy, the overrides of every run); the methods are the ``methods`` group
(``conf/methods/all.yaml``: one line per method, name -> overrides of the training app) plus the
suite's ``extra_methods``. Every run is the project's own training app in a subprocess with
``logger=csv`` and the :class:`~lipschitz_lightning.bench.callbacks.BenchProbe` callback added
from the command line; its log becomes rows of ``<results_dir>/<suite>_epochs.csv`` and
``<suite>_runs.csv`` as soon as it ends. A run already in ``<suite>_runs.csv`` is skipped, so an
interrupted suite resumes where it stopped (a run cut off half-way is run again from its start).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from lipschitz_lightning.bench.results import EPOCH_COLUMNS, RUN_COLUMNS, append_rows, epoch_rows, read_rows, test_metrics

__all__ = ["BenchConfigError", "machine", "method_overrides", "plan", "run_suite"]

PROBE = "+callbacks.bench_probe._target_=lipschitz_lightning.bench.callbacks.BenchProbe"


class BenchConfigError(ValueError):
    """A suite or method list that cannot run (one-line message)."""


def method_overrides(cfg: DictConfig) -> Dict[str, List[str]]:
    """Method name -> training-app overrides: the ``methods`` group plus ``suite.extra_methods``.

    A method whose value is null runs as ``optim=<name>``.
    """
    methods: Dict[str, List[str]] = {}
    for source in (cfg.get("methods") or {}, cfg.suite.get("extra_methods") or {}):
        for name, overrides in source.items():
            methods[str(name)] = [f"optim={name}"] if overrides is None else [str(o) for o in overrides]
    only = cfg.get("only")
    if only:
        unknown = [m for m in only if m not in methods]
        if unknown:
            raise BenchConfigError(f"only={list(only)}: unknown method(s) {unknown}; known: {', '.join(methods)}")
        methods = {m: methods[m] for m in only}
    return methods


def _seeds_epochs(cfg: DictConfig) -> Tuple[List[int], int]:
    seeds = cfg.get("seeds")
    seeds = list(cfg.suite.seeds if seeds is None else seeds)
    epochs = int(cfg.suite.epochs if cfg.get("epochs") is None else cfg.epochs)
    if not seeds or epochs <= 0:
        raise BenchConfigError(f"suite {cfg.suite.name}: needs at least one seed and epochs >= 1; got seeds={seeds} epochs={epochs}")
    return [int(s) for s in seeds], epochs


def plan(cfg: DictConfig) -> List[Tuple[str, int, List[str]]]:
    """Every (method, seed, full override list) of the suite, methods outermost... by seed first.

    Seeds are the outer loop, so an interrupted suite has every method at the first seeds.
    """
    seeds, epochs = _seeds_epochs(cfg)
    runs = []
    for seed in seeds:
        for method, overrides in method_overrides(cfg).items():
            args = [*cfg.suite.overrides, *overrides, f"seed={seed}", f"epochs={epochs}",
                    f"task_name=bench_{cfg.suite.name}", "logger=csv", "+logger.csv.flush_logs_every_n_steps=1",
                    "trainer.enable_progress_bar=false",
                    PROBE, *(cfg.get("extra") or [])]
            runs.append((method, seed, [str(a) for a in args]))
    return runs


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> Dict[str, object]:
    """Host, CPU model, core count, accelerator, torch and Lightning versions, git commit."""
    import pytorch_lightning as pl
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"host": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(), "device": device,
            "torch": torch.__version__, "lightning": pl.__version__, "git_commit": _git_commit()}


def _copy_data(cfg: DictConfig) -> None:
    """Copy the suite's read-only data files into the writable data folder (once)."""
    for item in cfg.suite.get("copy_data") or []:
        src, dst = Path(str(item.src)), Path(str(item.dst))
        if dst.exists() and any(dst.iterdir()):
            continue
        if not src.exists():
            raise BenchConfigError(f"suite {cfg.suite.name}: data not found at {src} (set shared_data=/path or LIPSCHITZ_SHARED_DATA)")
        dst.mkdir(parents=True, exist_ok=True)
        for path in src.iterdir():
            shutil.copy2(path, dst / path.name)
            os.chmod(dst / path.name, 0o644)
        print(f"copied {src} -> {dst}", flush=True)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln]
    return (errors or lines or [""])[-1][:300]


def run_suite(cfg: DictConfig) -> int:
    """Run every (method, seed) of ``cfg`` not yet in the runs file; return the number run."""
    name = str(cfg.suite.name)
    results = Path(str(cfg.results_dir))
    epochs_csv, runs_csv = results / f"{name}_epochs.csv", results / f"{name}_runs.csv"
    done = {(str(r["method"]), int(r["seed"])) for r in read_rows(runs_csv)
            if not (cfg.get("retry_failed") and r.get("status") == "failed")}
    todo = [(m, s, a) for m, s, a in plan(cfg) if (m, s) not in done]
    total = len(plan(cfg))
    print(f"suite {name}: {total} runs, {total - len(todo)} already in {runs_csv}, {len(todo)} to run", flush=True)
    if cfg.get("dry_run"):
        for method, seed, args in todo:
            print(f"  {method} seed {seed}: python -m lipschitz_lightning.train {shlex.join(args)}")
        return 0
    _copy_data(cfg)
    host = machine()
    python = str(cfg.get("python") or sys.executable)
    budget = cfg.get("time_budget_s")
    began = time.perf_counter()
    for index, (method, seed, args) in enumerate(todo, 1):
        if budget is not None and time.perf_counter() - began > float(budget):
            print(f"time budget of {budget} s spent: {len(todo) - index + 1} runs left for the next call", flush=True)
            return index - 1
        run_dir = Path(str(cfg.runs_dir)) / name / method / f"seed{seed}"
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a run cut off half-way starts again from scratch
        command = [python, "-m", "lipschitz_lightning.train", *args, f"hydra.run.dir={run_dir}"]
        print(f"[{index}/{len(todo)}] {name} {method} seed {seed} ...", end=" ", flush=True)
        start = time.perf_counter()
        env = dict(os.environ, PYTHONWARNINGS="ignore", **{str(k): str(v) for k, v in (cfg.suite.get("env") or {}).items()})
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        metrics_csv = run_dir / "csv" / "metrics.csv"
        rows = epoch_rows(metrics_csv) if metrics_csv.exists() else []
        tests = test_metrics(metrics_csv) if metrics_csv.exists() else {}
        status = "ok" if proc.returncode == 0 else "failed"
        error = "" if status == "ok" else _last_line(proc.stderr + proc.stdout)
        if status == "failed":
            (run_dir).mkdir(parents=True, exist_ok=True)
            (run_dir / "stderr.txt").write_text(proc.stderr)
        append_rows(epochs_csv, EPOCH_COLUMNS, [dict(r, suite=name, method=method, seed=seed) for r in rows])
        shown = " ".join(shlex.quote(a) for a in ["python", "-m", "lipschitz_lightning.train", *args])
        append_rows(runs_csv, RUN_COLUMNS, [dict(
            host, suite=name, method=method, seed=seed, epochs=len(rows), status=status,
            returncode=proc.returncode, test_acc=tests.get("test/acc"), test_loss=tests.get("test/loss"),
            wall_seconds=round(wall, 2), error=error, command=shown,
            finished_at=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))])
        acc = tests.get("test/acc")
        print(f"{status} in {wall:.0f}s" + (f", test acc {acc:.4f}" if acc is not None else "")
              + (f" ({error})" if error else ""), flush=True)
    return len(todo)
