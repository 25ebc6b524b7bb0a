"""Generate ``docs/benchmarks.md`` and its PNGs from the committed raw results (never by hand).

::

    python -m lipschitz_lightning.bench.report                    # benchmarks/results -> docs/
    python -m lipschitz_lightning.bench.report results_dir=/tmp/r out=/tmp/r/benchmarks.md

Every figure in the report is computed here from ``benchmarks/results/*.csv``: the suites'
``<suite>_runs.csv`` / ``<suite>_epochs.csv`` (written by ``python -m lipschitz_lightning.bench``)
and the classical tables ``classical_table1.csv``, ``classical_table2.csv``,
``classical_curves.csv`` (written by ``python -m lipschitz_lightning.classical``). The short
readings are sentences filled in from the same numbers.
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from lipschitz_lightning.bench.results import read_rows

__all__ = ["LIPSCHITZ", "REFERENCE", "generate", "summarise"]

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
# The LipschitzLR methods (their optim file has a LipschitzLR callback) and the reference of the
# seconds-per-step ratio. Methods are read from the results; these only label them.
LIPSCHITZ: Tuple[str, ...] = ("sgd", "adamo", "rmsprop", "auto_adam")
REFERENCE = "sgd_fixed"
# The learning-rate-free competitors, by the package their optimizer comes from.
LR_FREE_PACKAGES: Tuple[str, ...] = ("prodigyopt", "dadaptation", "dog", "schedulefree", "prodigyplus")
# How close our best rule must come to the best learning-rate-free optimizer (points of final test
# accuracy at equal epochs), per suite; the bar issue 7 set.
OURS_WITHIN: Dict[str, float] = {"mnist": 0.5, "cifar10": 3.0, "gpu_mnist": 0.5, "gpu_cifar10": 3.0}
SUITES: Tuple[str, ...] = ("digits", "mnist", "cifar10", "gpu_mnist", "gpu_cifar10")


def _is_lipschitz(method: str) -> bool:
    return method in LIPSCHITZ or _rule(method) is not None


def _optim(method: str) -> Optional[DictConfig]:
    path = CONF / "optim" / f"{method}.yaml"
    return OmegaConf.load(path) if path.exists() else None


def _rule(method: str) -> Optional[str]:
    """The LipschitzLR rule a method's optim file schedules with (None: no LipschitzLR)."""
    node = _optim(method)
    callback = node.get("callback") if node is not None else None
    return str(callback.get("rule")) if callback is not None and "LipschitzLR" in str(callback.get("_target_")) else None


def _kind(method: str) -> str:
    """``paper`` (one of the paper's four rules), ``ours`` (a rule of our own), ``lr_free`` (a
    learning-rate-free optimizer from its own package) or ``other`` (fixed and tuned baselines);
    read from the method's optim file and the rule registry."""
    from lipschitz_lightning.math.rules import RULES

    rule = _rule(method)
    if rule is not None:
        return "paper" if RULES[rule].paper else "ours"
    node = _optim(method)
    target = str(node.optimizer.get("_target_", "")) if node is not None and node.get("optimizer") else ""
    return "lr_free" if target.split(".")[0] in LR_FREE_PACKAGES else "other"


def _family(method: str) -> Tuple[str, bool]:
    """The optimizer a method steps with and whether it uses momentum: the paper's rule of the
    same family is the one with the same pair."""
    node = _optim(method)
    optimizer = node.get("optimizer") if node is not None else None
    if optimizer is None:
        return ("", False)
    return (str(optimizer.get("_target_")), float(optimizer.get("momentum") or 0.0) > 0)


def _rollback_text(rollbacks: Sequence[Tuple[int, int]]) -> str:
    """What the guard did, over the runs whose results record ``lipschitz/rollbacks``."""
    if not rollbacks:
        return ""
    hit = [(seed, n) for seed, n in rollbacks if n > 0]
    if not hit:
        return f"; the guard rolled back no epoch ({len(rollbacks)} run(s) recorded)"
    return (f"; the guard rolled back {sum(n for _, n in hit)} epoch(s) in {len(hit)} of {len(rollbacks)} recorded run(s) "
            f"(seed(s) {', '.join(str(seed) for seed, _ in hit)})")


def _finite(values: Iterable[Optional[float]]) -> List[float]:
    return [float(v) for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]


def _mean_spread(values: Sequence[float]) -> Tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt_pct(mean: float, spread: Optional[float] = None) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{100 * mean:.2f}" + (f" ± {100 * spread:.2f}" if spread is not None and math.isfinite(spread) and spread > 0 else "")


def _fmt(value: Optional[float], digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}g}"


def _suite_cfg(name: str) -> Dict[str, object]:
    path = CONF / "suite" / f"{name}.yaml"
    if not path.exists():
        return {"name": name, "title": name}
    node = OmegaConf.load(path)
    return {k: node.get(k) for k in ("name", "title", "epochs", "seeds", "target_acc", "chance_acc", "check")}


