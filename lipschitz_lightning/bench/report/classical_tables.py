"""The classical experiments' section of the report (paper Tables 1 and 2, Figure 1), from the
tables ``python -m lipschitz_lightning.classical`` writes: ``classical_table1.csv``,
``classical_table2.csv`` and ``classical_curves.csv``."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from omegaconf import OmegaConf

from lipschitz_lightning.bench.report.plots import plot_classical
from lipschitz_lightning.bench.report.stats import number
from lipschitz_lightning.bench.report.text import fmt, fmt_pct
from lipschitz_lightning.configs import config_dir

__all__ = ["classical_section"]

Table = List[Dict[str, str]]


def _read_csv(path: Path) -> List[Dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _int_or(text: Optional[str], fallback: str) -> str:
    value = number(text)
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
    value = number(r.get(f"inv_L_{other}"))
    if value is None:
        return "–"
    return f"{fmt(value, 6) if math.isfinite(value) else 'invalid'} ({_SCALE_WORDS[other]})"


def _match_band(r: Dict[str, str], scale: str) -> Optional[Tuple[float, float, float, float, float]]:
    """``(all rows, 70% split, low, high, spread)``: the 1/L values and the band the paper's figure must fall in."""
    whole, split = number(r.get(f"inv_L_{scale}")), number(r.get(f"split_inv_L_{scale}"))
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
    paper = number(r.get("paper_inv_L"))

    def band_words(s: str) -> str:
        band = _match_band(r, s)
        if band is None:
            return f"the {_SCALE_WORDS[s]} bound is not usable"
        whole, split, lo, hi, tol = band
        return (f"{_SCALE_WORDS[s]} 1/L = {fmt(whole, 5)} (all rows) / {fmt(split, 5)} (70% split), "
                f"match band {fmt(lo, 3)} to {fmt(hi, 3)}")

    both = "; ".join(band_words(s) for s in ("unit_sum", "none"))
    word = _SCALE_WORDS.get(scale, scale)
    if basis == "stated":
        return f"{r['dataset']}: {word}, the scaling the paper states (section 7.1); no paper 1/L to check it against ({both})."
    if basis == "config":
        return f"{r['dataset']}: {word}, set in the config ({both}; paper {fmt(paper, 5) if paper else '–'})."
    if basis == "paper":
        text = (f"{r['dataset']}: {word}, because the paper's 1/L = {fmt(paper, 5)} falls in the {word} band only ({both}).")
        if scale == "none":
            text += " The paper says every column is scaled to sum to 1 (section 7.1); its own figure for this row says it was not."
        return text
    return (f"{r['dataset']}: **unclear**, the paper's 1/L = {fmt(paper, 5)} falls in both bands or in neither ({both}); "
            f"the row ran {word}, the nearer one.")




def _table1(t1: Table) -> List[str]:
    """The section's opening paragraph, Table 1 and the scaling chosen per row."""
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
        inv = number(r.get("inv_L"))
        lines.append(
            f"| {r['dataset']} | {r['loss']} | {r['m']} x {r['n']} | {r['threshold']} | {_scaling_cell(r, 'unit_sum', 'always, before the per-row choice')} | "
            f"{fmt(inv, 6) if inv is not None and math.isfinite(inv) else 'invalid (L = ' + fmt(number(r.get('L')), 4) + ')'} | "
            f"{_int_or(r.get('epochs_alpha'), 'not reached in ' + _int_or(r.get('ran_alpha'), '?'))} | "
            f"{_int_or(r.get('epochs_inv_L'), 'not reached in ' + _int_or(r.get('ran_inv_L'), '?') if r.get('ran_inv_L') else '–')} | "
            f"{r.get('paper_inv_L') or '–'} | {_int_or(r.get('paper_epochs_alpha'), '–')} | {_int_or(r.get('paper_epochs_inv_L'), '–')} | "
            f"{_other_inv_cell(r, 'unit_sum')} | "
            f"{_int_or(r.get('increases_inv_L'), '–')} of {_int_or(r.get('ran_inv_L'), '–')} epochs |")
    scaling = [x for x in (_scaling_reading(r) for r in t1) if x]
    if scaling:
        lines += ["", "**Scaling per row** (generated from the table's numbers):", ""] + [f"- {x}" for x in scaling]
    return lines


