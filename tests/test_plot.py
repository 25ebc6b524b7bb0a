"""``python -m lipschitz_lightning.plot``: one PNG of the per-epoch lipschitz/* keys and accuracies,
read back from real runs' CSV and TensorBoard logs."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import matplotlib.colors
import matplotlib.image
import matplotlib.pyplot as plt
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lipschitz_lightning.plot import draw_runs, find_runs, main, plot_runs, read_run
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


# The panels whose values span decades: the rate, L and every K.
LOG_PANELS = {"lipschitz/lr", "lipschitz/next_lr", "lipschitz/L", "lipschitz/K_z", "lipschitz/K1", "lipschitz/K2"}


def check_figure(paths: List[Path]) -> Dict[str, Dict[str, tuple]]:
    """Draw ``paths`` through the public :func:`draw_runs`; check that each run has one colour in
    every panel and in the legend, log scale where the values span decades, integer epoch ticks.
    Returns panel title -> run label -> colour."""
    figure, runs, keys = draw_runs(paths)
    try:
        (legend,) = figure.legends
        legend_colour = {text.get_text(): matplotlib.colors.to_rgba(handle.get_color())
                         for text, handle in zip(legend.get_texts(), legend.legend_handles)}
        assert len(legend_colour) == len(runs) and len(set(legend_colour.values())) == len(runs)
        panels: Dict[str, Dict[str, tuple]] = {}
        for ax in figure.axes:
            if not ax.get_title():
                continue  # an unused grid cell
            lines = {line.get_label(): matplotlib.colors.to_rgba(line.get_color()) for line in ax.get_lines()
                     if not line.get_label().startswith("_")}
            for label, colour in lines.items():
                assert colour == legend_colour[label], f"{ax.get_title()}: {label} in another colour than its legend"
            panels[ax.get_title()] = lines
            assert ax.get_yscale() == ("log" if ax.get_title() in LOG_PANELS else "linear"), ax.get_title()
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), f"{ax.get_title()}: epoch ticks {ticks}"
        assert set(panels) == set(keys)
        return panels
    finally:
        plt.close(figure)


def test_a_run_keeps_its_colour_in_every_panel(tmp_path: Path):
    """sgd logs no K1, adamo does: in the K1 panel adamo's line keeps adamo's colour."""
    for optim in ("sgd", "adamo"):
        train(tiny_cfg(tmp_path / optim, "model=mlp", f"optim={optim}", "logger=csv", kind="tabular", epochs=3,
                       logger=True))
    panels = check_figure([tmp_path / "sgd", tmp_path / "adamo"])
    (adamo,) = [label for label in panels["lipschitz/lr"] if "adamo" in label]
    assert set(panels["lipschitz/K1"]) == {adamo}  # only adamo logged K1, in its own colour (checked above)
    assert {"lipschitz/lr", "lipschitz/L", "lipschitz/K_z", "lipschitz/K1", "val/acc"} <= set(panels)


@pytest.mark.slow
def test_multirun_jobs_are_named_by_their_overrides(tmp_path: Path):
    """A real three-job multirun with the default TensorBoard logger: each job's TensorBoard run is
    named by its swept override, its lipschitz/* values are also written against the epoch, and
    the figure labels and colours each job alike in every panel (only rmsprop logs K2, only adamo K1)."""
    sweep_dir = tmp_path / "sweep"
    result = run_cli(["--multirun", *tiny_data("tabular"), *tiny_trainer(epochs=3, logger=True), "model=mlp",
                      "optim=sgd,rmsprop,adamo", f"hydra.sweep.dir={sweep_dir}", f"paths.root_dir={tmp_path}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = find_runs([sweep_dir])
    assert [run.name for run in runs] == ["0", "1", "2"]
    for run, optim in zip(runs, ("sgd", "rmsprop", "adamo")):
        folder = run / "tensorboard" / f"optim={optim}"
        assert {events.parent for events in (run / "tensorboard").rglob("events.out.tfevents.*")} == {folder}
        accumulator = EventAccumulator(str(folder))
        accumulator.Reload()
        by_epoch = accumulator.Scalars("lipschitz_by_epoch/lr")
        assert [e.step for e in by_epoch] == [0, 1, 2]
        assert [e.value for e in by_epoch] == pytest.approx([e.value for e in accumulator.Scalars("lipschitz/lr")])
    panels = check_figure([sweep_dir])
    assert set(panels["lipschitz/lr"]) == {"optim=sgd", "optim=rmsprop", "optim=adamo"}
    assert set(panels["lipschitz/K1"]) == {"optim=adamo"} and set(panels["lipschitz/K2"]) == {"optim=rmsprop"}

    # Resuming a job (a single run now) goes on writing into the job's TensorBoard run.
    job = runs[0]
    own = [o for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) if "max_epochs" not in o]
    result = run_cli([*own, "trainer.max_epochs=4", f"resume={job}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = job / "tensorboard" / "optim=sgd"
    assert {events.parent for events in (job / "tensorboard").rglob("events.out.tfevents.*")} == {folder}
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("lipschitz_by_epoch/lr")] == [0, 1, 2, 3]


def test_a_single_run_keeps_its_events_in_tensorboard(tmp_path: Path):
    """Outside a multirun the TensorBoard run stays <run dir>/tensorboard/ (no subfolder)."""
    train(tiny_cfg(tmp_path, "model=mlp", "optim=adamo", kind="tabular", epochs=2, logger=True))
    folder = tmp_path / "run" / "tensorboard"
    assert {events.parent for events in folder.rglob("events.out.tfevents.*")} == {folder}  # fit's and test's
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("lipschitz_by_epoch/K1")] == [0, 1]
