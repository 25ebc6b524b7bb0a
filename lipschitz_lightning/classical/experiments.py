"""The paper's classical experiments (sections 7.1-7.2): full-batch gradient descent at a guessed
rate alpha = 0.1 against alpha = 1/L, L the closed-form constant of the model's loss.

For one data set (``conf/classical/dataset/<name>.yaml``):

* **Table 1** (:func:`table1`): X (with a column of ones for the intercept) is scaled as the
  paper's own 1/L for the row points to (:func:`~lipschitz_lightning.classical.scaling.choose_scale`).
  ``1/L`` is computed once from the whole set, and gradient descent runs from the same initial
  weights at both rates until the full-batch loss is below the threshold ``T_L``: the epochs taken
  are ``E_alpha`` and ``E_1/L``. A line of progress (epoch, loss, target) comes every
  ``progress_seconds`` (10 s) of a descent.
* **Figure 1**: the loss of every epoch of both runs (the ``1/L`` run continues to
  ``curve_epochs``), and how often it went up (oscillation).
* **Table 2** (:func:`table2`): 1/L from the training split (70%, or the official split), test
  accuracy after ``N_E`` epochs at both rates.

:func:`run` does both for ``cfg.dataset``, prints them and saves them
(:mod:`~lipschitz_lightning.classical.tables`) when ``results_dir`` is set.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from lipschitz_lightning.classical.descent import (
    accuracy,
    build_model,
    constant,
    descend,
    increases,
    num_outputs,
    targets,
    with_intercept,
)
from lipschitz_lightning.classical.loaders import ClassicalDataError, Data
from lipschitz_lightning.classical.scaling import (
    SCALING_WORDS,
    SCALINGS,
    ClassicalConfigError,
    ScaleChoice,
    apply_scale,
    choose_scale,
    fmt_g,
    inverse,
)
from lipschitz_lightning.classical.tables import save_table1, save_table2
from lipschitz_lightning.math.bounds import is_valid_bound
from lipschitz_lightning.math.losses import get_loss

__all__ = ["run", "table1", "table2"]


def _split(cfg: DictConfig, data: Data, loss: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Table 2's rows: the official split, or a 70/30 one (stratified for classification)."""
    if data.x_test is not None:
        return data.x, data.x_test, data.y, data.y_test
    from sklearn.model_selection import train_test_split

    return train_test_split(data.x, data.y, test_size=0.3, random_state=int(cfg.seed),
                            stratify=data.y if get_loss(loss).is_classification else None)


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
    raw = torch.as_tensor(with_intercept(data.x), dtype=dtype)
    y = targets(data.y, loss, dtype)
    k = num_outputs(data.y, loss)
    x_train, _, y_train, _ = _split(cfg, data, loss)
    choice = choose_scale(loss, raw, y, torch.as_tensor(with_intercept(x_train), dtype=dtype),
                          targets(y_train, loss, dtype), k, _paper(cfg).get("inv_L"),
                          str(cfg.dataset.get("table1_scale", "auto")))
    x = apply_scale(raw, choice.scale)
    big_l = constant(loss, x, y, k)
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
    net = build_model(cfg, x.shape[1], k, dtype, int(cfg.seed))
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
        row[f"increases_{name}"] = increases(losses)
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
    if not get_loss(loss).is_classification or not epochs:
        return None
    x_train, x_test, y_train, y_test = _split(cfg, data, loss)
    raw_train = torch.as_tensor(with_intercept(x_train), dtype=dtype)
    raw_test = torch.as_tensor(with_intercept(x_test), dtype=dtype)
    y, yt = targets(y_train, loss, dtype), targets(y_test, loss, dtype)
    k = num_outputs(data.y, loss)
    requested = str(cfg.dataset.get("table2_scale", "unit_sum"))
    inv = {s: inverse(constant(loss, apply_scale(raw_train, s), y, k)) for s in SCALINGS}
    basis = "config"
    scale = requested
    if requested == "auto":
        # The paper's Table 2 rate is that of a training split; the band runs from it to all rows.
        raw_all = torch.as_tensor(with_intercept(np.concatenate([x_train, x_test])), dtype=dtype)
        y_all = targets(np.concatenate([y_train, y_test]), loss, dtype)
        choice = choose_scale(loss, raw_all, y_all, raw_train, y, k, _table2_paper_inv_L(cfg))
        scale, basis = choice.scale, choice.basis
    x, xt = apply_scale(raw_train, scale), apply_scale(raw_test, scale, reference=raw_train)
    row: Dict[str, object] = {"dataset": cfg.dataset.name, "m_train": len(y_train), "m_test": len(y_test),
                              "scale": scale, "scale_basis": basis, "accuracy_epochs": int(epochs), "inv_L": inv[scale],
                              **{f"inv_L_{s}": inv[s] for s in SCALINGS}}
    if echo is not None:
        echo(f"{cfg.dataset.name}: Table 2, {row['m_train']} training / {row['m_test']} test rows, {int(epochs):,} epochs, "
             f"{SCALING_WORDS[scale]} ({'auto' if basis != 'config' else 'set in the config'}); 1/L "
             + ", ".join(f"{SCALING_WORDS[s]} {fmt_g(inv[s])}" for s in SCALINGS)
             + (f"; paper {fmt_g(float(_table2_paper_inv_L(cfg)))}" if _table2_paper_inv_L(cfg) is not None else ""))
    net = build_model(cfg, x.shape[1], k, dtype, int(cfg.seed))
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
            row[f"acc_{name}"] = accuracy(net(xt), yt, loss)
    return row


