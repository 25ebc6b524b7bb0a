"""The paper's classical experiments (sections 7.1-7.2): full-batch gradient descent at a guessed
rate alpha = 0.1 against alpha = 1/L, L the closed-form constant of the model's loss.

::

    python -m lipschitz_lightning.classical dataset=breast_cancer
    python -m lipschitz_lightning.classical --multirun dataset=breast_cancer,iris,digits,wine,diabetes,mnist results_dir=benchmarks/results

For one data set (``conf/classical/dataset/<name>.yaml``):

* **Table 1**: X (with a column of ones for the intercept) is scaled as the paper's own 1/L for
  the row points to (:func:`choose_scale`): every column to sum to 1
  (:func:`~lipschitz_lightning.math.bounds.scale_columns_to_unit_sum`, the paper's section 7.1),
  or not at all (the paper's iris figure is the unscaled bound). ``1/L`` is computed once from
  the whole set (:data:`CONSTANTS`, the functions of :mod:`lipschitz_lightning.math.bounds`),
  and gradient descent runs from the same initial weights at both rates until the full-batch
  loss is below the threshold ``T_L``: the epochs taken are ``E_alpha`` and ``E_1/L``. A line
  of progress (epoch, loss, target) comes every ``progress_seconds`` (10 s) of a descent.
* **Figure 1**: the loss of every epoch of both runs (the ``1/L`` run continues to
  ``curve_epochs``), and how often it went up (oscillation).
* **Table 2**: 1/L from the training split (70%, or the official split), test accuracy after
  ``N_E`` epochs at both rates.

The models are the project's (:mod:`lipschitz_lightning.models.classical`) with the losses of the
training app (:data:`lipschitz_lightning.modules.supervised.CRITERIA`). Their ``nn.Linear`` bias is
held at zero: the intercept is the scaled column of ones, so the bound covers every weight trained
(an unscaled bias has a gradient Lipschitz constant near 1/4 and makes 1/L steps diverge).
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

if __name__ == "__main__":  # without the [app] extra: one line naming it, exit status 2, no traceback
    from lipschitz_lightning.app.cli import require_app

    require_app("python -m lipschitz_lightning.classical")

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lipschitz_lightning.math.bounds import (
    is_valid_bound,
    linear_regression_constant,
    logistic_regression_constant,
    scale_columns_to_unit_sum,
    softmax_regression_constant,
)
from lipschitz_lightning.modules.supervised import CRITERIA

__all__ = ["CONSTANTS", "SCALINGS", "ClassicalConfigError", "ClassicalDataError", "Data", "ScaleChoice", "choose_scale",
           "descend", "load_csv", "load_mnist", "load_sklearn", "load_sklearn_fetch", "run", "table1", "table2"]


class ClassicalDataError(RuntimeError):
    """A data set that is not on this machine (one-line message saying where to put it)."""


@dataclass
class Data:
    """Features and targets; ``x_test``/``y_test`` set when the data set has an official split."""

    x: np.ndarray
    y: np.ndarray
    x_test: Optional[np.ndarray] = None
    y_test: Optional[np.ndarray] = None


# Loss name -> the paper's closed-form L of the model trained with it, from (X, y, classes).
CONSTANTS: Dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "bce": lambda x, y, k: logistic_regression_constant(x),
    "softmax_ce": lambda x, y, k: softmax_regression_constant(x, k),
    "mse": lambda x, y, k: linear_regression_constant(x, y),
}


# --------------------------------------------------------------------------- loaders


def load_sklearn(name: str) -> Data:
    """A data set bundled with scikit-learn (the training app's table of them)."""
    from lipschitz_lightning.data.tabular import SKLEARN_DATASETS

    x, y = SKLEARN_DATASETS[name].loader()
    return Data(np.asarray(x, dtype=np.float64), np.asarray(y))


def load_sklearn_fetch(name: str, data_dir: str, max_rows: Optional[int] = None) -> Data:
    """California housing or covertype (first two classes, ten features) from scikit-learn's cache."""
    from sklearn import datasets

    home = os.path.join(data_dir, "scikit_learn_data")
    try:
        if name == "california_housing":
            x, y = datasets.fetch_california_housing(data_home=home, download_if_missing=False, return_X_y=True)
        elif name == "covertype":
            x, y = datasets.fetch_covtype(data_home=home, download_if_missing=False, return_X_y=True)
            keep = (y == 1) | (y == 2)
            x, y = x[keep][:, :10], (y[keep] == 2).astype(np.int64)
        else:
            raise ClassicalDataError(f"unknown scikit-learn fetch data set {name!r}")
    except OSError as exc:
        raise ClassicalDataError(
            f"{name} is not in {home} (scikit-learn downloads it there when the network allows: "
            f"sklearn.datasets.fetch_{'covtype' if name == 'covertype' else name}(data_home={home!r}))"
        ) from exc
    if max_rows:
        x, y = x[:max_rows], y[:max_rows]
    return Data(np.asarray(x, dtype=np.float64), np.asarray(y))


def load_csv(path: str, target: str, drop: Sequence[str] = ()) -> Data:
    """A CSV file with a header row: every column but ``target`` and ``drop`` is a feature."""
    if not os.path.exists(path):
        raise ClassicalDataError(f"{path} not found (put the data set's CSV there; see its config file)")
    with open(path, newline="") as handle:
        reader = csv.reader(handle, skipinitialspace=True)
        header = [h.strip() for h in next(reader)]
        rows = [r for r in reader if r]
    if target not in header:
        raise ClassicalDataError(f"{path}: no column {target!r} (columns: {', '.join(header[:12])} ...)")
    features = [i for i, h in enumerate(header) if h != target and h not in drop]
    values = np.array([[float(r[i]) for i in features] for r in rows])
    y = np.array([float(r[header.index(target)]) for r in rows])
    return Data(values, y)


def load_mnist(data_dir: str) -> Data:
    """MNIST's official 60,000 / 10,000 split as flat 784-pixel rows in [0, 1] (/255)."""
    import torchvision

    try:
        train = torchvision.datasets.MNIST(root=data_dir, train=True, download=True)
        test = torchvision.datasets.MNIST(root=data_dir, train=False, download=True)
    except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError
        raise ClassicalDataError(
            f"MNIST not found in {os.path.abspath(data_dir)}/MNIST/raw (a writable folder with the four official .gz files)"
        ) from exc
    flat = lambda d: d.data.reshape(len(d.data), -1).numpy().astype(np.float64) / 255.0  # noqa: E731
    return Data(flat(train), train.targets.numpy(), flat(test), test.targets.numpy())


# --------------------------------------------------------------------------- gradient descent


def _with_intercept(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def _targets(y: np.ndarray, loss: str, dtype: torch.dtype) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(y))
    return t.long() if loss == "softmax_ce" else t.to(dtype).reshape(-1, 1)


def _num_outputs(y: np.ndarray, loss: str) -> int:
    return int(np.max(y)) + 1 if loss == "softmax_ce" else 1


def _loss_fn(loss: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    criterion = CRITERIA[loss]()
    if loss == "bce":
        return lambda out, y: criterion(out.reshape(-1), y.reshape(-1))
    return lambda out, y: criterion(out, y)


def _accuracy(out: torch.Tensor, y: torch.Tensor, loss: str) -> float:
    if loss == "softmax_ce":
        return float((out.argmax(dim=1) == y).double().mean())
    return float(((out.reshape(-1) > 0).to(y.dtype) == y.reshape(-1)).double().mean())


def _model(cfg: DictConfig, features: int, outputs: int, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = hydra.utils.instantiate(cfg.dataset.model, input_shape=(features,), num_outputs=outputs).to(dtype)
    with torch.no_grad():
        net.head.bias.zero_()
    net.head.bias.requires_grad_(False)  # the intercept is X's scaled column of ones
    return net


def descend(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str, lr: float, epochs: int,
            threshold: Optional[float] = None, min_epochs: int = 0,
            progress: Optional[Callable[[int, float], None]] = None, progress_every: Optional[int] = None,
            progress_seconds: Optional[float] = None) -> Tuple[List[float], Optional[int]]:
    """Full-batch gradient descent on ``net``'s trainable weights at the fixed rate ``lr``.

    Runs until the loss is below ``threshold`` and at least ``min_epochs`` updates are done, or
    ``epochs`` updates, or the loss is not finite.

    Args:
        progress: Called as ``progress(epoch, loss)`` every ``progress_every`` epochs and/or when
            ``progress_seconds`` have passed since the last call (both optional; the loss is the
            float the loop reads anyway, so a call costs no extra work).

    Returns:
        The full-batch loss before every update (index e: after e updates) and the first e at
        which it was below ``threshold`` (None if never).
    """
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr)
    loss_fn = _loss_fn(loss)
    losses: List[float] = []
    reached: Optional[int] = None
    every = int(progress_every) if progress is not None and progress_every else 0
    seconds = float(progress_seconds) if progress is not None and progress_seconds is not None else None
    last = time.perf_counter()
    for epoch in range(epochs + 1):
        value = loss_fn(net(x), y)
        current = float(value.detach())
        losses.append(current)
        if reached is None and threshold is not None and current < threshold:
            reached = epoch
        if not math.isfinite(current) or epoch == epochs or (reached is not None and epoch >= min_epochs):
            break
        if progress is not None and epoch:
            if every and epoch % every == 0:
                progress(epoch, current)
                last = time.perf_counter()
            elif seconds is not None and time.perf_counter() - last >= seconds:
                progress(epoch, current)
                last = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
    return losses, reached


def _constant(loss: str, x: torch.Tensor, y: torch.Tensor, k: int) -> float:
    return float(CONSTANTS[loss](x, y, k))


def _increases(losses: Sequence[float]) -> int:
    """Epochs at which the loss went up by more than rounding (1e-12 relative)."""
    return sum(1 for a, b in zip(losses, losses[1:]) if b > a * (1 + 1e-12) + 1e-300)


# --------------------------------------------------------------------------- which scaling

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


def _scale(x: torch.Tensor, scale: str, reference: Optional[torch.Tensor] = None) -> torch.Tensor:
    return scale_columns_to_unit_sum(x, reference=reference) if scale == "unit_sum" else x


def _inverse(big_l: float) -> float:
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
            head = f"{word} (auto: the paper's 1/L = {_g(self.paper_inv_L)} matches the {word} bound only)"
        else:
            which = "both bounds" if self.matches else "neither bound"
            head = (f"{word} (auto, UNCLEAR: the paper's 1/L = {_g(self.paper_inv_L)} matches {which}; "
                    f"running the nearer one, both reported)")
        if self.basis == "config" and self.paper_inv_L is not None:
            head += f"; the paper's 1/L = {_g(self.paper_inv_L)} matches " + (
                " and ".join(SCALING_WORDS[s] for s in self.matches) if self.matches else "neither bound")
        return f"{head}. " + "; ".join(f"{SCALING_WORDS[s]} 1/L: {self._band_words(s)}" for s in SCALINGS)

    def _band_words(self, scale: str) -> str:
        text = f"{_g(self.inv_L[scale])} all rows, {_g(self.split_inv_L[scale])} 70% split"
        band = self.band(scale)
        if band is None:
            return text + " (bound not usable)"
        lo, hi, tol = band
        return text + f" (matches {_g3(lo / (1 + tol))} to {_g3(hi * (1 + tol))})"


def _g3(value: float) -> str:
    return f"{value:.3g}"


def _g(value: Optional[float]) -> str:
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
    inv = {s: _inverse(_constant(loss, _scale(x, s), y, k)) for s in SCALINGS}
    split = {s: _inverse(_constant(loss, _scale(x_split, s), y_split, k)) for s in SCALINGS}
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


def _split(cfg: DictConfig, data: Data, loss: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Table 2's rows: the official split, or a 70/30 one (stratified for classification)."""
    if data.x_test is not None:
        return data.x, data.x_test, data.y, data.y_test
    from sklearn.model_selection import train_test_split

    return train_test_split(data.x, data.y, test_size=0.3, random_state=int(cfg.seed),
                            stratify=None if loss == "mse" else data.y)


def _choice_row(choice: ScaleChoice) -> Dict[str, object]:
    return {"scale": choice.scale, "scale_basis": choice.basis,
            **{f"inv_L_{s}": choice.inv_L[s] for s in SCALINGS},
            **{f"split_inv_L_{s}": choice.split_inv_L[s] for s in SCALINGS}}


Echo = Callable[[str], None]


def _progress(echo: Optional[Echo], label: str, total: int, target: str) -> Optional[Callable[[int, float], None]]:
    if echo is None:
        return None
    began = time.perf_counter()

    def report(epoch: int, value: float) -> None:
        echo(f"    {label}: epoch {epoch:,} / {total:,}, loss {value:.6g}, target {target} "
             f"({time.perf_counter() - began:.1f} s)")

    return report


def _paper(cfg: DictConfig) -> Dict[str, object]:
    return dict(cfg.dataset.get("paper") or {})


def table1(cfg: DictConfig, data: Data, dtype: torch.dtype,
           echo: Optional[Echo] = None) -> Tuple[Dict[str, object], Dict[str, List[float]]]:
    """Epochs to ``T_L`` at alpha and at 1/L (whole data set); the loss curves of both runs.

    The features are scaled as :func:`choose_scale` decides from the paper's Table 1 figure
    (``dataset.table1_scale``, default ``auto``). ``echo``: where the scaling line and the
    progress lines go (None: silent).
    """
    loss = str(cfg.dataset.loss)
    raw = torch.as_tensor(_with_intercept(data.x), dtype=dtype)
    y = _targets(data.y, loss, dtype)
    k = _num_outputs(data.y, loss)
    x_train, _, y_train, _ = _split(cfg, data, loss)
    choice = choose_scale(loss, raw, y, torch.as_tensor(_with_intercept(x_train), dtype=dtype),
                          _targets(y_train, loss, dtype), k, _paper(cfg).get("inv_L"),
                          str(cfg.dataset.get("table1_scale", "auto")))
    x = _scale(raw, choice.scale)
    big_l = _constant(loss, x, y, k)
    valid = is_valid_bound(big_l)
    threshold = float(cfg.dataset.threshold)
    row: Dict[str, object] = {"dataset": cfg.dataset.name, "loss": loss, "m": x.shape[0], "n": x.shape[1] - 1,
                              "threshold": threshold, "L": big_l, "inv_L": 1.0 / big_l if valid else float("nan"),
                              "max_epochs": int(cfg.max_epochs), **_choice_row(choice)}
    if echo is not None:
        echo(f"{cfg.dataset.name}: Table 1, m={row['m']} n={row['n']}, T_L={threshold:g}, up to {int(cfg.max_epochs):,} epochs")
        echo(f"  scaling: {choice.reason()}")
    curves: Dict[str, List[float]] = {}
    rates = {"alpha": float(cfg.alpha)}
    if valid:
        rates["inv_L"] = 1.0 / big_l
    net = _model(cfg, x.shape[1], k, dtype, int(cfg.seed))
    start = {name: t.clone() for name, t in net.state_dict().items()}
    for name, lr in rates.items():
        net.load_state_dict(start)
        began = time.perf_counter()
        min_epochs = int(cfg.curve_epochs) if name == "inv_L" else 0
        target = f"< T_L = {threshold:g}" + (f", then on to {min_epochs:,} epochs (Figure 1)" if min_epochs else "")
        label = f"alpha = {lr:.6g}" if name == "alpha" else f"alpha = 1/L = {lr:.6g}"
        losses, reached = descend(net, x, y, loss, lr, int(cfg.max_epochs), threshold, min_epochs,
                                  progress=_progress(echo, label, int(cfg.max_epochs), target),
                                  progress_every=cfg.get("progress_every"), progress_seconds=cfg.get("progress_seconds"))
        curves[name] = losses
        row[f"epochs_{name}"] = reached
        row[f"final_loss_{name}"] = losses[-1]
        row[f"increases_{name}"] = _increases(losses)
        row[f"ran_{name}"] = len(losses) - 1
        row[f"seconds_{name}"] = round(time.perf_counter() - began, 2)
    row["initial_loss"] = curves["alpha"][0]
    return row, curves


def table2(cfg: DictConfig, data: Data, dtype: torch.dtype, echo: Optional[Echo] = None) -> Optional[Dict[str, object]]:
    """Test accuracy after ``N_E`` epochs at alpha and at 1/L (1/L from the training split).

    The scaling is ``dataset.table2_scale`` (``unit_sum``, ``none``, or ``auto``: decided by
    :func:`choose_scale` from the paper's Table 2 figure); the row carries 1/L under both.
    """
    loss = str(cfg.dataset.loss)
    epochs = cfg.dataset.get("accuracy_epochs")
    if loss == "mse" or not epochs:
        return None
    x_train, x_test, y_train, y_test = _split(cfg, data, loss)
    raw_train = torch.as_tensor(_with_intercept(x_train), dtype=dtype)
    raw_test = torch.as_tensor(_with_intercept(x_test), dtype=dtype)
    y, yt = _targets(y_train, loss, dtype), _targets(y_test, loss, dtype)
    k = _num_outputs(data.y, loss)
    requested = str(cfg.dataset.get("table2_scale", "unit_sum"))
    inv = {s: _inverse(_constant(loss, _scale(raw_train, s), y, k)) for s in SCALINGS}
    basis = "config"
    scale = requested
    if requested == "auto":
        # The paper's Table 2 rate is that of a training split; the band runs from it to all rows.
        raw_all = torch.as_tensor(_with_intercept(np.concatenate([x_train, x_test])), dtype=dtype)
        y_all = _targets(np.concatenate([y_train, y_test]), loss, dtype)
        choice = choose_scale(loss, raw_all, y_all, raw_train, y, k, _table2_paper_inv_L(cfg))
        scale, basis = choice.scale, choice.basis
    x, xt = _scale(raw_train, scale), _scale(raw_test, scale, reference=raw_train)
    row: Dict[str, object] = {"dataset": cfg.dataset.name, "m_train": len(y_train), "m_test": len(y_test),
                              "scale": scale, "scale_basis": basis, "accuracy_epochs": int(epochs), "inv_L": inv[scale],
                              **{f"inv_L_{s}": inv[s] for s in SCALINGS}}
    if echo is not None:
        echo(f"{cfg.dataset.name}: Table 2, {row['m_train']} training / {row['m_test']} test rows, {int(epochs):,} epochs, "
             f"{SCALING_WORDS[scale]} ({'auto' if basis != 'config' else 'set in the config'}); 1/L "
             + ", ".join(f"{SCALING_WORDS[s]} {_g(inv[s])}" for s in SCALINGS)
             + (f"; paper {_g(float(_table2_paper_inv_L(cfg)))}" if _table2_paper_inv_L(cfg) is not None else ""))
    net = _model(cfg, x.shape[1], k, dtype, int(cfg.seed))
    start = {name: t.clone() for name, t in net.state_dict().items()}
    for name, lr in {"alpha": float(cfg.alpha), "inv_L": row["inv_L"]}.items():
        if not math.isfinite(lr):
            row[f"acc_{name}"] = float("nan")
            continue
        net.load_state_dict(start)
        label = f"alpha = {lr:.6g}" if name == "alpha" else f"alpha = 1/L = {lr:.6g}"
        descend(net, x, y, loss, lr, int(epochs), progress=_progress(echo, label, int(epochs), f"N_E = {int(epochs):,} epochs"),
                progress_every=cfg.get("progress_every"), progress_seconds=cfg.get("progress_seconds"))
        with torch.no_grad():
            row[f"acc_{name}"] = _accuracy(net(xt), yt, loss)
    return row


def _table2_paper_inv_L(cfg: DictConfig) -> Optional[float]:
    """The paper's Table 2 rate: ``paper.table2_inv_L`` (Table 2 differs from Table 1 for some sets)."""
    paper = _paper(cfg)
    value = paper.get("table2_inv_L", paper.get("inv_L"))
    return float(value) if value is not None else None


# --------------------------------------------------------------------------- results files

TABLE1_COLUMNS = ("dataset", "loss", "m", "n", "threshold", "L", "inv_L", "initial_loss", "epochs_alpha", "epochs_inv_L",
                  "ran_alpha", "ran_inv_L", "final_loss_alpha", "final_loss_inv_L", "increases_alpha", "increases_inv_L",
                  "seconds_alpha", "seconds_inv_L", "max_epochs", "alpha", "seed", "dtype",
                  "paper_threshold", "paper_inv_L", "paper_epochs_alpha", "paper_epochs_inv_L",
                  "scale", "scale_basis", "inv_L_unit_sum", "inv_L_none", "split_inv_L_unit_sum", "split_inv_L_none")
TABLE2_COLUMNS = ("dataset", "m_train", "m_test", "scale", "accuracy_epochs", "inv_L", "acc_alpha", "acc_inv_L", "alpha", "seed",
                  "paper_accuracy_epochs", "paper_inv_L", "paper_acc_alpha", "paper_acc_inv_L",
                  "scale_basis", "inv_L_unit_sum", "inv_L_none")
CURVE_COLUMNS = ("dataset", "rate", "epoch", "loss")


def _upsert(path: Path, columns: Sequence[str], dataset: str, rows: Sequence[Dict[str, object]]) -> None:
    """Replace ``dataset``'s rows of the CSV ``path`` by ``rows`` (other data sets kept)."""
    kept: List[Dict[str, str]] = []
    if path.exists():
        with open(path, newline="") as handle:
            kept = [r for r in csv.DictReader(handle) if r["dataset"] != dataset]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
        writer.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in columns} for r in rows)
    os.replace(tmp, path)


def _curve_points(n: int) -> List[int]:
    """Epochs kept for Figure 1: all of the first 100, 300 log-spaced ones, every 500th, the last."""
    keep = set(range(min(n, 100)))
    if n > 100:
        keep.update(int(round(v)) for v in np.logspace(2, math.log10(n - 1), 300))
    keep.update(range(0, n, 500))
    keep.add(n - 1)
    return sorted(e for e in keep if 0 <= e < n)


def _fmt_epochs(value: Optional[int], ran: int) -> str:
    return f"{value:,}" if value is not None else f"not reached in {ran:,}"


def _echo(line: str) -> None:
    print(line, flush=True)


def run(cfg: DictConfig) -> Dict[str, object]:
    """Tables 1 and 2 for ``cfg.dataset``; print them (with progress); save them when ``results_dir`` is set."""
    dtype = getattr(torch, str(cfg.dtype))
    for key in ("progress_every", "progress_seconds"):
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ClassicalConfigError(f"{key} must be a non-negative number or null, got {value!r}")
    for key, default in (("table1_scale", "auto"), ("table2_scale", "unit_sum")):
        value = str(cfg.dataset.get(key, default))
        if value not in ("auto",) + SCALINGS:
            raise ClassicalConfigError(f"dataset.{key} must be auto, unit_sum or none, got {value!r}")
    try:
        data: Data = hydra.utils.instantiate(cfg.dataset.data)
    except hydra.errors.InstantiationException as exc:
        if isinstance(exc.__cause__, ClassicalDataError):
            raise exc.__cause__ from None
        raise
    if data.x.size < 5_000_000:
        torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    name = str(cfg.dataset.name)
    paper = _paper(cfg)
    out: Dict[str, object] = {}
    if cfg.dataset.get("threshold") is not None:
        row, curves = table1(cfg, data, dtype, echo=_echo)
        row.update(alpha=float(cfg.alpha), seed=int(cfg.seed), dtype=str(cfg.dtype),
                   **{f"paper_{k}": paper.get(k) for k in ("threshold", "inv_L", "epochs_alpha", "epochs_inv_L")})
        out["table1"] = row
        print(f"{name}: Table 1 ({SCALING_WORDS[str(row['scale'])]}), initial loss {row['initial_loss']:.6g}")
        print(f"  alpha = {cfg.alpha:g}: {_fmt_epochs(row['epochs_alpha'], row['ran_alpha'])} epochs to the loss < T_L"
              f" (final loss {row['final_loss_alpha']:.6g}, {row['seconds_alpha']} s)")
        if "inv_L" in curves:
            print(f"  alpha = 1/L = {row['inv_L']:.6g}: {_fmt_epochs(row['epochs_inv_L'], row['ran_inv_L'])} epochs to "
                  f"the loss < T_L; after {row['ran_inv_L']:,} epochs loss {row['final_loss_inv_L']:.6g}, "
                  f"went up at {row['increases_inv_L']} epochs")
        else:
            print(f"  alpha = 1/L: not run, the bound is not usable (L = {row['L']:.6g} <= 0)")
        if any(paper.get(k) is not None for k in ("threshold", "inv_L", "epochs_alpha", "epochs_inv_L")):
            print(f"  paper: T_L={paper.get('threshold')} 1/L={paper.get('inv_L')} "
                  f"E_0.1={paper.get('epochs_alpha')} E_1/L={paper.get('epochs_inv_L')}")
        if cfg.results_dir:
            points = []
            for rate, losses in curves.items():
                points += [{"dataset": name, "rate": rate, "epoch": e, "loss": losses[e]} for e in _curve_points(len(losses))]
            _upsert(Path(str(cfg.results_dir)) / "classical_curves.csv", CURVE_COLUMNS, name, points)
            _upsert(Path(str(cfg.results_dir)) / "classical_table1.csv", TABLE1_COLUMNS, name, [row])
    if cfg.get("table2", True):
        row2 = table2(cfg, data, dtype, echo=_echo)
        if row2 is not None:
            row2.update(alpha=float(cfg.alpha), seed=int(cfg.seed), paper_inv_L=_table2_paper_inv_L(cfg),
                        **{f"paper_{k}": paper.get(k) for k in ("accuracy_epochs", "acc_alpha", "acc_inv_L")})
            out["table2"] = row2
            print(f"{name}: test accuracy after {row2['accuracy_epochs']} epochs: alpha = {cfg.alpha:g}: "
                  f"{row2['acc_alpha']:.4f}, 1/L = {row2['inv_L']:.6g}: {row2['acc_inv_L']:.4f}"
                  + (f"  (paper: {paper.get('acc_alpha')} vs {paper.get('acc_inv_L')})" if paper.get("acc_alpha") else ""))
            if cfg.results_dir:
                _upsert(Path(str(cfg.results_dir)) / "classical_table2.csv", TABLE2_COLUMNS, name, [row2])
    sys.stdout.flush()
    return out


CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "classical"


@hydra.main(config_path=str(CONF_DIR), config_name="classical", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; a missing data set is one ``error: ...`` line and exit status 2."""
    try:
        run(cfg)
    except (ClassicalDataError, ClassicalConfigError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    # Run the package's module, not this __main__ copy: the loaders (Hydra _target_s) raise the
    # package's ClassicalDataError, which main must recognise.
    from lipschitz_lightning.classical import main as _main

    _main()
