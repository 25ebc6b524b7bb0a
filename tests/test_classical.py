"""The classical experiments' CLI (paper Tables 1-2, Figure 1) on bundled and generated data.

Fast: scikit-learn's bundled sets with few epochs, MNIST from generated files; no ../shared.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from lipschitz_lightning import classical
from lipschitz_lightning.math.bounds import logistic_regression_constant, scale_columns_to_unit_sum
from lipschitz_lightning.models import LogisticRegression
from tests._dataset_files import write_mnist_raw

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf" / "classical"
DATASETS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml"))
BUNDLED = ("breast_cancer", "iris", "digits", "wine", "diabetes")


def compose_classical(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="classical", overrides=list(overrides))


def run_cli(args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))
    env.pop("LIPSCHITZ_DATA", None)
    return subprocess.run([sys.executable, "-m", "lipschitz_lightning.classical", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_config_composes(name: str, tmp_path: Path):
    cfg = compose_classical(f"dataset={name}", f"data_dir={tmp_path}")
    assert cfg.dataset.name == name
    assert cfg.dataset.loss in classical.CONSTANTS
    OmegaConf.to_container(cfg, resolve=True)
    if name in BUNDLED:
        data = classical.load_sklearn(name)
        assert data.x.shape[0] == data.y.shape[0] > 100
    elif name != "mnist":
        # The data sets that need a download: one clear error naming where the files go.
        with pytest.raises(classical.ClassicalDataError, match=str(tmp_path)):
            import hydra

            try:
                hydra.utils.instantiate(cfg.dataset.data)
            except hydra.errors.InstantiationException as exc:
                raise exc.__cause__
    if cfg.dataset.get("paper"):
        assert all(isinstance(v, (int, float)) or v is None for v in cfg.dataset.paper.values())


def test_breast_cancer_one_over_L_reaches_the_threshold_in_a_handful_of_epochs(tmp_path: Path):
    """The paper's Table 1 row: 1/L gets below T_L = 0.69 in a few epochs, 0.1 not in 2,000."""
    cfg = compose_classical("dataset=breast_cancer", "max_epochs=2000", "curve_epochs=50", f"results_dir={tmp_path}",
                            "dataset.accuracy_epochs=400")
    out = classical.run(cfg)
    row = out["table1"]
    assert row["m"] == 569 and row["n"] == 30
    assert row["epochs_inv_L"] is not None and row["epochs_inv_L"] <= 5
    assert row["epochs_alpha"] is None and row["ran_alpha"] == 2000
    assert row["initial_loss"] == pytest.approx(math.log(2), abs=1e-3)  # bias 0, tiny scaled features
    assert row["increases_inv_L"] == 0  # monotone: no oscillation at 1/L
    # 1/L is the math package's logistic constant of the scaled data (with the intercept column).
    x = np.concatenate([classical.load_sklearn("breast_cancer").x, np.ones((569, 1))], axis=1)
    expected = 1 / float(logistic_regression_constant(scale_columns_to_unit_sum(torch.as_tensor(x))))
    assert row["inv_L"] == pytest.approx(expected)
    assert out["table2"]["acc_inv_L"] > out["table2"]["acc_alpha"]
    with open(tmp_path / "classical_table1.csv") as handle:
        saved = list(csv.DictReader(handle))
    assert [r["dataset"] for r in saved] == ["breast_cancer"]
    assert float(saved[0]["paper_epochs_alpha"]) == 37008
    # Upsert: a second run replaces the row instead of adding one; curves hold both rates.
    classical.run(cfg)
    with open(tmp_path / "classical_table1.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 1
    with open(tmp_path / "classical_curves.csv") as handle:
        rates = {r["rate"] for r in csv.DictReader(handle)}
    assert rates == {"alpha", "inv_L"}


def test_descend_same_start_and_threshold():
    torch.manual_seed(0)
    x = torch.rand(40, 3, dtype=torch.float64)
    y = (x[:, 0] > 0.5).double().reshape(-1, 1)
    net = LogisticRegression((3,)).double()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    losses, reached = classical.descend(net, x, y, "bce", 1.0, 500, threshold=0.6)
    assert reached is not None and losses[reached] < 0.6 <= losses[reached - 1]
    assert len(losses) == reached + 1  # stops at the threshold
    net.load_state_dict(start)
    losses2, reached2 = classical.descend(net, x, y, "bce", 1.0, 3)  # no threshold: all the epochs
    assert losses2[0] == losses[0] and len(losses2) == 4 and reached2 is None


def test_diabetes_invalid_bound_is_reported_not_run():
    cfg = compose_classical("dataset=diabetes", "max_epochs=300", "curve_epochs=10")
    row = classical.run(cfg)["table1"]
    assert row["L"] <= 0 and math.isnan(row["inv_L"])
    assert "epochs_inv_L" not in row and row["ran_alpha"] == 300


def test_mnist_table2_on_generated_files(tmp_path: Path):
    write_mnist_raw(tmp_path, num_train=30, num_test=10)
    cfg = compose_classical("dataset=mnist", f"data_dir={tmp_path}", "dataset.accuracy_epochs=3")
    out = classical.run(cfg)
    assert "table1" not in out
    row = out["table2"]
    assert row["m_train"] == 30 and row["m_test"] == 10 and 0.0 <= row["acc_inv_L"] <= 1.0


def test_cli_prints_epochs_for_both_rates(tmp_path: Path):
    proc = run_cli(["dataset=iris", "max_epochs=30", "curve_epochs=5", "table2=false",
                    f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "alpha = 0.1: not reached in 30 epochs" in proc.stdout
    assert "alpha = 1/L = " in proc.stdout and "paper: T_L=0.2" in proc.stdout


def test_cli_missing_data_is_one_line(tmp_path: Path):
    proc = run_cli(["dataset=boston", f"data_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path}/boston.csv not found (put the data set's CSV there; see its config file)"]
