"""The whole report: a section per suite (its statistics, table, figures and reading), the
classical experiments' section, and the headline table across suites (with who leads at each
budget where a task ran at two)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

from omegaconf import OmegaConf

from lipschitz_lightning.bench.report.classical_tables import classical_section
from lipschitz_lightning.bench.report.kinds import method_label
from lipschitz_lightning.bench.report.plots import plot_curves
from lipschitz_lightning.bench.report.stats import curves, summarise
from lipschitz_lightning.bench.report.text import (
    budget_leaders,
    fmt,
    fmt_pct,
    headline,
    method_table,
    ours_against_lr_free,
    reading,
    what_ran,
)
from lipschitz_lightning.bench.results import read_rows
from lipschitz_lightning.configs import config_dir

__all__ = ["BUDGETS", "SUITES", "generate", "suite_config"]

SUITES: Tuple[str, ...] = ("digits", "mnist", "cifar10", "cifar10_long", "gpu_mnist", "gpu_cifar10")
# Suites shown only once they have results (the others say that none of their runs has finished).
SHOWN_WITH_RESULTS: Tuple[str, ...] = ("cifar10_long", "gpu_mnist", "gpu_cifar10")
# One task at two budgets (the shorter suite first): the headline says who leads at each.
BUDGETS: Tuple[Tuple[str, str], ...] = (("cifar10", "cifar10_long"),)


def suite_config(name: str) -> Dict[str, object]:
    """The keys of ``conf/suite/<name>.yaml`` the report reads (name and title only without the file)."""
    path = Path(config_dir()) / "suite" / f"{name}.yaml"
    if not path.exists():
        return {"name": name, "title": name}
    node = OmegaConf.load(path)
    return {k: node.get(k) for k in ("name", "title", "epochs", "seeds", "target_acc", "chance_acc", "check", "only")}


def _figures(name: str, epochs: List[Dict[str, object]], img: Path, out_dir: Path) -> List[str]:
    """A suite's PNGs (test accuracy, rate, and grad_max / L where logged) and the lines showing them."""
    acc_png, lr_png = img / f"{name}_test_acc.png", img / f"{name}_lr.png"
    plot_curves(curves(epochs, "val/acc"), f"{name}: test accuracy per epoch (mean over seeds)", "test accuracy", acc_png)
    plot_curves(curves(epochs, "lr"), f"{name}: learning rate per epoch (LipschitzLR: the rate used; others: lr x d / eta)",
                "learning rate", lr_png, log=True)
    rel = lambda p: p.relative_to(out_dir).as_posix() if p.is_relative_to(out_dir) else p.as_posix()  # noqa: E731
    lines = ["", f"![test accuracy per epoch]({rel(acc_png)})", "", f"![learning rate per epoch, log scale]({rel(lr_png)})", ""]
    ratio = curves(epochs, "lipschitz/grad_max_over_L")
    if ratio:
        ratio_png = img / f"{name}_grad_over_L.png"
        plot_curves(ratio, f"{name}: largest last-layer gradient entry / L per epoch (the bound holds while <= 1)",
                    "grad_max / L", ratio_png, log=True)
        lines += [f"![grad_max over L per epoch]({rel(ratio_png)})", ""]
    return lines


def _suite_section(name: str, results: Path, img: Path, out_dir: Path) -> Tuple[List[str], Optional[Dict[str, object]]]:
    """A suite's lines and its headline row (``[], None`` without a ``<name>_runs.csv``)."""
    runs, epochs = read_rows(results / f"{name}_runs.csv"), read_rows(results / f"{name}_epochs.csv")
    if not runs:
        return [], None
    cfg = suite_config(name)
    target, chance = float(cfg.get("target_acc") or 0.9), float(cfg.get("chance_acc") or 0.1)
    stats = summarise(runs, epochs, target, chance)
    # the methods the suite plans: its own `only` list, else every method of the methods file
    methods_all = list(cfg.get("only") or OmegaConf.load(Path(config_dir()) / "methods" / "all.yaml").keys())
    lines = [f"## Suite `{name}`: {cfg.get('title', name)}", ""]
    lines += what_ran(name, cfg, runs, epochs, stats, methods_all)
    lines += method_table(stats, target)
    lines += _figures(name, epochs, img, out_dir)
    lines += ["**Reading** (generated from the table):", ""] + [f"- {r}" for r in reading(stats, target, epochs)] + [""]
    ours = ours_against_lr_free(name, stats, epochs)
    if ours:
        lines += ["**Our rules against the learning-rate-free optimizers** (final test accuracy at the suite's "
                  "epochs, mean over the seeds that ran):", ""] + [f"- {r}" for r in ours] + [""]
    example = next((str(r["command"]) for r in runs if r.get("command")), "")
    lines += ["Commands: `python -m lipschitz_lightning.bench suite=" + name + "` (resumes), which runs per method and seed:",
              "", "```", example, "```", ""]
    return lines, headline(name, stats, target)


def _headline_table(headlines: List[Dict[str, object]]) -> List[str]:
    if not headlines:
        return []
    rows = {str(h["suite"]): h for h in headlines}
    budgets = [(rows[short], rows[long], suite_config(short).get("epochs"), suite_config(long).get("epochs"))
               for short, long in BUDGETS if short in rows and long in rows]
    lines = ["## Headline", "", "Per task, the best LipschitzLR rule against the best other method (by best test "
             "accuracy), with time to the suite's target and optimizer state:", "",
             "| task | best Lipschitz rule | acc % | epochs / s to target | state B/param | best other | acc % | epochs / s to target | state B/param |",
             "|---|---|---|---|---|---|---|---|---|"]
    for h in headlines:
        lines.append(f"| {h['suite']} (target {100 * h['target']:.0f}%) | `{method_label(str(h['lip']))}` | {fmt_pct(h['lip_best'])} | "
                     f"{fmt(h['lip_epochs'])} / {fmt(h['lip_seconds'])} | {fmt(h['lip_state'])} | `{method_label(str(h['other']))}` | "
                     f"{fmt_pct(h['other_best'])} | {fmt(h['other_epochs'])} / {fmt(h['other_seconds'])} | {fmt(h['other_state'])} |")
    for short, long, short_epochs, long_epochs in budgets:
        lines += [""] + budget_leaders(short, long, short_epochs, long_epochs)
    return lines + [""]


def generate(results_dir: Path, out: Path, img_dir: Optional[Path] = None) -> str:
    """Write the report ``out`` (and PNGs into ``img_dir``, default ``<out's folder>/img``) from
    ``results_dir``; return its text."""
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
        section, row = _suite_section(name, results_dir, img, out_dir)
        if not section and name not in SHOWN_WITH_RESULTS:
            cfg = suite_config(name)
            section = [f"## Suite `{name}`: {cfg.get('title', name)}", "",
                       f"**What ran**: no run of this suite has finished yet (no `{name}_runs.csv`). "
                       f"Run it with `make benchmark SUITE={name}`.", ""]
        lines += section
        if row:
            headlines.append(row)
    lines += classical_section(results_dir, img, out_dir)
    text = "\n".join(lines + _headline_table(headlines)) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text
