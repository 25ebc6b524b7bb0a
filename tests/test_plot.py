"""``python -m lipschitz_lightning.plot``: one PNG of the per-epoch lipschitz/* keys and accuracies,
read back from real runs' CSV and TensorBoard logs."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pytest

from lipschitz_lightning.plot import find_runs, main, plot_runs, read_run
from lipschitz_lightning.train import train
from tests.conftest import run_cli, tiny_cfg, tiny_data, tiny_trainer


def check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(path).shape
    assert width >= 800 and height >= 300


def test_csv_run_is_read_per_epoch_and_drawn(tmp_path: Path):
    metrics = train(tiny_cfg(tmp_path, "model=mlp", "optim=adamo", "logger=csv", kind="tabular", epochs=3, logger=True))
    (run,) = find_runs([tmp_path])
    curves = read_run(run)
    assert sorted(curves["lipschitz/lr"]) == [0, 1, 2]  # one value per epoch
    assert curves["lipschitz/lr"][2] == pytest.approx(metrics["lipschitz/lr"], rel=1e-6)
    assert curves["val/acc"][2] == pytest.approx(metrics["val/acc"], rel=1e-6)
    output = tmp_path / "figure.png"
    assert main([str(tmp_path), "-o", str(output)]) == 0
    check_png(output)
    _, keys = plot_runs([tmp_path], tmp_path / "again.png")
    assert keys[0] == "lipschitz/lr" and {"lipschitz/L", "lipschitz/K_z", "train/acc", "val/acc"} <= set(keys)


@pytest.mark.slow
def test_multirun_tensorboard_logs_become_one_figure(tmp_path: Path):
    """A real two-job multirun with the default TensorBoard logger: both runs, every epoch."""
    sweep_dir = tmp_path / "sweep"
    result = run_cli(["--multirun", *tiny_data("tabular"), *tiny_trainer(epochs=3, logger=True), "model=mlp",
                      "optim=adamo", "lr.first_epoch=0.1,1.0", f"hydra.sweep.dir={sweep_dir}",
                      f"paths.root_dir={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = find_runs([sweep_dir])
    assert [run.name for run in runs] == ["0", "1"]
    for run, first in zip(runs, (0.1, 1.0)):
        curves = read_run(run)
        assert sorted(curves["lipschitz/lr"]) == [0, 1, 2]
        assert curves["lipschitz/lr"][0] == pytest.approx(first)  # the swept first-epoch rate
        assert set(curves["val/acc"]) == {0, 1, 2}
    output = tmp_path / "multirun.png"
    assert main([str(sweep_dir), "-o", str(output), "--keys", "lipschitz/lr", "val/acc"]) == 0
    check_png(output)


def test_nothing_to_draw_is_one_line(tmp_path: Path, capsys):
    assert main([str(tmp_path), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no run logs")
    assert main([str(tmp_path / "missing"), "-o", str(tmp_path / "x.png")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