def summarise(runs: List[Dict[str, object]], epochs: List[Dict[str, object]], target: float,
              chance: float) -> "OrderedDict[str, Dict[str, object]]":
    """Per method: accuracies, time to target, cost, divergence and LR figures over its runs.

    ``epochs`` rows are one per run and epoch (``val/acc`` is the test split's accuracy);
    ``runs`` rows one per run. Divergence of a run: a NaN/inf training loss, a final accuracy at
    most 1.5x chance, or a final training loss above the first epoch's.
    """
    by_run: Dict[Tuple[str, int], List[Dict[str, object]]] = OrderedDict()
    for row in epochs:
        by_run.setdefault((str(row["method"]), int(row["seed"])), []).append(row)
    order: List[str] = []
    for row in runs:
        if row["method"] not in order:
            order.append(str(row["method"]))
    out: "OrderedDict[str, Dict[str, object]]" = OrderedDict()
    for method in order:
        method_runs = [r for r in runs if r["method"] == method]
        best, final, to_epochs, to_seconds, steps, state, diverged, lrs, ratios_g = [], [], [], [], [], [], [], [], []
        rollbacks: List[Tuple[int, int]] = []  # (seed, epochs the guard rolled back), runs that recorded it
        reached = 0
        epochs_ran = []
        for run in method_runs:
            rows = sorted(by_run.get((method, int(run["seed"])), []), key=lambda r: r["epoch"])
            epochs_ran.append(len(rows))
            accs = [r.get("val/acc") for r in rows]
            finite_accs = _finite(accs)
            losses = [r.get("train/loss") for r in rows]
            nan = any(v is None or not math.isfinite(v) for v in losses) or run.get("status") != "ok"
            if finite_accs:
                best.append(max(finite_accs))
                final.append(finite_accs[-1] if accs and accs[-1] is not None and math.isfinite(accs[-1]) else 0.0)
            end_acc = finite_accs[-1] if finite_accs else 0.0
            fl = _finite(losses)
            rising = len(fl) >= 2 and fl[-1] > fl[0]
            if nan or end_acc <= 1.5 * chance or rising:
                diverged.append((int(run["seed"]), "NaN/failed" if nan else ("chance" if end_acc <= 1.5 * chance else "loss up")))
            for r in rows:
                acc = r.get("val/acc")
                if acc is not None and math.isfinite(acc) and acc >= target - 1e-6:  # float32 accuracies
                    reached += 1
                    to_epochs.append(int(r["epoch"]) + 1)
                    if r.get("bench/elapsed_seconds") is not None:
                        to_seconds.append(float(r["bench/elapsed_seconds"]))
                    break
            steps += _finite(r.get("bench/step_seconds") for r in rows)
            state += _finite(r.get("bench/state_bytes_per_param") for r in rows)
            lrs += _finite((r.get("lipschitz/lr") if r.get("lipschitz/lr") is not None else r.get("bench/lr")) for r in rows)
            ratios_g += _finite(r.get("lipschitz/grad_max_over_L") for r in rows)
            counted = _finite(r.get("lipschitz/rollbacks") for r in rows)  # cumulative per run
            if counted:
                rollbacks.append((int(run["seed"]), int(max(counted))))
        out[method] = {
            "runs": len(method_runs), "seeds": sorted(int(r["seed"]) for r in method_runs),
            "epochs": max(epochs_ran) if epochs_ran else 0,
            "best": _mean_spread(best), "final": _mean_spread(final),
            "reached": reached, "epochs_to_target": statistics.median(to_epochs) if to_epochs else None,
            "seconds_to_target": statistics.median(to_seconds) if to_seconds else None,
            "step_seconds": statistics.median(steps) if steps else None,
            "state_bytes": max(state) if state else None,
            "diverged": diverged, "lr_min": min(lrs) if lrs else None, "lr_max": max(lrs) if lrs else None,
            "grad_max_over_L": max(ratios_g) if ratios_g else None, "lipschitz": _is_lipschitz(method),
            "rollbacks": rollbacks,
        }
    # Ratio per seed (runs of one seed ran back to back, under about the same machine load), then the median.
    per_seed: Dict[Tuple[str, int], float] = {}
    for (method, seed), rows in by_run.items():
        steps = _finite(r.get("bench/step_seconds") for r in rows)
        if steps:
            per_seed[(method, seed)] = statistics.median(steps)
    for method, stats in out.items():
        ratios = [v / per_seed[(REFERENCE, seed)] for (m, seed), v in per_seed.items()
                  if m == method and per_seed.get((REFERENCE, seed))]
        stats["step_ratio"] = statistics.median(ratios) if ratios else None
    return out


def _curves(epochs: List[Dict[str, object]], key: str) -> "OrderedDict[str, Tuple[List[int], List[float]]]":
    """Per method, the mean over seeds of ``key`` per epoch (1-based)."""
    acc: "OrderedDict[str, Dict[int, List[float]]]" = OrderedDict()
    for row in epochs:
        value = row.get(key)
        if key == "lr":
            value = row.get("lipschitz/lr") if row.get("lipschitz/lr") is not None else row.get("bench/lr")
        if value is None or not math.isfinite(value):
            continue
        acc.setdefault(str(row["method"]), {}).setdefault(int(row["epoch"]) + 1, []).append(float(value))
    return OrderedDict((m, (sorted(d), [statistics.fmean(d[e]) for e in sorted(d)])) for m, d in acc.items())


