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
interrupted suite resumes where it stopped.

Each run has its own folder, ``<runs_dir>/<suite>/<method>/seed<k>`` (``hydra.run.dir``), where the
app writes ``last.ckpt`` at every epoch's end and ``on_exception.ckpt`` when it is stopped. A run
cut off half-way (not in the runs file) whose folder holds a checkpoint continues from it with the
app's ``resume=<run folder>`` (its exact resume: the same rates, losses and accuracies as an
uninterrupted run); the runner prints, per run, whether it starts or resumes and from which epoch
and step. Its CSV log of the earlier call(s) is kept under ``<run folder>/bench_parts/`` (the
logger starts a new one) and its epochs are read from all the parts, an epoch logged again taking
the later values; ``bench/elapsed_seconds`` of a resumed part and the run's ``wall_seconds`` count
the earlier parts' time up to their last epoch before the resume point. A run that failed and is
retried (``retry_failed=true``) starts over in a fresh folder.

SIGTERM or SIGINT (Ctrl-C) to the runner is passed on to the running training process, which runs
in a process group of its own so that a signal sent to the runner's group reaches it once: it
finishes its batch and writes ``on_exception.ckpt``; the runner then records nothing for that run,
starts no other one and exits with 128 + the signal's number. The same command resumes the suite.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from lipschitz_lightning.bench.results import (
    EPOCH_COLUMNS,
    EPOCH_METRICS,
    RUN_COLUMNS,
    append_rows,
    read_metrics,
    read_rows,
    test_metrics,
)

__all__ = ["BenchConfigError", "SuiteInterrupted", "machine", "method_overrides", "plan", "run_suite"]

PROBE = "+callbacks.bench_probe._target_=lipschitz_lightning.bench.callbacks.BenchProbe"


# A run's CSV logs of the calls before a resume (the logger replaces csv/metrics.csv when it starts).
PARTS = "bench_parts"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class BenchConfigError(ValueError):
    """A suite or method list that cannot run (one-line message)."""


class SuiteInterrupted(Exception):
    """A stop signal ended the suite; ``status`` is the exit status (128 + the signal's number)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def method_overrides(cfg: DictConfig) -> Dict[str, List[str]]:
    """Method name -> training-app overrides: the ``methods`` group plus ``suite.extra_methods``.

    A method whose value is null runs as ``optim=<name>``. ``only`` (the command line's, else the
    suite's own: a suite that runs a few methods, e.g. ``cifar10_long``) picks some, in its order.
    """
    methods: Dict[str, List[str]] = {}
    for source in (cfg.get("methods") or {}, cfg.suite.get("extra_methods") or {}):
        for name, overrides in source.items():
            methods[str(name)] = [f"optim={name}"] if overrides is None else [str(o) for o in overrides]
    only = cfg.get("only") or cfg.suite.get("only")
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


class _PassOn:
    """While the suite runs: SIGTERM and SIGINT are recorded and passed on to the running training
    process (once per signal received); no further run starts. A signal ignored here (SIGINT in a
    session started in the background) stays ignored, and only the main thread can install
    handlers: elsewhere the signals keep their handling."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.child: Optional[subprocess.Popen] = None
        self._saved: Dict[int, Any] = {}

    def __enter__(self) -> "_PassOn":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = self.signum or signum
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signum)