def _table2_paper_inv_L(cfg: DictConfig) -> Optional[float]:
    """The paper's Table 2 rate: ``paper.table2_inv_L`` (Table 2 differs from Table 1 for some sets)."""
    paper = _paper(cfg)
    value = paper.get("table2_inv_L", paper.get("inv_L"))
    return float(value) if value is not None else None



def _fmt_epochs(value: Optional[int], ran: int) -> str:
    return f"{value:,}" if value is not None else f"not reached in {ran:,}"


def _echo(line: str) -> None:
    print(line, flush=True)


def _check(cfg: DictConfig) -> None:
    """The run's own values, before any data is loaded (one-line :class:`ClassicalConfigError`)."""
    for key in ("progress_every", "progress_seconds"):
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ClassicalConfigError(f"{key} must be a non-negative number or null, got {value!r}")
    for key, default in (("table1_scale", "auto"), ("table2_scale", "unit_sum")):
        value = str(cfg.dataset.get(key, default))
        if value not in ("auto",) + SCALINGS:
            raise ClassicalConfigError(f"dataset.{key} must be auto, unit_sum or none, got {value!r}")


def _load(cfg: DictConfig) -> Data:
    try:
        return hydra.utils.instantiate(cfg.dataset.data)
    except hydra.errors.InstantiationException as exc:
        if isinstance(exc.__cause__, ClassicalDataError):
            raise exc.__cause__ from None
        raise


def _run_table1(cfg: DictConfig, data: Data, dtype: torch.dtype, paper: Dict[str, object]) -> Dict[str, object]:
    """Table 1 and Figure 1's curves: run, print, save."""
    name = str(cfg.dataset.name)
    row, curves = table1(cfg, data, dtype, echo=_echo)
    row.update(alpha=float(cfg.alpha), seed=int(cfg.seed), dtype=str(cfg.dtype),
               **{f"paper_{k}": paper.get(k) for k in ("threshold", "inv_L", "epochs_alpha", "epochs_inv_L")})
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
        save_table1(str(cfg.results_dir), name, row, curves)
    return row


def _run_table2(cfg: DictConfig, data: Data, dtype: torch.dtype, paper: Dict[str, object]) -> Optional[Dict[str, object]]:
    """Table 2: run, print, save (None: the data set has no accuracy, or no N_E)."""
    name = str(cfg.dataset.name)
    row2 = table2(cfg, data, dtype, echo=_echo)
    if row2 is None:
        return None
    row2.update(alpha=float(cfg.alpha), seed=int(cfg.seed), paper_inv_L=_table2_paper_inv_L(cfg),
                **{f"paper_{k}": paper.get(k) for k in ("accuracy_epochs", "acc_alpha", "acc_inv_L")})
    print(f"{name}: test accuracy after {row2['accuracy_epochs']} epochs: alpha = {cfg.alpha:g}: "
          f"{row2['acc_alpha']:.4f}, 1/L = {row2['inv_L']:.6g}: {row2['acc_inv_L']:.4f}"
          + (f"  (paper: {paper.get('acc_alpha')} vs {paper.get('acc_inv_L')})" if paper.get("acc_alpha") else ""))
    if cfg.results_dir:
        save_table2(str(cfg.results_dir), name, row2)
    return row2


def run(cfg: DictConfig) -> Dict[str, object]:
    """Tables 1 and 2 for ``cfg.dataset``; print them (with progress); save them when ``results_dir`` is set."""
    dtype = getattr(torch, str(cfg.dtype))
    _check(cfg)
    data = _load(cfg)
    if data.x.size < 5_000_000:
        torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    paper = _paper(cfg)
    out: Dict[str, object] = {}
    if cfg.dataset.get("threshold") is not None:
        out["table1"] = _run_table1(cfg, data, dtype, paper)
    if cfg.get("table2", True):
        row2 = _run_table2(cfg, data, dtype, paper)
        if row2 is not None:
            out["table2"] = row2
    sys.stdout.flush()
    return out