def _style(method: str) -> Dict[str, object]:
    return {"linestyle": "-", "linewidth": 2.2} if _is_lipschitz(method) else {"linestyle": "--", "linewidth": 1.2}


def _plot(curves, title: str, ylabel: str, path: Path, log: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for index, (method, (xs, ys)) in enumerate(curves.items()):
        ax.plot(xs, ys, marker="o", markersize=3, label=method, color=plt.cm.tab20(index % 20), **_style(method))
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


def _machine(runs: List[Dict[str, object]]) -> str:
    """The machines and versions the runs had (each distinct one once), then the commits they ran."""
    keys = ("cpu", "cpu_count", "device", "torch", "lightning")
    text = lambda r, k: str(int(r[k]) if isinstance(r.get(k), float) else r.get(k))  # noqa: E731
    machines = OrderedDict((tuple(text(r, k) for k in keys), None) for r in runs)
    commits = OrderedDict((text(r, "git_commit"), None) for r in runs)
    return ("; ".join(", ".join(f"{k} {v}" for k, v in zip(keys, m)) for m in machines)
            + f"; git commits {', '.join(commits)}")


def _suite_section(name: str, results: Path, img: Path, out_dir: Path) -> Tuple[List[str], Optional[Dict[str, object]]]:
    runs, epochs = read_rows(results / f"{name}_runs.csv"), read_rows(results / f"{name}_epochs.csv")
    if not runs:
        return [], None
    cfg = _suite_cfg(name)
    target, chance = float(cfg.get("target_acc") or 0.9), float(cfg.get("chance_acc") or 0.1)
    stats = summarise(runs, epochs, target, chance)
    lines = [f"## Suite `{name}`: {cfg.get('title', name)}", ""]
    planned_seeds = list(cfg.get("seeds") or [])
    ran_seeds = sorted({int(r["seed"]) for r in runs})
    lines.append(f"**What ran**: {len(runs)} runs, {len(stats)} methods, seeds {ran_seeds}, "
                 f"epochs per run {sorted({s['epochs'] for s in stats.values()})} "
                 f"(the suite plans {cfg.get('epochs')} epochs x seeds {planned_seeds}). "
                 f"Machine: {_machine(runs)}.")
    ref_runs = {}
    for r in epochs:
        if r["method"] == REFERENCE and r.get("bench/step_seconds") is not None:
            ref_runs.setdefault(int(r["seed"]), []).append(float(r["bench/step_seconds"]))
    if len(ref_runs) > 1:
        medians = [statistics.median(v) for v in ref_runs.values()]
        lines.append(f"The machine's load varied between runs: `{REFERENCE}`'s median step took "
                     f"{min(medians) * 1000:.2f} to {max(medians) * 1000:.2f} ms across its {len(medians)} runs, "
                     "so read the s/step ratios as rough.")
    incomplete = [m for m, s in stats.items() if s["runs"] < len(planned_seeds)]
    methods_all = list(OmegaConf.load(CONF / "methods" / "all.yaml").keys())
    missing = [m for m in methods_all if m not in stats]
    walls = _finite(r.get("wall_seconds") for r in runs if r.get("status") == "ok")
    if (incomplete or missing) and walls:
        lines.append(f"Why not all ran: machine time. One run took {statistics.median(walls) / 60:.0f} minutes "
                     f"(median of {len(walls)}), and the suite resumes where it stopped "
                     f"(`python -m lipschitz_lightning.bench suite={name}`).")
    if incomplete:
        lines.append(f"Methods with fewer seeds than planned so far: {', '.join(incomplete)}.")
    if missing:
        lines.append(f"Not run yet (the suite resumes with them): {', '.join(missing)}.")
    check = cfg.get("check")
    if check:
        accs = [r.get("val/acc") for r in epochs if r["method"] == check["method"] and int(r["epoch"]) + 1 == int(check["epoch"])]
        accs = _finite(accs)
        if accs:
            ok = all(a >= float(check["min_acc"]) for a in accs)
            lines.append(f"**Framework check**: `{check['method']}` reached "
                         + ", ".join(f"{100 * a:.2f}%" for a in accs)
                         + f" test accuracy after {check['epoch']} epochs (required: at least {100 * float(check['min_acc']):.1f}%): "
                         + ("passed." if ok else "FAILED."))
        else:
            lines.append(f"**Framework check**: `{check['method']}` has not reached epoch {check['epoch']} yet "
                         f"(required: at least {100 * float(check['min_acc']):.1f}% after {check['epoch']} epochs).")
    lines += ["", f"Test accuracy is that of the test split after each epoch (the app validates on it); "
                  f"target {100 * target:.0f}%: epochs and wall seconds (since the fit's setup, so an "
                  f"LR finder or first-epoch probe counts) to reach it, median over the seeds that reached it. "
                  f"s/step ratio: a run's median training-step time over that of `{REFERENCE}` with the same seed (run "
                  f"back to back), median over seeds. "
                  f"State is the optimizer's tensors (state and param_groups) in bytes per parameter. "
                  f"Lipschitz rules in **bold**.", ""]
    lines.append("| method | runs | best acc % | final acc % | reached target | epochs to target | s to target "
                 "| s/step ratio | state B/param | LR range | max grad/L | diverged |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for method, s in stats.items():
        label = f"**{method}**" if s["lipschitz"] else method
        div = ", ".join(f"seed {seed}: {why}" for seed, why in s["diverged"]) or "no"
        lines.append(
            f"| {label} | {s['runs']} | {_fmt_pct(*s['best'])} | {_fmt_pct(*s['final'])} | {s['reached']}/{s['runs']} | "
            f"{_fmt(s['epochs_to_target'])} | {_fmt(s['seconds_to_target'])} | {_fmt(s['step_ratio'])} | "
            f"{_fmt(s['state_bytes'])} | {_fmt(s['lr_min'])}–{_fmt(s['lr_max'])} | {_fmt(s['grad_max_over_L'])} | {div} |")
    acc_png, lr_png = img / f"{name}_test_acc.png", img / f"{name}_lr.png"
    _plot(_curves(epochs, "val/acc"), f"{name}: test accuracy per epoch (mean over seeds)", "test accuracy", acc_png)
    _plot(_curves(epochs, "lr"), f"{name}: learning rate per epoch (LipschitzLR: the rate used; others: lr x d / eta)",
          "learning rate", lr_png, log=True)
    rel = lambda p: p.relative_to(out_dir).as_posix() if p.is_relative_to(out_dir) else p.as_posix()  # noqa: E731
    lines += ["", f"![test accuracy per epoch]({rel(acc_png)})", "", f"![learning rate per epoch, log scale]({rel(lr_png)})", ""]
    ratio = _curves(epochs, "lipschitz/grad_max_over_L")
    if ratio:
        ratio_png = img / f"{name}_grad_over_L.png"
        _plot(ratio, f"{name}: largest last-layer gradient entry / L per epoch (the bound holds while <= 1)",
              "grad_max / L", ratio_png, log=True)
        lines += [f"![grad_max over L per epoch]({rel(ratio_png)})", ""]
    reading, headline = _reading(name, stats, target, epochs)
    lines += ["**Reading** (generated from the table):", ""] + [f"- {r}" for r in reading] + [""]
    ours = _ours_against_lr_free(name, stats, epochs)
    if ours:
        lines += ["**Our rules against the learning-rate-free optimizers** (final test accuracy at the suite's "
                  "epochs, mean over the seeds that ran):", ""] + [f"- {r}" for r in ours] + [""]
    example = next((str(r["command"]) for r in runs if r.get("command")), "")
    lines += ["Commands: `python -m lipschitz_lightning.bench suite=" + name + "` (resumes), which runs per method and seed:",
              "", "```", example, "```", ""]
    return lines, headline


def _reading(name: str, stats, target: float, epochs) -> Tuple[List[str], Optional[Dict[str, object]]]:
    lip = {m: s for m, s in stats.items() if s["lipschitz"]}
    other = {m: s for m, s in stats.items() if not s["lipschitz"]}
    out: List[str] = []
    if not lip or not other:
        return ["Not enough methods ran to compare LipschitzLR with the others."], None
    key = lambda item: item[1]["best"][0] if math.isfinite(item[1]["best"][0]) else -1  # noqa: E731
    best_lip, best_other = max(lip.items(), key=key), max(other.items(), key=key)
    (lm, ls), (om, os_) = best_lip, best_other
    gap = 100 * (ls["best"][0] - os_["best"][0])
    verdict = "ahead" if gap > 0 else "behind"
    out.append(f"Best LipschitzLR rule: `{lm}` at {_fmt_pct(*ls['best'])}% best test accuracy; best other method: "
               f"`{om}` at {_fmt_pct(*os_['best'])}%: LipschitzLR is {verdict} by {abs(gap):.2f} points.")
    ranked = sorted(stats.items(), key=key, reverse=True)
    place = [m for m, _ in ranked].index(lm) + 1
    out.append(f"`{lm}` ranks {place} of {len(ranked)} methods; the top three are "
               + ", ".join(f"`{m}` ({_fmt_pct(s['best'][0])}%)" for m, s in ranked[:3]) + ".")
    beaten = [m for m, s in other.items() if math.isfinite(s["best"][0]) and s["best"][0] < ls["best"][0]]
    if beaten:
        out.append(f"`{lm}` beats {len(beaten)} of {len(other)} non-Lipschitz methods: {', '.join(f'`{m}`' for m in beaten)}.")
    for m, s in lip.items():
        curve = _curves([r for r in epochs if r["method"] == m], "lr").get(m)
        if curve and curve[1]:
            xs, ys = curve
            trend = "rose" if ys[-1] > ys[0] * 1.5 else ("fell" if ys[-1] < ys[0] / 1.5 else "moved little")
            peak = max(ys)
            peaked = f", peaking at {_fmt(peak)} (epoch {xs[ys.index(peak)]})" if peak > 2 * max(ys[0], ys[-1]) else ""
            capped = _curves([r for r in epochs if r["method"] == m], "lipschitz/capped").get(m)
            capped_at = [x for x, c in zip(*capped) if c > 0] if capped else []
            peaked += (f"; a safety cap (growth or max_lr) bound it after epoch(s) {', '.join(map(str, capped_at))} "
                       "(in at least one seed)"
                       if capped_at else "")
            out.append(f"`{m}`: the rate {trend}, from {_fmt(ys[0])} (epoch {xs[0]}) to {_fmt(ys[-1])} (epoch {xs[-1]}){peaked}"
                       + (f", largest last-layer gradient over L {_fmt(s['grad_max_over_L'])}" if s["grad_max_over_L"] else "")
                       + f"; best accuracy {_fmt_pct(*s['best'])}%"
                       + _rollback_text(s["rollbacks"])
                       + (f"; diverged in {len(s['diverged'])} run(s)" if s["diverged"] else "") + ".")
    for m in stats:
        found = [(int(r["seed"]), float(r["bench/lr_find"])) for r in epochs
                 if r["method"] == m and int(r["epoch"]) == 0 and r.get("bench/lr_find") is not None]
        if found:
            out.append(f"`{m}`: the learning-rate finder suggested " + ", ".join(f"{_fmt(lr)} (seed {seed})" for seed, lr in found)
                       + " (Lightning's suggestion: the steepest loss descent of its sweep); "
                       + f"best accuracy {_fmt_pct(*stats[m]['best'])}%.")
    div = [f"`{m}` ({len(s['diverged'])}/{s['runs']})" for m, s in stats.items() if s["diverged"]]
    if div:
        out.append("Runs flagged as diverged (NaN, chance accuracy or a training loss that ended above its start): "
                   + ", ".join(div) + ".")
    if ls["epochs_to_target"] is not None or os_["epochs_to_target"] is not None:
        out.append(f"Time to {100 * target:.0f}%: `{lm}` {_fmt(ls['epochs_to_target'])} epochs / {_fmt(ls['seconds_to_target'])} s "
                   f"({ls['reached']}/{ls['runs']} runs reached it), `{om}` {_fmt(os_['epochs_to_target'])} epochs / "
                   f"{_fmt(os_['seconds_to_target'])} s ({os_['reached']}/{os_['runs']}).")
    headline = {"suite": name, "lip": lm, "lip_best": ls["best"][0], "other": om, "other_best": os_["best"][0],
                "lip_epochs": ls["epochs_to_target"], "other_epochs": os_["epochs_to_target"],
                "lip_seconds": ls["seconds_to_target"], "other_seconds": os_["seconds_to_target"],
                "lip_state": ls["state_bytes"], "other_state": os_["state_bytes"], "target": target}
    return out, headline


def _ours_against_lr_free(name: str, stats, epochs: Sequence[Dict[str, object]]) -> List[str]:
    """Issue 7's comparison: the best of our rules against the best learning-rate-free optimizer,
    at equal epochs, with their optimizer state beside that of the paper's rule of the same family."""
    final = lambda item: item[1]["final"][0] if math.isfinite(item[1]["final"][0]) else -1  # noqa: E731
    kinds = {m: _kind(m) for m in stats}
    ours = {m: s for m, s in stats.items() if kinds[m] == "ours"}
    free = {m: s for m, s in stats.items() if kinds[m] == "lr_free"}
    if not ours or not free:
        return []
    out = []
    for m, s in sorted(ours.items(), key=final, reverse=True):
        div = f"; diverged in {len(s['diverged'])} of {s['runs']} runs" if s["diverged"] else "; never diverged"
        out.append(f"`{m}`: {_fmt_pct(*s['final'])}% over {s['runs']} run(s){div}.")
    (om, os_), (fm, fs) = max(ours.items(), key=final), max(free.items(), key=final)
    gap = 100 * (os_["final"][0] - fs["final"][0])
    bar = OURS_WITHIN.get(name)
    verdict = ""
    if bar is not None:
        verdict = (f": within the {bar:g}-point bar" if gap >= -bar else f": short of the {bar:g}-point bar by {-gap - bar:.2f} points")
    out.append(f"Best of ours `{om}` {_fmt_pct(os_['final'][0])}% against the best learning-rate-free `{fm}` "
               f"{_fmt_pct(fs['final'][0])}%: {'+' if gap >= 0 else ''}{gap:.2f} points{verdict}.")
    if bar is not None:  # the suites with a bar: a few epochs each
        curves = _curves([r for r in epochs if r["method"] in (om, fm)], "val/acc")
        ours_acc, free_acc = (dict(zip(*curves.get(m, ([], [])))) for m in (om, fm))
        both = [(e, a, free_acc[e]) for e, a in ours_acc.items() if e in free_acc]
        if both:
            out.append(f"Where the gap opens (test accuracy per epoch, mean over seeds, `{om}` vs `{fm}`): "
                       + ", ".join(f"epoch {e} {_fmt_pct(a)}% vs {_fmt_pct(b)}% ({100 * (a - b):+.2f})" for e, a, b in both)
                       + ".")
    if bar is not None and gap < -bar:
        out.append("What was tried to close it, and why each attempt falls short: "
                   "[rules.md, section 8](rules.md#8-against-the-bar-what-was-tried).")
    family = _family(om)
    paper = [m for m in stats if kinds[m] == "paper" and _family(m) == family]
    state = f"`{om}` holds {_fmt(os_['state_bytes'])} B/param of optimizer state, `{fm}` {_fmt(fs['state_bytes'])}"
    if paper:
        state += f", the paper's rule of the same family `{paper[0]}` {_fmt(stats[paper[0]]['state_bytes'])}"
    out.append(state + ".")
    return out


# --------------------------------------------------------------------------- classical


def _read_csv(path: Path) -> List[Dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _num(text: Optional[str]) -> Optional[float]:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _int_or(text: Optional[str], fallback: str) -> str:
    value = _num(text)
    return f"{int(value):,}" if value is not None else fallback


_SCALE_WORDS = {"unit_sum": "unit-sum", "none": "unscaled"}
_SCALE_TAGS = {"paper": "the paper's 1/L points to it", "unclear": "**unclear**: the nearer; both shown",
               "stated": "no paper 1/L: section 7.1's", "config": "set in the config"}


def _other_scale(scale: str) -> str:
    return "none" if scale == "unit_sum" else "unit_sum"


def _scaling_cell(r: Dict[str, str], default: str, old: str) -> str:
    """The row's scaling and how it was chosen; rows written before the choice carry no ``scale_basis`` (``old``)."""
    scale = r.get("scale") or default
    basis = r.get("scale_basis") or ""
    return f"{_SCALE_WORDS.get(scale, scale)} ({_SCALE_TAGS.get(basis, old)})"


def _other_inv_cell(r: Dict[str, str], default: str) -> str:
    other = _other_scale(r.get("scale") or default)
    value = _num(r.get(f"inv_L_{other}"))
    if value is None:
        return "–"
    return f"{_fmt(value, 6) if math.isfinite(value) else 'invalid'} ({_SCALE_WORDS[other]})"


def _match_band(r: Dict[str, str], scale: str) -> Optional[Tuple[float, float, float, float, float]]:
    """``(all rows, 70% split, low, high, spread)``: the 1/L values and the band the paper's figure must fall in."""
    whole, split = _num(r.get(f"inv_L_{scale}")), _num(r.get(f"split_inv_L_{scale}"))
    if whole is None or split is None or not (math.isfinite(whole) and math.isfinite(split)) or min(whole, split) <= 0:
        return None
    lo, hi = min(whole, split), max(whole, split)
    tol = hi / lo - 1
    return whole, split, lo / (1 + tol), hi * (1 + tol), tol


def _scaling_reading(r: Dict[str, str]) -> Optional[str]:
    """Which scaling a Table 1 row ran with and why, from the row's numbers (None for rows before the choice)."""
    scale, basis = r.get("scale"), r.get("scale_basis")
    if not scale or not basis:
        return None
    paper = _num(r.get("paper_inv_L"))

    def band_words(s: str) -> str:
        band = _match_band(r, s)
        if band is None:
            return f"the {_SCALE_WORDS[s]} bound is not usable"
        whole, split, lo, hi, tol = band
        return (f"{_SCALE_WORDS[s]} 1/L = {_fmt(whole, 5)} (all rows) / {_fmt(split, 5)} (70% split), "
                f"match band {_fmt(lo, 3)} to {_fmt(hi, 3)}")

    both = "; ".join(band_words(s) for s in ("unit_sum", "none"))
    word = _SCALE_WORDS.get(scale, scale)
    if basis == "stated":
        return f"{r['dataset']}: {word}, the scaling the paper states (section 7.1); no paper 1/L to check it against ({both})."
    if basis == "config":
        return f"{r['dataset']}: {word}, set in the config ({both}; paper {_fmt(paper, 5) if paper else '–'})."
    if basis == "paper":
        text = (f"{r['dataset']}: {word}, because the paper's 1/L = {_fmt(paper, 5)} falls in the {word} band only ({both}).")
        if scale == "none":
            text += " The paper says every column is scaled to sum to 1 (section 7.1); its own figure for this row says it was not."
        return text
    return (f"{r['dataset']}: **unclear**, the paper's 1/L = {_fmt(paper, 5)} falls in both bands or in neither ({both}); "
            f"the row ran {word}, the nearer one.")


def _classical_section(results: Path, img: Path, out_dir: Path) -> List[str]:
    t1, t2 = _read_csv(results / "classical_table1.csv"), _read_csv(results / "classical_table2.csv")
    curves = _read_csv(results / "classical_curves.csv")
    if not t1 and not t2:
        return []
    lines = ["## Classical models (paper Tables 1 and 2, Figure 1)", "",
             "Full-batch gradient descent at alpha = 0.1 against alpha = 1/L, same initial weights "
             "(`python -m lipschitz_lightning.classical dataset=<name>`). Table 1: 1/L from the whole data set, "
             "epochs until the full-batch loss is below T_L, ours beside the paper's. The paper says every column "
             "of X is scaled to sum to 1 (section 7.1), but not every one of its Table 1 figures is that of the "
             "scaled data, so each row runs with the scaling its paper 1/L points to (`dataset.table1_scale: auto`): "
             "the paper's figure matches a scaling when it lies between 1/L of the 70% training split and of all "
             "rows, widened by that same spread (how much 1/L moves with the rows used; it is computed from the data). "
             "The other scaling's 1/L is shown beside it.", "",
             "| data set | loss | m x n | T_L | scaling | 1/L (ours) | E_0.1 (ours) | E_1/L (ours) | 1/L (paper) | E_0.1 (paper) | E_1/L (paper) | 1/L other scaling | 1/L run: loss went up at |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in t1:
        inv = _num(r.get("inv_L"))
        lines.append(
            f"| {r['dataset']} | {r['loss']} | {r['m']} x {r['n']} | {r['threshold']} | {_scaling_cell(r, 'unit_sum', 'always, before the per-row choice')} | "
            f"{_fmt(inv, 6) if inv is not None and math.isfinite(inv) else 'invalid (L = ' + _fmt(_num(r.get('L')), 4) + ')'} | "
            f"{_int_or(r.get('epochs_alpha'), 'not reached in ' + _int_or(r.get('ran_alpha'), '?'))} | "
            f"{_int_or(r.get('epochs_inv_L'), 'not reached in ' + _int_or(r.get('ran_inv_L'), '?') if r.get('ran_inv_L') else '–')} | "
            f"{r.get('paper_inv_L') or '–'} | {_int_or(r.get('paper_epochs_alpha'), '–')} | {_int_or(r.get('paper_epochs_inv_L'), '–')} | "
            f"{_other_inv_cell(r, 'unit_sum')} | "
            f"{_int_or(r.get('increases_inv_L'), '–')} of {_int_or(r.get('ran_inv_L'), '–')} epochs |")
    scaling = [x for x in (_scaling_reading(r) for r in t1) if x]
    if scaling:
        lines += ["", "**Scaling per row** (generated from the table's numbers):", ""] + [f"- {x}" for x in scaling]
    if t2:
        lines += ["", "Table 2: test accuracy after N_E epochs (70/30 stratified split, MNIST its official one; 1/L "
                  "from the training split; `scaling` says whether the features were unit-sum scaled, the paper's "
                  "1/L is its Table 2 figure).", "",
                  "| data set | N_E | scaling | 1/L (ours) | acc 0.1 (ours) | acc 1/L (ours) | 1/L (paper) | acc 0.1 (paper) | acc 1/L (paper) | 1/L other scaling |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in t2:
            pa, pl_ = _num(r.get("paper_acc_alpha")), _num(r.get("paper_acc_inv_L"))
            lines.append(f"| {r['dataset']} | {r['accuracy_epochs']} | {_scaling_cell(r, 'unit_sum', _SCALE_TAGS['config'])} | {_fmt(_num(r['inv_L']), 6)} | "
                         f"{_fmt_pct(_num(r['acc_alpha']) or float('nan'))} | {_fmt_pct(_num(r['acc_inv_L']) or float('nan'))} | "
                         f"{r.get('paper_inv_L') or '–'} | {_fmt_pct(pa) if pa is not None else '–'} | {_fmt_pct(pl_) if pl_ is not None else '–'} | "
                         f"{_other_inv_cell(r, 'unit_sum')} |")
    done = {r["dataset"] for r in t1} | {r["dataset"] for r in t2}
    missing, pending = [], []
    for path in sorted((CONF / "classical" / "dataset").glob("*.yaml")):
        if path.stem in done:
            continue
        target = str(OmegaConf.load(path).data.get("_target_", ""))
        (missing if target.endswith(("load_csv", "load_sklearn_fetch")) else pending).append(path.stem)
    if missing:
        lines += ["", f"Not run: their files need a download, impossible on this machine (each loader is ready: "
                      f"`conf/classical/dataset/<name>.yaml` says where to put the data): {', '.join(missing)}."]
    if pending:
        lines += ["", f"Not run yet (the data is here; run the command below): {', '.join(pending)}."]
    reading = []
    for r in t1:
        ea, el = _num(r.get("epochs_alpha")), _num(r.get("epochs_inv_L"))
        inv = _num(r.get("inv_L"))
        if inv is None or not math.isfinite(inv):
            reading.append(f"{r['dataset']}: the closed-form L is {_fmt(_num(r.get('L')), 4)} (not positive), so 1/L is "
                           "unusable: the least-squares bound subtracts ||y^T X||/m, which exceeds K ||X^T X||/m here.")
        elif el is not None and ea is not None:
            reading.append(f"{r['dataset']}: 1/L = {_fmt(inv, 5)} reaches T_L in {int(el):,} epochs against {int(ea):,} at 0.1 "
                           f"({ea / max(el, 1):,.0f}x fewer).")
        elif el is not None:
            reading.append(f"{r['dataset']}: 1/L = {_fmt(inv, 5)} reaches T_L in {int(el):,} epochs; 0.1 had not after "
                           f"{_int_or(r.get('ran_alpha'), '?')}.")
        else:
            reading.append(f"{r['dataset']}: neither rate reached T_L within the run.")
        if r.get("increases_inv_L") not in (None, ""):
            reading.append(f"{r['dataset']}: over {_int_or(r.get('ran_inv_L'), '?')} epochs at 1/L the loss went up at "
                           f"{_int_or(r.get('increases_inv_L'), '?')} epochs (0 = monotone: no oscillation), ending at "
                           f"{_fmt(_num(r.get('final_loss_inv_L')), 5)}.")
    if reading:
        lines += ["", "**Reading** (generated from the tables):", ""] + [f"- {x}" for x in reading]
    if curves:
        png = img / "classical_loss_curves.png"
        _plot_classical(curves, {r["dataset"]: r for r in t1}, png)
        rel = png.relative_to(out_dir).as_posix() if png.is_relative_to(out_dir) else png.as_posix()
        lines += ["", "Figure 1 (ours): full-batch loss per epoch at both rates, log-log (the dotted line is T_L).", "",
                  f"![classical loss curves]({rel})"]
    caps = sorted({_int_or(r.get("max_epochs"), "?") for r in t1})
    lines += ["", "Command: `python -m lipschitz_lightning.classical --multirun "
                  "dataset=breast_cancer,iris,digits,wine,diabetes,mnist results_dir=benchmarks/results` "
                  f"(`make benchmark SUITE=classical`); the epoch cap of Table 1 (`max_epochs`) was {' / '.join(caps)} "
                  "(\"not reached in N\" above). Times are full-batch epochs on the CPU (float64).", ""]
    return lines


def _plot_classical(curves: List[Dict[str, str]], t1: Dict[str, Dict[str, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(OrderedDict.fromkeys(r["dataset"] for r in curves))
    cols = min(3, len(sets))
    rows = math.ceil(len(sets) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, sets):
        for rate, style in (("alpha", "--"), ("inv_L", "-")):
            pts = [(int(r["epoch"]) + 1, float(r["loss"])) for r in curves if r["dataset"] == name and r["rate"] == rate]
            if pts:
                ax.plot(*zip(*pts), style, label="alpha = 0.1" if rate == "alpha" else "alpha = 1/L")
        threshold = _num(t1.get(name, {}).get("threshold"))
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


# --------------------------------------------------------------------------- the document


def generate(results_dir: Path, out: Path, img_dir: Optional[Path] = None) -> str:
    """Write the report ``out`` (and PNGs into ``img_dir``) from ``results_dir``; return its text."""
    out_dir = out.parent
    img = img_dir or out_dir / "img"
    lines = ["# Benchmarks", "",
             "<!-- Generated by `python -m lipschitz_lightning.bench.report` (`make report`) from "
             "benchmarks/results/*.csv. Do not edit by hand: edit the generator and re-run it. -->", "",
             "Is the computed rate as good as a tuned one, or as the learning-rate-free optimizers? Every "
             "number below comes from the raw results committed in `benchmarks/results/` (one row per run "
             "and epoch), produced by the commands given with each table.", "",
             "Run a suite: `make benchmark SUITE=digits` (= `python -m lipschitz_lightning.bench suite=digits`; "
             "`mnist`, `cifar10`, `classical`); regenerate this page: `make report`. A suite resumes: runs "
             "already in its results file are skipped.", ""]
    headlines = []
    for name in SUITES:
        section, headline = _suite_section(name, results_dir, img, out_dir)
        if not section and not name.startswith("gpu_"):
            cfg = _suite_cfg(name)
            section = [f"## Suite `{name}`: {cfg.get('title', name)}", "",
                       f"**What ran**: no run of this suite has finished yet (no `{name}_runs.csv`). "
                       f"Run it with `make benchmark SUITE={name}`.", ""]
        lines += section
        if headline:
            headlines.append(headline)
    lines += _classical_section(results_dir, img, out_dir)
    if headlines:
        lines += ["## Headline", "", "Per task, the best LipschitzLR rule against the best other method (by best test "
                  "accuracy), with time to the suite's target and optimizer state:", "",
                  "| task | best Lipschitz rule | acc % | epochs / s to target | state B/param | best other | acc % | epochs / s to target | state B/param |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for h in headlines:
            lines.append(f"| {h['suite']} (target {100 * h['target']:.0f}%) | `{h['lip']}` | {_fmt_pct(h['lip_best'])} | "
                         f"{_fmt(h['lip_epochs'])} / {_fmt(h['lip_seconds'])} | {_fmt(h['lip_state'])} | `{h['other']}` | "
                         f"{_fmt_pct(h['other_best'])} | {_fmt(h['other_epochs'])} / {_fmt(h['other_seconds'])} | {_fmt(h['other_state'])} |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = OmegaConf.from_dotlist(list(sys.argv[1:] if argv is None else argv))
    results = Path(str(args.get("results_dir", ROOT / "benchmarks" / "results")))
    out = Path(str(args.get("out", ROOT / "docs" / "benchmarks.md")))
    img = Path(str(args["img_dir"])) if args.get("img_dir") else None
    if not results.exists():
        sys.stderr.write(f"error: no results in {results} (run `make benchmark SUITE=digits` first)\n")
        return 2
    generate(results, out, img)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
