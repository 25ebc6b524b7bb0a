"""The generated text of a suite's section: the figures formatted, what ran, the table, and the
readings (sentences filled in from the statistics of :mod:`~lipschitz_lightning.bench.report.stats`)."""

from __future__ import annotations

import math
import statistics
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from lipschitz_lightning.bench.report.kinds import method_kind, method_label
from lipschitz_lightning.bench.report.stats import REFERENCE, MethodStats, Row, curves, finite

__all__ = ["OURS_WITHIN", "budget_leaders", "fmt", "fmt_pct", "headline", "method_table", "ours_against_lr_free",
           "reading", "what_ran"]

# How close our best rule must come to the best learning-rate-free optimizer (points of final test
# accuracy at equal epochs), per suite: the project's bar.
OURS_WITHIN: Dict[str, float] = {"mnist": 0.5, "cifar10": 3.0, "cifar10_long": 1.0, "gpu_mnist": 0.5, "gpu_cifar10": 3.0}

Stats = Mapping[str, MethodStats]


def fmt_pct(mean: float, spread: Optional[float] = None) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{100 * mean:.2f}" + (f" ± {100 * spread:.2f}" if spread is not None and math.isfinite(spread) and spread > 0 else "")


def fmt(value: Optional[float], digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}g}"


def _machine(runs: List[Row]) -> str:
    """The machines and versions the runs had (each distinct one once), then the commits they ran."""
    keys = ("cpu", "cpu_count", "device", "torch", "lightning")
    text = lambda r, k: str(int(r[k]) if isinstance(r.get(k), float) else r.get(k))  # noqa: E731
    machines = OrderedDict((tuple(text(r, k) for k in keys), None) for r in runs)
    commits = OrderedDict((text(r, "git_commit"), None) for r in runs)
    return ("; ".join(", ".join(f"{k} {v}" for k, v in zip(keys, m)) for m in machines)
            + f"; git commits {', '.join(commits)}")


def _load_varied(epochs: List[Row]) -> List[str]:
    ref_runs: Dict[int, List[float]] = {}
    for r in epochs:
        if r["method"] == REFERENCE and r.get("bench/step_seconds") is not None:
            ref_runs.setdefault(int(r["seed"]), []).append(float(r["bench/step_seconds"]))
    if len(ref_runs) <= 1:
        return []
    medians = [statistics.median(v) for v in ref_runs.values()]
    return [f"The machine's load varied between runs: `{REFERENCE}`'s median step took "
            f"{min(medians) * 1000:.2f} to {max(medians) * 1000:.2f} ms across its {len(medians)} runs, "
            "so read the s/step ratios as rough."]


def _not_all_ran(name: str, runs: List[Row], stats: Stats, planned_seeds: List[int], methods_all: List[str]) -> List[str]:
    incomplete = [m for m, s in stats.items() if s.runs < len(planned_seeds)]
    missing = [m for m in methods_all if m not in stats]
    walls = finite(r.get("wall_seconds") for r in runs if r.get("status") == "ok")
    lines = []
    if (incomplete or missing) and walls:
        lines.append(f"Why not all ran: machine time. One run took {statistics.median(walls) / 60:.0f} minutes "
                     f"(median of {len(walls)}), and the suite resumes where it stopped "
                     f"(`python -m lipschitz_lightning.bench suite={name}`).")
    if incomplete:
        lines.append(f"Methods with fewer seeds than planned so far: {', '.join(incomplete)}.")
    if missing:
        lines.append(f"Not run yet (the suite resumes with them): {', '.join(missing)}.")
    return lines


def _framework_check(check: Optional[Mapping[str, object]], epochs: List[Row]) -> List[str]:
    if not check:
        return []
    required = f"{100 * float(check['min_acc']):.1f}%"
    accs = finite(r.get("val/acc") for r in epochs
                  if r["method"] == check["method"] and int(r["epoch"]) + 1 == int(check["epoch"]))
    if not accs:
        return [f"**Framework check**: `{check['method']}` has not reached epoch {check['epoch']} yet "
                f"(required: at least {required} after {check['epoch']} epochs)."]
    ok = all(a >= float(check["min_acc"]) for a in accs)
    return [f"**Framework check**: `{check['method']}` reached " + ", ".join(f"{100 * a:.2f}%" for a in accs)
            + f" test accuracy after {check['epoch']} epochs (required: at least {required}): "
            + ("passed." if ok else "FAILED.")]