def _table2(t2: Table) -> List[str]:
    if not t2:
        return []
    lines = ["", "Table 2: test accuracy after N_E epochs (70/30 stratified split, MNIST its official one; 1/L "
             "from the training split; `scaling` says whether the features were unit-sum scaled, the paper's "
             "1/L is its Table 2 figure).", "",
             "| data set | N_E | scaling | 1/L (ours) | acc 0.1 (ours) | acc 1/L (ours) | 1/L (paper) | acc 0.1 (paper) | acc 1/L (paper) | 1/L other scaling |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in t2:
        pa, pl_ = number(r.get("paper_acc_alpha")), number(r.get("paper_acc_inv_L"))
        lines.append(f"| {r['dataset']} | {r['accuracy_epochs']} | {_scaling_cell(r, 'unit_sum', _SCALE_TAGS['config'])} | {fmt(number(r['inv_L']), 6)} | "
                     f"{fmt_pct(number(r['acc_alpha']) or float('nan'))} | {fmt_pct(number(r['acc_inv_L']) or float('nan'))} | "
                     f"{r.get('paper_inv_L') or '–'} | {fmt_pct(pa) if pa is not None else '–'} | {fmt_pct(pl_) if pl_ is not None else '–'} | "
                     f"{_other_inv_cell(r, 'unit_sum')} |")
    return lines


def _not_run(t1: Table, t2: Table) -> List[str]:
    """The data sets of ``conf/classical/dataset/`` without a row: needing a download, or not run yet."""
    done = {r["dataset"] for r in t1} | {r["dataset"] for r in t2}
    missing, pending = [], []
    for path in sorted((Path(config_dir()) / "classical" / "dataset").glob("*.yaml")):
        if path.stem in done:
            continue
        target = str(OmegaConf.load(path).data.get("_target_", ""))
        (missing if target.endswith(("load_csv", "load_sklearn_fetch")) else pending).append(path.stem)
    lines = []
    if missing:
        lines += ["", f"Not run: their files need a download, impossible on this machine (each loader is ready: "
                      f"`conf/classical/dataset/<name>.yaml` says where to put the data): {', '.join(missing)}."]
    if pending:
        lines += ["", f"Not run yet (the data is here; run the command below): {', '.join(pending)}."]
    return lines


def _row_reading(r: Dict[str, str]) -> List[str]:
    """What a Table 1 row shows: how much sooner 1/L reaches T_L, and whether its loss went up."""
    ea, el = number(r.get("epochs_alpha")), number(r.get("epochs_inv_L"))
    inv = number(r.get("inv_L"))
    if inv is None or not math.isfinite(inv):
        out = [f"{r['dataset']}: the closed-form L is {fmt(number(r.get('L')), 4)} (not positive), so 1/L is "
               "unusable: the least-squares bound subtracts ||y^T X||/m, which exceeds K ||X^T X||/m here."]
    elif el is not None and ea is not None:
        out = [f"{r['dataset']}: 1/L = {fmt(inv, 5)} reaches T_L in {int(el):,} epochs against {int(ea):,} at 0.1 "
               f"({ea / max(el, 1):,.0f}x fewer)."]
    elif el is not None:
        out = [f"{r['dataset']}: 1/L = {fmt(inv, 5)} reaches T_L in {int(el):,} epochs; 0.1 had not after "
               f"{_int_or(r.get('ran_alpha'), '?')}."]
    else:
        out = [f"{r['dataset']}: neither rate reached T_L within the run."]
    if r.get("increases_inv_L") not in (None, ""):
        out.append(f"{r['dataset']}: over {_int_or(r.get('ran_inv_L'), '?')} epochs at 1/L the loss went up at "
                   f"{_int_or(r.get('increases_inv_L'), '?')} epochs (0 = monotone: no oscillation), ending at "
                   f"{fmt(number(r.get('final_loss_inv_L')), 5)}.")
    return out


def _figure(curves: Table, t1: Table, img: Path, out_dir: Path) -> List[str]:
    if not curves:
        return []
    png = img / "classical_loss_curves.png"
    plot_classical(curves, {r["dataset"]: r for r in t1}, png)
    rel = png.relative_to(out_dir).as_posix() if png.is_relative_to(out_dir) else png.as_posix()
    return ["", "Figure 1 (ours): full-batch loss per epoch at both rates, log-log (the dotted line is T_L).", "",
            f"![classical loss curves]({rel})"]


def classical_section(results: Path, img: Path, out_dir: Path) -> List[str]:
    """The section's lines (empty without a Table 1 or 2 row); Figure 1 drawn into ``img``."""
    t1, t2 = _read_csv(results / "classical_table1.csv"), _read_csv(results / "classical_table2.csv")
    curves = _read_csv(results / "classical_curves.csv")
    if not t1 and not t2:
        return []
    lines = _table1(t1) + _table2(t2) + _not_run(t1, t2)
    reading = [x for r in t1 for x in _row_reading(r)]
    if reading:
        lines += ["", "**Reading** (generated from the tables):", ""] + [f"- {x}" for x in reading]
    lines += _figure(curves, t1, img, out_dir)
    caps = sorted({_int_or(r.get("max_epochs"), "?") for r in t1})
    lines += ["", "Command: `python -m lipschitz_lightning.classical --multirun "
                  "dataset=breast_cancer,iris,digits,wine,diabetes,mnist results_dir=benchmarks/results` "
                  f"(`make benchmark SUITE=classical`); the epoch cap of Table 1 (`max_epochs`) was {' / '.join(caps)} "
                  "(\"not reached in N\" above). Times are full-batch epochs on the CPU (float64).", ""]
    return lines
