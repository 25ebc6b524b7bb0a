"""Sweeps through Hydra's own launchers and sweepers, on tiny synthetic data.

The SLURM launcher is composed and instantiated (no cluster here); submitit's local executor and
joblib really start their job processes; the Optuna sweep and the paper's x-selection sweep run
to the end and name a winner. Every sweep writes into ``tmp_path`` (hydra.sweep.dir).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List

import hydra
import pytest
import yaml

from lipschitz_lightning.sweeps import RESULT_FILE, WINNER_FILE, SweepSummary, read_results
from tests.conftest import compose_train, path_overrides, run_cli

# A tiny adaptive-momentum run: 1 epoch of 4 batches on generated 10-feature data.
TINY = [
    "dataset=synthetic", "dataset.input_shape=[10]", "dataset.num_classes=3", "dataset.num_train=32",
    "dataset.num_test=32", "dataset.noise_std=2.0", "dataset.batch_size=8", "model=mlp", "optim=adamo",
    "trainer=cpu", "trainer.enable_progress_bar=false", "~logger", "+trainer.num_sanity_val_steps=0",
    "+trainer.enable_model_summary=false", "epochs=1",
]


def job_lines(output: str) -> Dict[int, float]:
    """``job <n>: val/acc_best=<v>`` lines of the sweep summary."""
    return {int(n): float(v) for n, v in re.findall(r"job (\d+): val/acc_best=([\d.e+-]+)", output)}


def sweep(tmp_path: Path, *overrides: str, multirun: bool = True):
    args = (["--multirun"] if multirun else []) + [*TINY, *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}",
                                                   f"paths.root_dir={tmp_path}"]
    result = run_cli(args, cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, tmp_path / "sweep"


def test_slurm_launcher_config_composes(tmp_path: Path):
    """hydra/launcher=slurm is Hydra's submitit_slurm with the fields a cluster needs."""
    cfg = compose_train(path_overrides(tmp_path) + [
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2",
        "hydra.launcher.timeout_min=120", "hydra.launcher.account=lab",
    ], hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min, launcher.account) == ("gpu", 2, 120, "lab")
    assert launcher.nodes == 1 and launcher.tasks_per_node == 1  # one GPU process per job: no DDP in a multirun
    built = hydra.utils.instantiate(launcher)
    assert type(built).__name__ == "SlurmLauncher" and built.params["partition"] == "gpu"
    # Our defaults over submitit's: one GPU, 8 CPUs, a day.
    unfilled = compose_train(path_overrides(tmp_path) + ["hydra/launcher=slurm"], hydra_config=True).hydra.launcher
    assert (unfilled.gpus_per_node, unfilled.cpus_per_task, unfilled.timeout_min, unfilled.partition) == (1, 8, 1440, None)


def test_sweep_configs_compose(tmp_path: Path):
    first_x = compose_train(path_overrides(tmp_path) + ["hparams_search=first_epoch_x"], hydra_config=True)
    assert first_x.epochs == 5 and first_x.trainer.max_epochs == 5
    assert first_x.hydra.sweeper.params == {"lr.first_epoch": "0.1,0.5,1.0"}
    assert first_x.optimized_metric == "val/acc_best"
    optuna = compose_train(path_overrides(tmp_path) + ["hparams_search=optuna"], hydra_config=True)
    assert optuna.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert set(optuna.hydra.sweeper.params) == {"lr.first_epoch", "weight_decay"}
    assert optuna.hydra.sweeper.direction == "maximize" and optuna.optimized_metric == "val/acc_best"
    for cfg in (first_x, optuna):
        assert isinstance(hydra.utils.instantiate(cfg.hydra.callbacks.sweep_summary), SweepSummary)


def test_sweep_summary_rejects_a_bad_mode():
    with pytest.raises(ValueError, match="mode must be"):
        SweepSummary(mode="best")