def what_ran(name: str, cfg: Mapping[str, object], runs: List[Row], epochs: List[Row], stats: Stats,
             methods_all: List[str]) -> List[str]:
    """The lines under a suite's heading: the runs, the machine, what is missing, the framework check."""
    planned_seeds = list(cfg.get("seeds") or [])
    ran_seeds = sorted({int(r["seed"]) for r in runs})
    lines = [f"**What ran**: {len(runs)} runs, {len(stats)} methods, seeds {ran_seeds}, "
             f"epochs per run {sorted({s.epochs for s in stats.values()})} "
             f"(the suite plans {cfg.get('epochs')} epochs x seeds {planned_seeds}). "
             f"Machine: {_machine(runs)}."]
    lines += _load_varied(epochs)
    lines += _not_all_ran(name, runs, stats, planned_seeds, methods_all)
    return lines + _framework_check(cfg.get("check"), epochs)


def method_table(stats: Stats, target: float) -> List[str]:
    """The paragraph that says how to read the table, then the table: one row per method."""
    lines = ["", f"Test accuracy is that of the test split after each epoch (the app validates on it); "
                 f"target {100 * target:.0f}%: epochs and wall seconds (since the fit's setup, so an "
                 f"LR finder or first-epoch probe counts) to reach it, median over the seeds that reached it. "
                 f"s/step ratio: a run's median training-step time over that of `{REFERENCE}` with the same seed (run "
                 f"back to back), median over seeds. "
                 f"State is the optimizer's tensors (state and param_groups) in bytes per parameter. "
                 f"Lipschitz rules in **bold**.", "",
             "| method | runs | best acc % | final acc % | reached target | epochs to target | s to target "
             "| s/step ratio | state B/param | LR range | max grad/L | diverged |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, s in stats.items():
        label = f"**{method_label(method)}**" if s.lipschitz else method_label(method)
        div = ", ".join(f"seed {seed}: {why}" for seed, why in s.diverged) or "no"
        lines.append(
            f"| {label} | {s.runs} | {fmt_pct(*s.best)} | {fmt_pct(*s.final)} | {s.reached}/{s.runs} | "
            f"{fmt(s.epochs_to_target)} | {fmt(s.seconds_to_target)} | {fmt(s.step_ratio)} | "
            f"{fmt(s.state_bytes)} | {fmt(s.lr_min)}–{fmt(s.lr_max)} | {fmt(s.grad_max_over_L)} | {div} |")
    return lines


def _rollback_text(rollbacks: Sequence[Tuple[int, int]]) -> str:
    """What the guard did, over the runs whose results record ``lipschitz/rollbacks``."""
    if not rollbacks:
        return ""
    hit = [(seed, n) for seed, n in rollbacks if n > 0]
    if not hit:
        return f"; the guard rolled back no epoch ({len(rollbacks)} run(s) recorded)"
    return (f"; the guard rolled back {sum(n for _, n in hit)} epoch(s) in {len(hit)} of {len(rollbacks)} recorded run(s) "
            f"(seed(s) {', '.join(str(seed) for seed, _ in hit)})")


def _best(item: Tuple[str, MethodStats]) -> float:
    return item[1].best[0] if math.isfinite(item[1].best[0]) else -1


def _rate_sentence(m: str, s: MethodStats, epochs: List[Row]) -> Optional[str]:
    """How a LipschitzLR rule's rate moved over the epochs, and what capped or rolled it back."""
    own = [r for r in epochs if r["method"] == m]
    curve = curves(own, "lr").get(m)
    if not curve or not curve[1]:
        return None
    xs, ys = curve
    trend = "rose" if ys[-1] > ys[0] * 1.5 else ("fell" if ys[-1] < ys[0] / 1.5 else "moved little")
    peak = max(ys)
    peaked = f", peaking at {fmt(peak)} (epoch {xs[ys.index(peak)]})" if peak > 2 * max(ys[0], ys[-1]) else ""
    capped = curves(own, "lipschitz/capped").get(m)
    capped_at = [x for x, c in zip(*capped) if c > 0] if capped else []
    peaked += (f"; a safety cap (growth or max_lr) bound it after epoch(s) {', '.join(map(str, capped_at))} "
               "(in at least one seed)" if capped_at else "")
    return (f"`{method_label(m)}`: the rate {trend}, from {fmt(ys[0])} (epoch {xs[0]}) to {fmt(ys[-1])} (epoch {xs[-1]}){peaked}"
            + (f", largest last-layer gradient over L {fmt(s.grad_max_over_L)}" if s.grad_max_over_L else "")
            + f"; best accuracy {fmt_pct(*s.best)}%"
            + _rollback_text(s.rollbacks)
            + (f"; diverged in {len(s.diverged)} run(s)" if s.diverged else "") + ".")


def _finder_sentences(stats: Stats, epochs: List[Row]) -> List[str]:
    out = []
    for m in stats:
        found = [(int(r["seed"]), float(r["bench/lr_find"])) for r in epochs
                 if r["method"] == m and int(r["epoch"]) == 0 and r.get("bench/lr_find") is not None]
        if found:
            out.append(f"`{m}`: the learning-rate finder suggested " + ", ".join(f"{fmt(lr)} (seed {seed})" for seed, lr in found)
                       + " (Lightning's suggestion: the steepest loss descent of its sweep); "
                       + f"best accuracy {fmt_pct(*stats[m].best)}%.")
    return out


def _best_pair(stats: Stats) -> Optional[Tuple[Tuple[str, MethodStats], Tuple[str, MethodStats]]]:
    """The best LipschitzLR rule and the best other method by best test accuracy (None: not both ran)."""
    lip = {m: s for m, s in stats.items() if s.lipschitz}
    other = {m: s for m, s in stats.items() if not s.lipschitz}
    if not lip or not other:
        return None
    return max(lip.items(), key=_best), max(other.items(), key=_best)


def reading(stats: Stats, target: float, epochs: List[Row]) -> List[str]:
    """The section's reading: the best rule against the best other method, each rule's rate, the
    finder's suggestions, the divergences and the time to target."""
    pair = _best_pair(stats)
    if pair is None:
        return ["Not enough methods ran to compare LipschitzLR with the others."]
    (lm, ls), (om, os_) = pair
    other = {m: s for m, s in stats.items() if not s.lipschitz}
    gap = 100 * (ls.best[0] - os_.best[0])
    out = [f"Best LipschitzLR rule: `{method_label(lm)}` at {fmt_pct(*ls.best)}% best test accuracy; best other method: "
           f"`{method_label(om)}` at {fmt_pct(*os_.best)}%: LipschitzLR is {'ahead' if gap > 0 else 'behind'} by {abs(gap):.2f} points."]
    ranked = sorted(stats.items(), key=_best, reverse=True)
    out.append(f"`{method_label(lm)}` ranks {[m for m, _ in ranked].index(lm) + 1} of {len(ranked)} methods; the top three are "
               + ", ".join(f"`{method_label(m)}` ({fmt_pct(s.best[0])}%)" for m, s in ranked[:3]) + ".")
    beaten = [m for m, s in other.items() if math.isfinite(s.best[0]) and s.best[0] < ls.best[0]]
    if beaten:
        out.append(f"`{method_label(lm)}` beats {len(beaten)} of {len(other)} non-Lipschitz methods: "
                   f"{', '.join(f'`{method_label(m)}`' for m in beaten)}.")
    out += [x for x in (_rate_sentence(m, s, epochs) for m, s in stats.items() if s.lipschitz) if x]
    out += _finder_sentences(stats, epochs)
    div = [f"`{method_label(m)}` ({len(s.diverged)}/{s.runs})" for m, s in stats.items() if s.diverged]
    if div:
        out.append("Runs flagged as diverged (NaN, chance accuracy or a training loss that ended above its start): "
                   + ", ".join(div) + ".")
    if ls.epochs_to_target is not None or os_.epochs_to_target is not None:
        out.append(f"Time to {100 * target:.0f}%: `{method_label(lm)}` {fmt(ls.epochs_to_target)} epochs / {fmt(ls.seconds_to_target)} s "
                   f"({ls.reached}/{ls.runs} runs reached it), `{method_label(om)}` {fmt(os_.epochs_to_target)} epochs / "
                   f"{fmt(os_.seconds_to_target)} s ({os_.reached}/{os_.runs}).")
    return out


def headline(name: str, stats: Stats, target: float) -> Optional[Dict[str, object]]:
    """The suite's row of the headline table (None: not both a rule and another method ran)."""
    pair = _best_pair(stats)
    if pair is None:
        return None
    (lm, ls), (om, os_) = pair
    return {"suite": name, "lip": lm, "lip_best": ls.best[0], "other": om, "other_best": os_.best[0],
            "lip_epochs": ls.epochs_to_target, "other_epochs": os_.epochs_to_target,
            "lip_seconds": ls.seconds_to_target, "other_seconds": os_.seconds_to_target,
            "lip_state": ls.state_bytes, "other_state": os_.state_bytes, "target": target}


def _final(item: Tuple[str, MethodStats]) -> float:
    return item[1].final[0] if math.isfinite(item[1].final[0]) else -1


def _gap_by_epoch(om: str, fm: str, epochs: Sequence[Row]) -> List[str]:
    per_epoch = curves([r for r in epochs if r["method"] in (om, fm)], "val/acc")
    ours_acc, free_acc = (dict(zip(*per_epoch.get(m, ([], [])))) for m in (om, fm))
    both = [(e, a, free_acc[e]) for e, a in ours_acc.items() if e in free_acc]
    if not both:
        return []
    return [f"Where the gap opens (test accuracy per epoch, mean over seeds, `{om}` vs `{fm}`): "
            + ", ".join(f"epoch {e} {fmt_pct(a)}% vs {fmt_pct(b)}% ({100 * (a - b):+.2f})" for e, a, b in both) + "."]


def ours_against_lr_free(name: str, stats: Stats, epochs: Sequence[Row]) -> List[str]:
    """The best of our rules against the best learning-rate-free optimizer, at equal epochs, with
    their optimizer state beside that of the paper's rule of the same family (empty: not both ran)."""
    kinds = {m: method_kind(m) for m in stats}
    ours = {m: s for m, s in stats.items() if kinds[m].kind == "ours"}
    free = {m: s for m, s in stats.items() if kinds[m].kind == "lr_free"}
    if not ours or not free:
        return []
    out = []
    for m, s in sorted(ours.items(), key=_final, reverse=True):
        div = f"; diverged in {len(s.diverged)} of {s.runs} runs" if s.diverged else "; never diverged"
        out.append(f"`{m}`: {fmt_pct(*s.final)}% over {s.runs} run(s){div}.")
    (om, os_), (fm, fs) = max(ours.items(), key=_final), max(free.items(), key=_final)
    gap = 100 * (os_.final[0] - fs.final[0])
    bar = OURS_WITHIN.get(name)
    verdict = ""
    if bar is not None:
        verdict = (f": within the {bar:g}-point bar" if gap >= -bar else f": short of the {bar:g}-point bar by {-gap - bar:.2f} points")
    out.append(f"Best of ours `{om}` {fmt_pct(os_.final[0])}% against the best learning-rate-free `{fm}` "
               f"{fmt_pct(fs.final[0])}%: {'+' if gap >= 0 else ''}{gap:.2f} points{verdict}.")
    if bar is not None:  # the suites with a bar: a few epochs each
        out += _gap_by_epoch(om, fm, epochs)
    if bar is not None and gap < -bar:
        out.append("What was tried to close it, and why each attempt falls short: "
                   "[rules.md, section 8](rules.md#8-against-the-bar-what-was-tried).")
    paper = sorted((m for m in stats if kinds[m].kind == "paper" and kinds[m].family == kinds[om].family),
                   key=lambda m: kinds[m].guard)  # the paper's rule raw first, as published
    state = f"`{om}` holds {fmt(os_.state_bytes)} B/param of optimizer state, `{fm}` {fmt(fs.state_bytes)}"
    if paper:
        state += f", the paper's rule of the same family `{paper[0]}` {fmt(stats[paper[0]].state_bytes)}"
    return out + [state + "."]


def budget_leaders(short: Mapping[str, object], long: Mapping[str, object], short_epochs: object,
                   long_epochs: object) -> List[str]:
    """Who leads one task at each of its two budgets, from the two suites' headline rows (:func:`headline`)."""
    def leader(row: Mapping[str, object], epochs: object) -> str:
        lip, other = (str(row["lip"]), float(row["lip_best"])), (str(row["other"]), float(row["other_best"]))
        ours_lead = lip[1] >= other[1]
        (lead, lead_acc), (behind, behind_acc) = (lip, other) if ours_lead else (other, lip)
        return (f"at {epochs} epochs (`{row['suite']}`) the leader is "
                + ("the LipschitzLR rule " if ours_lead else "") + f"`{method_label(lead)}` ({fmt_pct(lead_acc)}%), "
                f"{100 * (lead_acc - behind_acc):.2f} points ahead of the best "
                + ("other method" if ours_lead else "LipschitzLR rule") + f" `{method_label(behind)}` ({fmt_pct(behind_acc)}%)")

    return [f"**Who leads at each budget** (best test accuracy, among the methods each suite ran): "
            f"{leader(short, short_epochs)}; {leader(long, long_epochs)}."]
