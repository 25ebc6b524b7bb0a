"""The result files of the classical experiments (the report's input): ``classical_table1.csv``,
``classical_table2.csv`` and ``classical_curves.csv`` in a results folder, written by the bench
results writer (:func:`lipschitz_lightning.bench.results.upsert_rows`): a run replaces its data
set's rows and keeps the other data sets'."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from lipschitz_lightning.bench.results import upsert_rows

__all__ = ["CURVE_COLUMNS", "TABLE1_COLUMNS", "TABLE2_COLUMNS", "curve_points", "save_table1", "save_table2",
           "upsert_dataset"]

TABLE1_COLUMNS = ("dataset", "loss", "m", "n", "threshold", "L", "inv_L", "initial_loss", "epochs_alpha", "epochs_inv_L",
                  "ran_alpha", "ran_inv_L", "final_loss_alpha", "final_loss_inv_L", "increases_alpha", "increases_inv_L",
                  "seconds_alpha", "seconds_inv_L", "max_epochs", "alpha", "seed", "dtype",
                  "paper_threshold", "paper_inv_L", "paper_epochs_alpha", "paper_epochs_inv_L",
                  "scale", "scale_basis", "inv_L_unit_sum", "inv_L_none", "split_inv_L_unit_sum", "split_inv_L_none")
TABLE2_COLUMNS = ("dataset", "m_train", "m_test", "scale", "accuracy_epochs", "inv_L", "acc_alpha", "acc_inv_L", "alpha", "seed",
                  "paper_accuracy_epochs", "paper_inv_L", "paper_acc_alpha", "paper_acc_inv_L",
                  "scale_basis", "inv_L_unit_sum", "inv_L_none")
CURVE_COLUMNS = ("dataset", "rate", "epoch", "loss")


def upsert_dataset(path: Path, columns: Sequence[str], dataset: str, rows: Sequence[Dict[str, object]]) -> None:
    """Replace ``dataset``'s rows of the CSV ``path`` by ``rows`` (other data sets kept)."""
    upsert_rows(Path(path), columns, "dataset", dataset, rows)


def curve_points(n: int) -> List[int]:
    """Epochs kept for Figure 1: all of the first 100, 300 log-spaced ones, every 500th, the last."""
    keep = set(range(min(n, 100)))
    if n > 100:
        keep.update(int(round(v)) for v in np.logspace(2, math.log10(n - 1), 300))
    keep.update(range(0, n, 500))
    keep.add(n - 1)
    return sorted(e for e in keep if 0 <= e < n)



def save_table1(results_dir: str, name: str, row: Dict[str, object], curves: Dict[str, List[float]]) -> None:
    """Table 1's row of data set ``name`` and the epochs of its loss curves that Figure 1 keeps."""
    points = []
    for rate, losses in curves.items():
        points += [{"dataset": name, "rate": rate, "epoch": e, "loss": losses[e]} for e in curve_points(len(losses))]
    upsert_dataset(Path(results_dir) / "classical_curves.csv", CURVE_COLUMNS, name, points)
    upsert_dataset(Path(results_dir) / "classical_table1.csv", TABLE1_COLUMNS, name, [row])


def save_table2(results_dir: str, name: str, row: Dict[str, object]) -> None:
    upsert_dataset(Path(results_dir) / "classical_table2.csv", TABLE2_COLUMNS, name, [row])