def _stopped_by(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def _resume_point(run_dir: Path) -> Tuple[Optional[str], str]:
    """``(resume, how)`` for a run's folder: the folder to continue (``resume=``) and what the runner
    prints (``resumes from last.ckpt (after epoch 2, step 80)``), or ``(None, "starts")`` when the
    folder holds no intact checkpoint (it is then removed: nothing in it to keep)."""
    from lipschitz_lightning.app.checkpoints import pick_resume

    try:
        chosen, note = pick_resume(run_dir / "checkpoints")
        return str(run_dir), f"resumes from {chosen.describe()}" + (f" [{note}]" if note else "")
    except FileNotFoundError:
        pass
    except ValueError as exc:  # none of its checkpoints is intact
        print(f"  {run_dir}: {str(exc).splitlines()[0]}: starts over", flush=True)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return None, "starts"


def _keep_log(run_dir: Path) -> None:
    """Move the run's CSV log of the previous call into ``bench_parts/`` before a resume."""
    log = run_dir / "csv" / "metrics.csv"
    if log.exists():
        parts = run_dir / PARTS
        parts.mkdir(exist_ok=True)
        log.rename(parts / f"metrics_{len(list(parts.glob('metrics_*.csv'))) + 1:03d}.csv")


def _run_epochs(run_dir: Path) -> Tuple[List[Dict[str, float]], float]:
    """The run's epoch rows from all its CSV logs (the parts before each resume, then the last),
    and the seconds of the earlier parts that the rows count.

    An epoch logged again by a later part takes that part's values. A later part's
    ``bench/elapsed_seconds`` restarted with it: the elapsed seconds of the epochs before it are
    added (the time an interrupted call spent after its checkpoint is not counted)."""
    files = sorted((run_dir / PARTS).glob("metrics_*.csv")) + [run_dir / "csv" / "metrics.csv"]
    merged: Dict[int, Dict[str, float]] = {}
    offset = 0.0
    for index, path in enumerate(p for p in files if p.exists()):
        part = read_metrics([path], EPOCH_METRICS.__contains__, test_rows=False)
        part = {e: v for e, v in part.items() if v}
        if not part:
            continue
        first = min(part)
        if index:
            before = [v["bench/elapsed_seconds"] for e, v in merged.items() if e < first and "bench/elapsed_seconds" in v]
            offset = max(before, default=0.0)
            for values in part.values():
                if "bench/elapsed_seconds" in values:
                    values["bench/elapsed_seconds"] += offset
        merged = {e: v for e, v in merged.items() if e < first}
        merged.update(part)
    return [dict(values, epoch=epoch) for epoch, values in sorted(merged.items())], offset


def _launch(command: List[str], env: Dict[str, str], stop: _PassOn) -> Tuple[int, str, str, float]:
    """Run one training process to its end: ``(exit status, stdout, stderr, wall seconds)``. It gets
    a process group of its own, so that a signal sent to the runner's group reaches it once (passed
    on by ``stop``), not twice (the app stops at once on a second Ctrl-C, without its checkpoint)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    stop.child = proc
    try:
        stdout, stderr = proc.communicate()
    finally:
        stop.child = None
    return proc.returncode, stdout, stderr, time.perf_counter() - start


def _stop_signal(returncode: int, stop: _PassOn) -> Optional[int]:
    """The stop signal that ended a run that did not finish (None: it failed on its own). A run the
    runner passed a signal to, or one that stopped on a signal sent to it alone (exit 143/130)."""
    if returncode == 0:
        return None
    if stop.signum is not None:
        return stop.signum
    if returncode in (130, -signal.SIGINT):
        return signal.SIGINT
    return signal.SIGTERM if returncode in (143, -signal.SIGTERM) else None


def _record(cfg: DictConfig, host: Dict[str, object], method: str, seed: int, args: List[str], run_dir: Path,
            outcome: Tuple[int, str, str, float]) -> str:
    """Append a finished run's epochs and its row to the suite's results files; return its line."""
    name, results = str(cfg.suite.name), Path(str(cfg.results_dir))
    returncode, stdout, stderr, wall = outcome
    metrics_csv = run_dir / "csv" / "metrics.csv"
    rows, earlier = _run_epochs(run_dir)
    tests = test_metrics(metrics_csv) if metrics_csv.exists() else {}
    status = "ok" if returncode == 0 else "failed"
    error = "" if status == "ok" else _last_line(stderr + stdout)
    if status == "failed":
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "stderr.txt").write_text(stderr)
    append_rows(results / f"{name}_epochs.csv", EPOCH_COLUMNS, [dict(r, suite=name, method=method, seed=seed) for r in rows])
    shown = " ".join(shlex.quote(a) for a in ["python", "-m", "lipschitz_lightning.train", *args])
    append_rows(results / f"{name}_runs.csv", RUN_COLUMNS, [dict(
        host, suite=name, method=method, seed=seed, epochs=len(rows), status=status,
        returncode=returncode, test_acc=tests.get("test/acc"), test_loss=tests.get("test/loss"),
        wall_seconds=round(wall + earlier, 2), error=error, command=shown,
        finished_at=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))])
    acc = tests.get("test/acc")
    return (f"{status} in {wall:.0f}s" + (f", test acc {acc:.4f}" if acc is not None else "")
            + (f" ({error})" if error else ""))


def run_suite(cfg: DictConfig) -> int:
    """Run every (method, seed) of ``cfg`` not yet in the runs file; return the number run.

    Raises:
        SuiteInterrupted: a stop signal (SIGTERM, SIGINT) ended the suite; the run it stopped is
            not recorded and resumes at the next call.
    """
    name = str(cfg.suite.name)
    runs_csv = Path(str(cfg.results_dir)) / f"{name}_runs.csv"
    recorded = [(str(r["method"]), int(r["seed"]), r.get("status")) for r in read_rows(runs_csv)]
    retried = {(m, s) for m, s, status in recorded if cfg.get("retry_failed") and status == "failed"}
    done = {(m, s) for m, s, _ in recorded} - retried
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
    env = dict(os.environ, PYTHONWARNINGS="ignore", **{str(k): str(v) for k, v in (cfg.suite.get("env") or {}).items()})
    budget = cfg.get("time_budget_s")
    began = time.perf_counter()
    with _PassOn() as stop:
        for index, (method, seed, args) in enumerate(todo, 1):
            left = len(todo) - index + 1
            if stop.signum is not None:
                raise SuiteInterrupted(f"stopped by {_stopped_by(stop.signum)}: {left} runs left; "
                                       "run the same command to go on", 128 + stop.signum)
            if budget is not None and time.perf_counter() - began > float(budget):
                print(f"time budget of {budget} s spent: {left} runs left for the next call", flush=True)
                return index - 1
            run_dir = Path(str(cfg.runs_dir)) / name / method / f"seed{seed}"
            if (method, seed) in retried and run_dir.exists():
                shutil.rmtree(run_dir)  # a failed run retried starts over
            resume, how = _resume_point(run_dir)
            if resume is not None:
                _keep_log(run_dir)
            command = [python, "-m", "lipschitz_lightning.train", *args, f"hydra.run.dir={run_dir}",
                       *([f"resume={resume}"] if resume is not None else [])]
            print(f"[{index}/{len(todo)}] {name} {method} seed {seed} {how} ...", end=" ", flush=True)
            outcome = _launch(command, env, stop)
            signum = _stop_signal(outcome[0], stop)
            if signum is not None:
                print(f"stopped by {_stopped_by(signum)} after {outcome[3]:.0f}s: not recorded; its checkpoint "
                      f"in {run_dir} is resumed by the same command", flush=True)
                raise SuiteInterrupted(f"stopped by {_stopped_by(signum)}: {name} {method} seed {seed} and "
                                       f"{left - 1} more runs left; run the same command to resume", 128 + signum)
            print(_record(cfg, host, method, seed, args, run_dir, outcome), flush=True)
        if stop.signum is not None:
            raise SuiteInterrupted(f"stopped by {_stopped_by(stop.signum)} after the last run finished", 128 + stop.signum)
    return len(todo)
