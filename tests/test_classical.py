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


@pytest.mark.slow
def test_cli_prints_epochs_for_both_rates(tmp_path: Path):
    proc = run_cli(["dataset=iris", "max_epochs=30", "curve_epochs=5", "table2=false",
                    f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "alpha = 0.1: not reached in 30 epochs" in proc.stdout
    assert "alpha = 1/L = " in proc.stdout and "paper: T_L=0.2" in proc.stdout


@pytest.mark.slow
def test_cli_missing_data_is_one_line(tmp_path: Path):
    proc = run_cli(["dataset=boston", f"data_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path}/boston.csv not found (put the data set's CSV there; see its config file)"]


# --------------------------------------------------------------------------- progress and scaling


def _inv_l_unscaled(name: str, rows=None) -> float:
    """1/L of softmax regression on the unscaled features (+ intercept), from the math package alone."""
    from lipschitz_lightning.math.bounds import softmax_regression_constant

    data = classical.load_sklearn(name)
    x = data.x if rows is None else data.x[rows]
    y = data.y if rows is None else data.y[rows]
    x = torch.as_tensor(np.concatenate([x, np.ones((len(x), 1))], axis=1))
    return 1 / float(softmax_regression_constant(x, int(y.max()) + 1))


@pytest.mark.slow
def test_cli_prints_progress_lines_every_n_epochs(tmp_path: Path):
    proc = run_cli(["dataset=iris", "max_epochs=30", "curve_epochs=5", "table2=false", "progress_every=10",
                    "progress_seconds=null", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line.strip() for line in proc.stdout.splitlines() if ": epoch " in line]
    assert [line.split(",")[0] for line in lines] == [
        "alpha = 0.1: epoch 10 / 30", "alpha = 0.1: epoch 20 / 30",
        "alpha = 1/L = 2.32658: epoch 10 / 30"]  # 1/L reaches T_L at epoch 17
    assert all("loss " in line and "target < T_L = 0.2" in line for line in lines)
    # The scaling line comes before the descent, so a long run says what it does from the start.
    out = proc.stdout
    assert out.index("scaling: ") < out.index("epoch 10 / 30") < out.index("not reached in 30 epochs")


def test_progress_lines_by_elapsed_time(capsys):
    """progress_seconds=0: every epoch has waited long enough, so each one prints (Table 2 too)."""
    cfg = compose_classical("dataset=iris", "max_epochs=4", "curve_epochs=0", "dataset.accuracy_epochs=3",
                            "progress_seconds=0")
    classical.run(cfg)
    out = capsys.readouterr().out
    assert [line.split(",")[0].strip() for line in out.splitlines() if "alpha = 0.1: epoch" in line] == [
        "alpha = 0.1: epoch 1 / 4", "alpha = 0.1: epoch 2 / 4", "alpha = 0.1: epoch 3 / 4",  # Table 1
        "alpha = 0.1: epoch 1 / 3", "alpha = 0.1: epoch 2 / 3"]  # Table 2
    assert "target N_E = 3 epochs" in out
    cfg = compose_classical("dataset=iris", "max_epochs=4", "curve_epochs=0", "table2=false", "progress_seconds=null")
    classical.run(cfg)
    assert ": epoch " not in capsys.readouterr().out  # off


def test_iris_table1_runs_unscaled_as_the_papers_figure_says():
    """The paper's iris 1/L = 1.902 is the unscaled bound's; unit-sum scaling gives about 1,198."""
    cfg = compose_classical("dataset=iris", "max_epochs=1000", "curve_epochs=0")
    row, _ = classical.table1(cfg, classical.load_sklearn("iris"), torch.float64)
    assert row["scale"] == "none" and row["scale_basis"] == "paper"
    whole = _inv_l_unscaled("iris")
    assert row["inv_L"] == pytest.approx(whole) and row["inv_L_none"] == pytest.approx(whole)
    # The tolerance is computed from the data: how far 1/L moves between all rows and the 70%
    # training split (Table 2's rows). The paper's figure is within that spread of the unscaled
    # bound, and the training split's unscaled 1/L is within 3% of it.
    from sklearn.model_selection import train_test_split

    labels = classical.load_sklearn("iris").y
    train, _ = train_test_split(np.arange(len(labels)), test_size=0.3, random_state=0, stratify=labels)
    split = _inv_l_unscaled("iris", train)
    assert row["split_inv_L_none"] == pytest.approx(split)
    spread = whole / split - 1
    assert 0 < spread < 0.3
    assert split / (1 + spread) <= 1.902 <= whole * (1 + spread)
    assert abs(split - 1.902) / 1.902 < 0.03
    # The unit-sum scaled 1/L is reported too, and is nowhere near the paper's.
    assert row["inv_L_unit_sum"] == pytest.approx(1197.9, rel=1e-3)
    # The rate-independent check: at alpha = 0.1 the unscaled run reaches T_L in hundreds of epochs
    # (paper: 413), where the unit-sum scaled one needed more than 100,000.
    assert row["epochs_alpha"] is not None and 413 / 2 < row["epochs_alpha"] < 413 * 2


@pytest.mark.parametrize("name, scale, basis", [("breast_cancer", "unit_sum", "paper"), ("wine", "unit_sum", "stated")])
def test_table1_scaling_choice_per_row(name: str, scale: str, basis: str):
    cfg = compose_classical(f"dataset={name}", "max_epochs=2", "curve_epochs=0")
    row, _ = classical.table1(cfg, classical.load_sklearn(name), torch.float64)
    assert (row["scale"], row["scale_basis"]) == (scale, basis)
    assert math.isfinite(row["inv_L_unit_sum"]) and math.isfinite(row["inv_L_none"])
    if basis == "paper":  # the paper's figure within the data's own spread of the chosen bound
        paper = float(cfg.dataset.paper.inv_L)
        lo, hi = sorted((row["inv_L_unit_sum"], row["split_inv_L_unit_sum"]))
        assert lo / (hi / lo) <= paper <= hi * (hi / lo)
        assert not (row["inv_L_none"] / 10 < paper < row["inv_L_none"] * 10)


def test_unclear_scaling_reports_both_and_the_report_says_so(tmp_path: Path, capsys):
    """A paper figure that neither bound explains (30 for iris): the nearer one runs, both are shown."""
    cfg = compose_classical("dataset=iris", "max_epochs=3", "curve_epochs=0", "table2=false", "dataset.paper.inv_L=30",
                            f"results_dir={tmp_path}", "progress_seconds=null")
    row = classical.run(cfg)["table1"]
    assert row["scale_basis"] == "unclear" and row["scale"] == "none"  # log-nearer: 30 / 2.8 < 410 / 30
    out = capsys.readouterr().out
    assert "UNCLEAR" in out and "unit-sum scaled 1/L: 1197.9 all rows" in out and "unscaled 1/L: 2.32658 all rows" in out
    from lipschitz_lightning.bench.report import generate

    text = generate(tmp_path, tmp_path / "out" / "benchmarks.md")
    table = [line for line in text.splitlines() if line.startswith("| iris |")][0]
    assert "unscaled (**unclear**" in table and "1197.9 (unit-sum)" in table
    assert "iris: **unclear**, the paper's 1/L = 30" in text


def test_report_reads_rows_written_before_the_scaling_choice(tmp_path: Path):
    """Old result rows (no scale columns) stay readable: Table 1 was always unit-sum scaled then."""
    header = ("dataset,loss,m,n,threshold,L,inv_L,initial_loss,epochs_alpha,epochs_inv_L,ran_alpha,ran_inv_L,"
              "final_loss_alpha,final_loss_inv_L,increases_alpha,increases_inv_L,seconds_alpha,seconds_inv_L,max_epochs,"
              "alpha,seed,dtype,paper_threshold,paper_inv_L,paper_epochs_alpha,paper_epochs_inv_L")
    (tmp_path / "classical_table1.csv").write_text(
        header + "\niris,softmax_ce,150,4,0.2,0.000834,1197.9,1.098,,3456,20000,5000,1.08,0.168,0,0,102,31,20000,0.1,0,"
        "float64,0.2,1.902,413,49\n")
    from lipschitz_lightning.bench.report import generate

    text = generate(tmp_path, tmp_path / "out" / "benchmarks.md")
    table = [line for line in text.splitlines() if line.startswith("| iris |")][0]
    assert "unit-sum (always, before the per-row choice)" in table and "| 1197.9 |" in table


@pytest.mark.slow
def test_cli_bad_scaling_is_one_line(tmp_path: Path):
    proc = run_cli(["dataset=iris", "dataset.table1_scale=unit", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: dataset.table1_scale must be auto, unit_sum or none, got 'unit'"]
