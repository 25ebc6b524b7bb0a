"""Draw the per-epoch learning-rate statistics and accuracies of runs into one PNG (paper Figure 3).

::

    python -m lipschitz_lightning.plot logs/train/runs/2026-11-29_10-00-00
    python -m lipschitz_lightning.plot logs/train/multiruns/2026-11-29_10-00-00 -o first_epoch_x.png
    python -m lipschitz_lightning.plot run_a run_b --keys lipschitz/lr val/acc

Each argument is a run folder or any folder above runs (a multirun, ``logs/``): every run below
it is drawn. A run is read from its CSV logger (``csv/metrics.csv``) or, without one, from its
TensorBoard event files (which needs the ``tensorboard`` package of the ``[app]`` extra); no
TensorBoard server is involved. One panel per key: every logged ``lipschitz/*`` key and the
training and validation accuracy (or loss, for regression), against the epoch (integer ticks);
the rate, ``L`` and ``K`` panels on a log scale. One line per run, in one colour in every panel,
labelled by what differs between the runs' overrides (``optim=adamo``) or by folder.
Needs matplotlib (``pip install "lipschitz-lightning[bench]"``).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from lipschitz_lightning.bench.results import read_metrics

__all__ = ["PlotError", "draw_runs", "find_runs", "main", "plot_runs", "read_run"]

log = logging.getLogger(__name__)

# One run's curves: key -> {epoch (0-based): value}.
Curves = Dict[str, Dict[int, float]]

# Besides every lipschitz/* key: the accuracies, or the losses where a run has no accuracy.
EXTRA_KEYS = ("train/acc", "val/acc")
FALLBACK_KEYS = ("train/loss", "val/loss")


class PlotError(RuntimeError):
    """Nothing to draw (no runs, no logged values) or a missing package; the message is one line."""


def _run_dir(log_file: Path) -> Path:
    """The run folder of a log file: the nearest folder above it holding Hydra's ``.hydra/``."""
    for folder in log_file.parents:
        if (folder / ".hydra").is_dir():
            return folder
    return log_file.parent


def find_runs(paths: Sequence[Path]) -> List[Path]:
    """Every run folder at or below ``paths`` (a run has a metrics.csv or TensorBoard events)."""
    runs: List[Path] = []
    for path in paths:
        if not Path(path).exists():
            raise PlotError(f"no such folder: {path}")
        found = list(Path(path).rglob("metrics.csv")) + list(Path(path).rglob("events.out.tfevents.*"))
        for run in sorted({_run_dir(f) for f in found}):
            if run not in runs:
                runs.append(run)
    return runs


def _wanted(key: str) -> bool:
    return key.startswith("lipschitz/") or key in EXTRA_KEYS or key in FALLBACK_KEYS


def _read_csv(files: List[Path]) -> Curves:
    curves: Curves = {}
    for epoch, values in read_metrics(files, _wanted).items():  # a resumed run's later row wins
        for key, value in values.items():
            curves.setdefault(key, {})[epoch] = value
    return curves


def _read_tensorboard(files: List[Path]) -> Curves:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as exc:
        raise PlotError(
            "reading TensorBoard event files needs the tensorboard package (pip install \"lipschitz-lightning[app]\"); "
            "or train with logger=csv"
        ) from exc
    curves: Curves = {}
    for folder in sorted({f.parent for f in files}):
        logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its file-watcher chatter
        accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        accumulator.Reload()
        tags = accumulator.Tags()["scalars"]
        if "epoch" not in tags:
            continue
        # Lightning logs the epoch next to every value, at the same global step.
        epoch_at = {event.step: int(event.value) for event in accumulator.Scalars("epoch")}
        for tag in filter(_wanted, tags):
            for event in accumulator.Scalars(tag):
                if event.step in epoch_at:
                    curves.setdefault(tag, {})[epoch_at[event.step]] = float(event.value)
    return curves


def read_run(run: Path) -> Curves:
    """The per-epoch values of one run: its CSV logger's if it has one, else its TensorBoard events."""
    csv_files = sorted(run.rglob("metrics.csv"))
    if csv_files:
        return _read_csv(csv_files)
    return _read_tensorboard(sorted(run.rglob("events.out.tfevents.*")))


def _overrides(run: Path) -> List[str]:
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [line[2:].strip() for line in path.read_text().splitlines() if line.startswith("- ")]


def _labels(runs: List[Path]) -> List[str]:
    """What sets each run apart: the overrides not shared by all runs, else the folder's name."""
    overrides = [_overrides(run) for run in runs]
    shared = set.intersection(*map(set, overrides)) if len(runs) > 1 else set()
    labels = []
    for run, own in zip(runs, overrides):
        differing = [o for o in own if o not in shared and not o.startswith("hydra.")]
        labels.append(" ".join(differing) if differing and len(runs) > 1 else run.name)
    if len(set(labels)) < len(labels):  # fall back to the shortest folder paths that tell them apart
        depth = next((d for d in range(2, max(len(run.parts) for run in runs) + 1)
                      if len({run.parts[-d:] for run in runs}) == len(runs)), None)
        if depth is None:
            return [str(run) for run in runs]
        labels = ["/".join(run.parts[-depth:]) + (f" {label}" if label != run.name else "")
                  for run, label in zip(runs, labels)]
    return labels