@pytest.mark.slow
def test_first_epoch_x_sweep_prints_the_winner(tmp_path: Path):
    """The paper's selection: x = 0.1, 0.5, 1.0, each trained, the best val/acc_best named."""
    result, sweep_dir = sweep(tmp_path, "hparams_search=first_epoch_x", "epochs=2", multirun=False)
    output = result.stdout + result.stderr
    results = read_results(sweep_dir)
    assert [r["overrides"][0] for r in results] == ["lr.first_epoch=0.1", "lr.first_epoch=0.5", "lr.first_epoch=1.0"]
    values = job_lines(output)
    assert sorted(values) == [0, 1, 2]  # every job returned val/acc_best: the metric exists
    assert values == {r["job"]: pytest.approx(r["value"], rel=1e-5) for r in results}
    best = max(values.values())
    winner_job = min(job for job, value in values.items() if value == pytest.approx(best, rel=1e-5))
    winner = yaml.safe_load((sweep_dir / WINNER_FILE).read_text())
    assert winner["job"] == winner_job and winner["swept"] == f"lr.first_epoch={(0.1, 0.5, 1.0)[winner_job]}"
    assert re.search(rf"winner: job {winner_job} lr\.first_epoch=", output)
    for job in range(3):  # each job really trained its epochs
        assert (sweep_dir / str(job) / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_optuna_sweep_over_first_epoch_rate_and_weight_decay(tmp_path: Path):
    result, sweep_dir = sweep(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=3",
                              "hydra.sweeper.sampler.n_startup_trials=2", multirun=False)
    results = read_results(sweep_dir)
    assert len(results) == 3 and all(r["value"] is not None for r in results)
    optuna_best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert set(optuna_best["best_params"]) == {"lr.first_epoch", "weight_decay"}
    assert 0.01 <= optuna_best["best_params"]["lr.first_epoch"] <= 2.0
    assert 1e-5 <= optuna_best["best_params"]["weight_decay"] <= 1e-2
    assert optuna_best["best_value"] == pytest.approx(max(r["value"] for r in results))
    winner = yaml.safe_load((sweep_dir / WINNER_FILE).read_text())
    assert winner["value"] == pytest.approx(optuna_best["best_value"])
    # Each trial trained with its sampled values: they reach the job's composed config.
    for r in results:
        sampled = dict(o.split("=", 1) for o in r["overrides"][:2])
        job_cfg = yaml.safe_load((sweep_dir / str(r["job"]) / ".hydra" / "config.yaml").read_text())
        assert job_cfg["lr"]["first_epoch"] == pytest.approx(float(sampled["lr.first_epoch"]))
        assert job_cfg["weight_decay"] == pytest.approx(float(sampled["weight_decay"]))


def launched_jobs(sweep_dir: Path) -> List[dict]:
    configs = [yaml.safe_load(p.read_text()) for p in sorted(sweep_dir.glob("*/.hydra/config.yaml"))]
    assert all((p.parent.parent / "checkpoints" / "last.ckpt").is_file() for p in sweep_dir.glob("*/.hydra/config.yaml"))
    return configs


@pytest.mark.slow
def test_submitit_local_launcher_runs_real_job_processes(tmp_path: Path):
    result, sweep_dir = sweep(tmp_path, "hydra/launcher=submitit_local", "lr.first_epoch=0.1,1.0")
    assert [c["lr"]["first_epoch"] for c in launched_jobs(sweep_dir)] == [0.1, 1.0]
    # submitit's own job folders: one per job, each with the pickled result and the job's log.
    job_dirs = [d for d in (sweep_dir / ".submitit").iterdir() if d.name.isdigit()]
    assert len(job_dirs) == 2
    for job_dir in job_dirs:
        assert (job_dir / f"{job_dir.name}_0_result.pkl").is_file()
        assert "test accuracy" in (job_dir / f"{job_dir.name}_0_log.err").read_text() + \
            (job_dir / f"{job_dir.name}_0_log.out").read_text()


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path: Path):
    result, sweep_dir = sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "lr.first_epoch=0.1,1.0",
                              "optimized_metric=val/acc_best",
                              "+hydra.callbacks.sweep_summary._target_=lipschitz_lightning.sweeps.SweepSummary")
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    assert [c["lr"]["first_epoch"] for c in launched_jobs(sweep_dir)] == [0.1, 1.0]
    # The summary reads what each job wrote from its own worker process.
    results = read_results(sweep_dir)
    assert [r["job"] for r in results] == [0, 1] and all(r["value"] is not None for r in results)
    assert json.loads((sweep_dir / "0" / RESULT_FILE).read_text())["status"] == "COMPLETED"
