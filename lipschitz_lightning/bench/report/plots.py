"""The report's figures (matplotlib, drawn headless): per-epoch curves of a suite's methods, and the
classical experiments' loss curves (paper Figure 1)."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Tuple

from lipschitz_lightning.bench.report.kinds import method_kind, method_label
from lipschitz_lightning.bench.report.stats import number

__all__ = ["plot_classical", "plot_curves"]

Curves = "OrderedDict[str, Tuple[List[int], List[float]]]"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(method: str) -> Dict[str, object]:
    """LipschitzLR rules solid and thick, the other methods dashed."""
    if method_kind(method).lipschitz:
        return {"linestyle": "-", "linewidth": 2.2}
    return {"linestyle": "--", "linewidth": 1.2}


def plot_curves(curves: Curves, title: str, ylabel: str, path: Path, log: bool = False) -> None:
    """One line per method (the mean over seeds per epoch, :func:`~.stats.curves`) into the PNG ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for index, (method, (xs, ys)) in enumerate(curves.items()):
        ax.plot(xs, ys, marker="o", markersize=3, label=method_label(method), color=plt.cm.tab20(index % 20), **_style(method))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_classical(curves: List[Dict[str, str]], t1: Dict[str, Dict[str, str]], path: Path) -> None:
    """One panel per data set of ``classical_curves.csv``: the loss per epoch at both rates, log-log,
    with the data set's Table 1 threshold (``t1``: its rows by data set) dotted."""
    plt = _pyplot()
    sets = list(OrderedDict.fromkeys(r["dataset"] for r in curves))
    cols = min(3, len(sets))
    rows = math.ceil(len(sets) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, sets):
        for rate, style in (("alpha", "--"), ("inv_L", "-")):
            pts = [(int(r["epoch"]) + 1, float(r["loss"])) for r in curves if r["dataset"] == name and r["rate"] == rate]
            if pts:
                ax.plot(*zip(*pts), style, label="alpha = 0.1" if rate == "alpha" else "alpha = 1/L")
        threshold = number(t1.get(name, {}).get("threshold"))
        if threshold:
            ax.axhline(threshold, color="grey", linestyle=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch + 1")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(sets):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