def _keys(curves: List[Curves], keys: Optional[Sequence[str]]) -> List[str]:
    present = {key for run in curves for key in run}
    if keys:
        missing = [k for k in keys if k not in present]
        if missing:
            raise PlotError(f"no run logged {', '.join(missing)}; logged: {', '.join(sorted(present))}")
        return list(keys)
    # Flags such as lipschitz/capped that stayed 0 in every epoch of every run say nothing drawn.
    silent = {k for k in present if all(v == 0.0 for run in curves for v in run.get(k, {}).values())}
    if silent & {k for k in present if k.startswith("lipschitz/")}:
        log.info(f"not drawn, 0 in every epoch of every run: {', '.join(sorted(k for k in silent if k.startswith('lipschitz/')))}")
    lipschitz = sorted(k for k in present if k.startswith("lipschitz/") and k not in silent)
    # The rate first: it is what the figure is about.
    lipschitz.sort(key=lambda k: (k != "lipschitz/lr", k))
    extra = [k for k in EXTRA_KEYS if k in present] or [k for k in FALLBACK_KEYS if k in present]
    return lipschitz + extra


def _log_scale(key: str) -> bool:
    """The rate, L and the K panels span decades (auto_adam's 1e-3 next to sgd's 0.5): log scale."""
    name = key[len("lipschitz/"):] if key.startswith("lipschitz/") else ""
    return name in ("lr", "next_lr", "L") or name.startswith("K")


def _drawable(paths: Sequence[Path], keys: Optional[Sequence[str]]) -> Tuple[List[Path], List[Curves], List[str]]:
    """The runs below ``paths`` that logged per-epoch values, their curves, and the keys to draw.

    Raises:
        PlotError: no run, nothing logged, or an unknown key.
    """
    runs = find_runs(paths)
    if not runs:
        raise PlotError(f"no run logs (metrics.csv or TensorBoard events) under {', '.join(map(str, paths))}")
    curves = [read_run(run) for run in runs]
    drawn = [(run, c) for run, c in zip(runs, curves) if c]
    if not drawn:
        raise PlotError(f"the runs under {', '.join(map(str, paths))} logged no per-epoch values yet")
    runs, curves = [run for run, _ in drawn], [c for _, c in drawn]
    names = _keys(curves, keys)
    if not names:
        raise PlotError("the runs logged no lipschitz/* key and no accuracy or loss")
    return runs, curves, names


def draw_runs(paths: Sequence[Path], keys: Optional[Sequence[str]] = None) -> Tuple[Any, List[Path], List[str]]:
    """Draw every run below ``paths`` into a new matplotlib figure; return it, the runs and the keys.

    One panel per key; each run keeps one colour (and line style) in every panel and in the
    figure's one legend, also in a panel that only some runs logged (``lipschitz/K1``). The
    rate, ``L`` and ``K`` panels are log scale, the epochs (1-based) integer ticks. The caller
    closes the figure (``matplotlib.pyplot.close``).

    Raises:
        PlotError: no run, nothing logged, an unknown key, or matplotlib missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise PlotError("plotting needs matplotlib: pip install \"lipschitz-lightning[bench]\"") from exc

    runs, curves, names = _drawable(paths, keys)
    labels = _labels(runs)
    # The style of each run, fixed once for every panel: ten colours, then the next line style.
    palette = plt.get_cmap("tab10").colors
    styles = [dict(color=palette[i % len(palette)], linestyle=("-", "--", ":", "-.")[(i // len(palette)) % 4])
              for i in range(len(runs))]

    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.4 * rows), squeeze=False)
    for index, key in enumerate(names):
        ax = axes[index // columns][index % columns]
        positive = False
        for label, style, run_curves in zip(labels, styles, curves):
            points = sorted(run_curves.get(key, {}).items())
            if points:
                values = [value for _, value in points]
                positive = positive or any(v > 0 and math.isfinite(v) for v in values)
                ax.plot([epoch + 1 for epoch, _ in points], values, marker="o" if len(points) <= 30 else None,
                        markersize=3, label=label, **style)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if _log_scale(key) and positive:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if key == "lipschitz/grad_max_over_L":
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)  # the bound holds at or under 1
    for index in range(len(names), rows * columns):
        axes[index // columns][index % columns].axis("off")
    handles = [Line2D([], [], marker="o", markersize=3, **style) for style in styles]
    figure.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize="small",
                  bbox_to_anchor=(0.5, 0.0))
    figure.tight_layout(rect=(0, (0.1 + 0.05 * math.ceil(len(labels) / 4)) / rows, 1, 1))
    return figure, runs, names


def plot_runs(paths: Sequence[Path], output: Path, keys: Optional[Sequence[str]] = None) -> Tuple[List[Path], List[str]]:
    """Draw every run below ``paths`` into ``output`` (PNG, see :func:`draw_runs`); return the runs and the keys drawn.

    Raises:
        PlotError: no run, nothing logged, an unknown key, or matplotlib missing.
    """
    figure, runs, names = draw_runs(paths, keys)
    import matplotlib.pyplot as plt

    try:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(output, dpi=120)
    finally:
        plt.close(figure)
    return runs, names


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lipschitz_lightning.plot",
        description="Draw the per-epoch lipschitz/* values and accuracies of runs into one PNG.",
    )
    parser.add_argument("folders", nargs="+", type=Path, help="run or multirun folders (or logs/)")
    parser.add_argument("-o", "--output", type=Path, default=Path("lipschitz_curves.png"), help="PNG to write")
    parser.add_argument("--keys", nargs="+", help="only these keys (default: every lipschitz/* key and the accuracies)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        runs, names = plot_runs(args.folders, args.output, args.keys)
    except PlotError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    log.info(f"{len(runs)} run(s), {len(names)} panel(s) ({', '.join(names)}) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
