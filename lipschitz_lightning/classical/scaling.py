"""Which feature scaling a row of the paper's tables runs with (:func:`choose_scale`).

Every column of X (with the intercept's column of ones) divided by its sum (the paper's section
7.1, :func:`~lipschitz_lightning.math.bounds.scale_columns_to_unit_sum`), or the features as
loaded: the paper's own 1/L for a row says which one it used (its iris figure is the unscaled bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from lipschitz_lightning.classical.descent import constant
from lipschitz_lightning.math.bounds import is_valid_bound, scale_columns_to_unit_sum

__all__ = ["SCALE_BASES", "SCALINGS", "SCALING_WORDS", "ClassicalConfigError", "ScaleChoice", "apply_scale",
           "choose_scale", "fmt_g", "inverse"]

# The feature scalings a row can run with: every column of X (with the intercept's column of ones)
# divided by its sum (paper section 7.1), or the features as loaded.
SCALINGS: Tuple[str, ...] = ("unit_sum", "none")
SCALING_WORDS: Dict[str, str] = {"unit_sum": "unit-sum scaled", "none": "unscaled"}
# How a row's scaling was decided (the ``scale_basis`` column of the results).
SCALE_BASES: Dict[str, str] = {
    "paper": "the paper's 1/L matches this scaling only",
    "unclear": "the paper's 1/L matches both scalings or neither: the nearer one is run, both are reported",
    "stated": "no paper figure: the scaling the paper states (section 7.1)",
    "config": "set in the config",
}


class ClassicalConfigError(ValueError):
    """A bad value in the classical config (one-line message)."""


def apply_scale(x: torch.Tensor, scale: str, reference: Optional[torch.Tensor] = None) -> torch.Tensor:
    return scale_columns_to_unit_sum(x, reference=reference) if scale == "unit_sum" else x


def inverse(big_l: float) -> float:
    return 1.0 / big_l if is_valid_bound(big_l) else float("nan")


@dataclass
class ScaleChoice:
    """The scaling a row runs with, and the numbers that decided it.

    ``inv_L[s]`` is 1/L of every row under scaling ``s``, ``split_inv_L[s]`` that of the 70%
    training split (Table 2's rows). How far 1/L moves between the two is how much it depends on
    which rows the paper used; the paper's figure *matches* scaling ``s`` when it lies within
    ``[lo / (1 + tol), hi * (1 + tol)]``, ``lo``/``hi`` the smaller/larger of the two values and
    ``tol = hi / lo - 1`` (:meth:`band`): a tolerance computed from the data, not picked.
    """

    scale: str
    basis: str
    inv_L: Dict[str, float]
    split_inv_L: Dict[str, float]
    paper_inv_L: Optional[float]
    matches: Tuple[str, ...]

    def band(self, scale: str) -> Optional[Tuple[float, float, float]]:
        """``(lo, hi, tol)`` of ``scale``, or None where its bound is not usable."""
        values = (self.inv_L[scale], self.split_inv_L[scale])
        if not all(math.isfinite(v) and v > 0 for v in values):
            return None
        lo, hi = min(values), max(values)
        return lo, hi, hi / lo - 1.0

    def reason(self) -> str:
        """One line: which scaling, on what grounds, with 1/L under both."""
        word = SCALING_WORDS[self.scale]
        if self.basis == "config":
            head = f"{word} (set in the config)"
        elif self.basis == "stated":
            head = f"{word} (auto: no paper figure, so the paper's stated scaling, section 7.1)"
        elif self.basis == "paper":
            head = f"{word} (auto: the paper's 1/L = {fmt_g(self.paper_inv_L)} matches the {word} bound only)"
        else:
            which = "both bounds" if self.matches else "neither bound"
            head = (f"{word} (auto, UNCLEAR: the paper's 1/L = {fmt_g(self.paper_inv_L)} matches {which}; "
                    f"running the nearer one, both reported)")
        if self.basis == "config" and self.paper_inv_L is not None:
            head += f"; the paper's 1/L = {fmt_g(self.paper_inv_L)} matches " + (
                " and ".join(SCALING_WORDS[s] for s in self.matches) if self.matches else "neither bound")
        return f"{head}. " + "; ".join(f"{SCALING_WORDS[s]} 1/L: {self._band_words(s)}" for s in SCALINGS)

    def _band_words(self, scale: str) -> str:
        text = f"{fmt_g(self.inv_L[scale])} all rows, {fmt_g(self.split_inv_L[scale])} 70% split"
        band = self.band(scale)
        if band is None:
            return text + " (bound not usable)"
        lo, hi, tol = band
        return text + f" (matches {_g3(lo / (1 + tol))} to {_g3(hi * (1 + tol))})"


def _g3(value: float) -> str:
    return f"{value:.3g}"


def fmt_g(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.6g}"


def _log_distance(value: float, band: Optional[Tuple[float, float, float]]) -> float:
    if band is None:
        return math.inf
    lo, hi, _ = band
    return max(0.0, math.log(lo / value), math.log(value / hi))


def choose_scale(loss: str, x: torch.Tensor, y: torch.Tensor, x_split: torch.Tensor, y_split: torch.Tensor, k: int,
                 paper_inv_L: Optional[float], requested: str = "auto") -> ScaleChoice:
    """The scaling whose 1/L the paper's figure points to (``requested="auto"``), or ``requested``.

    Args:
        x, y: every row, unscaled, with the intercept column; x_split, y_split: the 70% training split.
        paper_inv_L: the paper's 1/L for this table (None: not in the paper).
        requested: ``auto``, ``unit_sum`` or ``none``.

    ``auto``: the one scaling that matches the paper's figure (:class:`ScaleChoice`); where both or
    neither match, the one nearer to it (log scale), marked ``unclear``; without a paper figure, the
    unit-sum scaling the paper's section 7.1 states.
    """
    if requested not in ("auto",) + SCALINGS:
        raise ClassicalConfigError(f"scale must be auto, unit_sum or none, got {requested!r}")
    inv = {s: inverse(constant(loss, apply_scale(x, s), y, k)) for s in SCALINGS}
    split = {s: inverse(constant(loss, apply_scale(x_split, s), y_split, k)) for s in SCALINGS}
    paper = float(paper_inv_L) if paper_inv_L is not None else None
    probe = ScaleChoice("unit_sum", "stated", inv, split, paper, ())
    matches: Tuple[str, ...] = ()
    if paper is not None and paper > 0:
        for s in SCALINGS:
            band = probe.band(s)
            if band is not None and band[0] / (1 + band[2]) <= paper <= band[1] * (1 + band[2]):
                matches += (s,)
    if requested != "auto":
        return ScaleChoice(requested, "config", inv, split, paper, matches)
    if paper is None or paper <= 0:
        return ScaleChoice("unit_sum", "stated", inv, split, paper, matches)
    if len(matches) == 1:
        return ScaleChoice(matches[0], "paper", inv, split, paper, matches)
    nearest = min(SCALINGS, key=lambda s: _log_distance(paper, probe.band(s)))
    return ScaleChoice(nearest, "unclear", inv, split, paper, matches)

