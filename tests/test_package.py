"""The package installs anywhere: a wheel built from the repository, in a new venv outside it.

Without extras it holds the callback and needs only torch and Lightning; with ``[app]`` the
``lipschitz-train`` entry point runs the quickstart from any folder, reading the configs shipped
in the wheel. The wheel is built and installed for real (slow: torch is unpacked from pip's cache).
"""

from __future__ import annotations

import csv
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from lipschitz_lightning.configs import config_dir
from tests.bare_install import APP_COMMANDS
from tests.conftest import CONF_DIR, CORE_ONLY_ABSENT, ROOT, FreshVenv

# Under pytest-xdist (make test), one worker runs this module: the session's fresh venv (built in the repository's build/) is made once, on one worker.
pytestmark = pytest.mark.xdist_group("fresh_venv")



def test_clone_reads_its_own_conf_folder():
    """From a clone (editable install or PYTHONPATH) the entry point reads ./conf, the configs' source."""
    assert Path(config_dir()) == CONF_DIR
    assert not (ROOT / "lipschitz_lightning" / "conf").exists()  # no second copy to drift in the tree


def test_core_dependencies_are_torch_and_lightning():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}
    assert names == {"torch", "pytorch-lightning"}
    extras = project["optional-dependencies"]
    assert {"app", "competitors", "bench", "test"} <= set(extras)
    for extra, wanted in (("app", "hydra-core"), ("competitors", "prodigyopt"), ("bench", "matplotlib")):
        assert any(dep.startswith(wanted) for dep in extras[extra]), (extra, wanted)
    # The Makefile installs the package with every extra.
    assert re.search(r'pip install[^\n]*-e "\.\[app,competitors,sweeps,bench,test\]"', (ROOT / "Makefile").read_text())


@pytest.mark.slow
def test_wheel_holds_the_configs(fresh_venv: FreshVenv):
    with zipfile.ZipFile(fresh_venv.wheel) as wheel:
        packaged = {name for name in wheel.namelist() if name.startswith("lipschitz_lightning/conf/")}
    source = {f"lipschitz_lightning/conf/{p.relative_to(CONF_DIR).as_posix()}" for p in CONF_DIR.rglob("*.yaml")}
    assert source and packaged == source


@pytest.mark.slow
def test_callback_only_install_has_no_application_dependencies(fresh_venv: FreshVenv):
    """`pip install lipschitz-lightning` (no extras) installs no Hydra, scikit-learn, torchvision,
    TensorBoard, competitor or plotting package, and the callback trains a model without
    importing any of them, with a given first-epoch rate and on the default path, the probe of
    a module without forward (tests/callback_only_script.py, run before any extra was installed)."""
    core = fresh_venv.core_packages
    assert {"torch", "pytorch-lightning", "lipschitz-lightning"} <= core
    assert not core & set(CORE_ONLY_ABSENT), core & set(CORE_ONLY_ABSENT)
    result = fresh_venv.core_run  # the script ran right after the core install, before any extra
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(fresh_venv.dir) in result.stdout.split("package:")[1].splitlines()[0]  # the wheel, not the clone
    assert float(result.stdout.split("\nrate:")[1].splitlines()[0]) > 0
    assert float(result.stdout.split("probe rate:")[1].splitlines()[0]) > 0
    imported = set(eval(result.stdout.split("imported:")[1].splitlines()[0]))
    application = {"hydra", "omegaconf", "sklearn", "torchvision", "tensorboard", "prodigyopt", "dadaptation", "dog",
                   "schedulefree", "prodigyplus", "matplotlib"}
    assert not imported & application, imported & application


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(APP_COMMANDS))
def test_bare_install_says_in_one_line_which_extra_to_add(fresh_venv: FreshVenv, command: str):
    """Without the [app] extra (matplotlib's [bench] for the plot) each application command is one
    `error:` line naming the extra to install and exit status 2, not a ModuleNotFoundError."""
    result = fresh_venv.bare.commands[command]
    extra = "bench" if command == "plot" else "app"
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert f'pip install "lipschitz-lightning[{extra}]"' in lines[0]


@pytest.mark.slow
def test_wheel_with_app_extra_runs_the_quickstart_outside_the_repository(fresh_venv: FreshVenv, tmp_path: Path):
    fresh_venv.pip(f"{fresh_venv.wheel}[app]")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    result = fresh_venv.run(
        ["lipschitz-train", "experiment=quickstart", "trainer.max_epochs=2", "trainer.enable_progress_bar=false"],
        cwd=workdir, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = float(re.search(r"test accuracy: ([\d.]+)", result.stdout + result.stderr).group(1))
    assert accuracy > 0.5  # digits, 10 classes: two epochs learn far above chance
    (run_dir,) = (workdir / "logs" / "quickstart" / "runs").iterdir()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    # The configs came from the installed package.
    hydra_yaml = (run_dir / ".hydra" / "hydra.yaml").read_text()
    assert f"{fresh_venv.dir}" in hydra_yaml and str(ROOT / "conf") not in hydra_yaml


@pytest.mark.slow
def test_wheel_runs_the_classical_experiments_and_the_report_outside_the_repository(fresh_venv: FreshVenv, tmp_path: Path):
    """From the installed wheel (with the [app] and [bench] extras), in a folder outside the clone:
    the classical experiments and the report read the configs shipped in the package, and the
    report of the committed results is the committed docs/benchmarks.md."""
    fresh_venv.pip(f"{fresh_venv.wheel}[app,bench]")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    tables = workdir / "tables"
    result = fresh_venv.run(
        [fresh_venv.python, "-m", "lipschitz_lightning.classical", "dataset=breast_cancer", "max_epochs=50",
         "curve_epochs=5", "dataset.accuracy_epochs=5", "progress_seconds=null", f"results_dir={tables}"],
        cwd=workdir, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "alpha = 0.1: not reached in 50 epochs" in result.stdout and "breast_cancer: test accuracy after 5 epochs" in result.stdout
    with open(tables / "classical_table1.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert row["dataset"] == "breast_cancer" and row["max_epochs"] == "50" and row["paper_epochs_alpha"] == "37008"
    (run_dir,) = (workdir / "logs" / "classical" / "runs").iterdir()
    hydra_yaml = (run_dir / ".hydra" / "hydra.yaml").read_text()
    assert f"{fresh_venv.dir}" in hydra_yaml and str(ROOT / "conf") not in hydra_yaml  # the packaged configs

    # The report of a copy of the committed results, written below the current folder by default.
    committed = tmp_path / "committed_results"
    shutil.copytree(ROOT / "benchmarks" / "results", committed)
    report = fresh_venv.run([fresh_venv.python, "-m", "lipschitz_lightning.bench.report", f"results_dir={committed}"],
                            cwd=workdir, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (workdir / "docs" / "benchmarks.md").read_text() == (ROOT / "docs" / "benchmarks.md").read_text()
    assert sorted(p.name for p in (workdir / "docs" / "img").iterdir()) == sorted(p.name for p in (ROOT / "docs" / "img").glob("*.png"))
