"""Every bad input of issue 8's table (and a few more) through the real command line: one line on
stderr, a non-zero exit status, no traceback, and nothing written (no checkpoint, no event file).
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import List

import pytest
import torchvision

from lipschitz_lightning.train import new_run_dir
from tests._dataset_files import write_cifar10_binary, write_mnist_raw
from tests.conftest import run_cli, tiny_data

TINY = ["model=mlp", "model.hidden_sizes=[8]", "trainer=cpu", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false"] + tiny_data("tabular")


def last_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert lines, result.stdout[-2000:]
    return lines[-1]


def assert_failed_cleanly(result, run_dir: Path, starts: str, status: int = 2) -> str:
    line = last_line(result)
    assert result.returncode == status, result.stderr[-3000:]
    assert line.startswith(starts), line
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir()), "a checkpoint was written"
    assert not list(run_dir.rglob("events.out.tfevents.*")), "an event file was written"
    return line


def cli(tmp_path: Path, *args: str, run: str = "run"):
    return run_cli([*args, f"hydra.run.dir={tmp_path / run}"], cwd=tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (mlp, adaptive SGD) whose checkpoint the resume errors reuse."""
    root = tmp_path_factory.mktemp("trained")
    result = run_cli([*TINY, "optim=sgd", "test=false", f"hydra.run.dir={root / 'run'}"], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run" / "checkpoints" / "last.ckpt"


BAD_VALUES = [
    pytest.param(["dataset.batch_size=-1"], "error: dataset.batch_size must be a positive integer; got -1", id="negative-batch"),
    pytest.param(["trainer.max_epochs="], "error: trainer.max_epochs must be a positive integer; got ''", id="empty-epochs"),
    pytest.param(["weight_decay=abc"], "error: weight_decay must be a non-negative number; got 'abc'", id="weight-decay-abc"),
    pytest.param(["weight_decay=-0.1"], "error: weight_decay must be a non-negative number; got -0.1", id="negative-wd"),
    pytest.param(["lr.first_epoch=0"], "error: lr.first_epoch must be a positive number or null; got 0", id="zero-first-lr"),
    pytest.param(["seed=abc"], "error: seed must be an integer from 0 to 4294967295 or null; got 'abc'", id="seed-abc"),
    pytest.param(["ckpt_path=/nonexistent.ckpt"], "error: ckpt_path: no such file: /nonexistent.ckpt", id="missing-ckpt"),
    pytest.param(["resume=/nonexistent/run"], "error: resume: no last.ckpt or on_exception.ckpt in /nonexistent/run/checkpoints",
                 id="resume-nothing"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "line"), BAD_VALUES)
def test_bad_value_is_one_line(overrides: List[str], line: str, tmp_path: Path):
    result = cli(tmp_path, *TINY, *overrides)
    assert assert_failed_cleanly(result, tmp_path / "run", line) == line


@pytest.mark.slow
def test_text_file_as_checkpoint(tmp_path: Path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    result = cli(tmp_path, *TINY, f"ckpt_path={text}")
    assert_failed_cleanly(result, tmp_path / "run", f"error: ckpt_path: {text} is not a checkpoint")


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "says"), [
    (["model.hidden_sizes=[16]"], "holds another model than this run's"),
    (["optim=adamo"], "was trained with LipschitzLR rule ['sgd'], this run uses adamo"),
    (["optim=sgd_fixed"], "was trained with LipschitzLR rule ['sgd'], this run uses no LipschitzLR"),
    (["optim=rmsprop_fixed"], "was trained with LipschitzLR rule ['sgd'], this run uses no LipschitzLR"),
    (["seed=4"], "was trained with seed=12345, this run has seed=4"),
], ids=["other-model", "other-rule", "no-rule", "other-optimizer", "other-seed"])
def test_checkpoint_of_another_run(overrides: List[str], says: str, trained: Path, tmp_path: Path):
    result = cli(tmp_path, *TINY, "trainer.max_epochs=2", f"ckpt_path={trained}", *overrides)
    line = assert_failed_cleanly(result, tmp_path / "run", f"error: ckpt_path: {trained}")
    assert says in line, line


@pytest.mark.slow
def test_unwritable_log_folder(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli([*TINY, f"paths.log_dir={blocker}/logs"], cwd=tmp_path)
    assert result.returncode == 2
    assert last_line(result).startswith(f"error: cannot create the run folder {blocker}/logs/train/runs/")
    assert "set paths.log_dir to a writable folder" in last_line(result)
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_corrupt_mnist_gz_says_corrupt(tmp_path: Path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, _ in torchvision.datasets.MNIST.resources:
        (raw / name).write_bytes(b"\x1f\x8b truncated")
    result = cli(tmp_path, "dataset=mnist", "model=mlp", f"paths.data_dir={tmp_path / 'data'}", "trainer=cpu")
    assert_failed_cleanly(result, tmp_path / "run", f"error: corrupt file: {raw / 'train-images-idx3-ubyte.gz'} (md5 ")


@pytest.mark.slow
def test_truncated_cifar_archive_cleans_up(tmp_path: Path):
    source, data = tmp_path / "source", tmp_path / "data"
    write_cifar10_binary(source, per_file=50)
    data.mkdir()
    archive = data / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    args = ["dataset=cifar10", "model=mlp", f"paths.data_dir={data}", "trainer=cpu"]
    result = cli(tmp_path, *args)
    assert_failed_cleanly(result, tmp_path / "run", f"error: corrupt file: {archive} (cannot extract")
    assert not (data / "cifar-10-batches-bin").exists()
    again = cli(tmp_path, *args, run="run2")  # the next run says the same, not "no local copy"
    assert_failed_cleanly(again, tmp_path / "run2", f"error: corrupt file: {archive} (cannot extract")


@pytest.mark.slow
def test_corrupt_cifar_bin_writes_no_checkpoint(tmp_path: Path):
    write_cifar10_binary(tmp_path / "data", per_file=4)  # generated: every md5 differs from the official one
    result = cli(tmp_path, "dataset=cifar10", "model=mlp", f"paths.data_dir={tmp_path / 'data'}", "trainer=cpu",
                 "dataset.num_workers=0")
    assert_failed_cleanly(result, tmp_path / "run", "error: corrupt file: ")
    assert "data_batch_1.bin (md5 " in last_line(result)


@pytest.mark.slow
def test_non_finite_loss_stops_at_once(tmp_path: Path):
    """Table row 4's symptom with a fixed rate far too large: stop in epoch 1, exit 2, no checkpoint of it."""
    result = cli(tmp_path, *TINY, "optim=sgd_fixed", "optim.optimizer.lr=1e12", "trainer.max_epochs=30",
                 "dataset.noise_std=100")
    line = last_line(result)
    assert result.returncode == 2, result.stderr[-3000:]
    assert line.startswith("error: the training loss became NaN or infinite in epoch 1 (step "), line
    assert "try a smaller rate" in line
    assert not (tmp_path / "run" / "checkpoints" / "on_exception.ckpt").exists()


@pytest.mark.slow
def test_mnist_on_resnet20_says_it_adapts(tmp_path: Path):
    write_mnist_raw(tmp_path / "data", num_train=8, num_test=4)
    result = cli(tmp_path, "dataset=mnist", "model=resnet20", f"paths.data_dir={tmp_path / 'data'}", "trainer=cpu",
                 "dataset.num_workers=0", "train=false", "test=false", "~logger")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resnet20: built for mnist's 1-channel 28x28 images and 10 output(s)" in result.stdout + result.stderr


@pytest.mark.slow
def test_multirun_goes_on_past_a_failing_job(tmp_path: Path):
    sweep = tmp_path / "sweep"
    result = run_cli(["--multirun", *TINY, "dataset.batch_size=-1,8", "~logger", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file(), "job 1 must run after job 0 failed"
    lines = result.stderr.strip().splitlines()
    assert lines[-2:] == [
        "1 job(s) of the multirun failed:",
        "  job 0 (dataset.batch_size=-1): error: dataset.batch_size must be a positive integer; got -1",
    ]
    assert "Traceback" not in result.stderr


def test_run_folders_never_collide(tmp_path: Path):
    """Runs started in the same second get their own folders (created when named)."""
    folders = {new_run_dir(str(tmp_path)) for _ in range(20)}
    assert len(folders) == 20 and all(Path(f).is_dir() for f in folders)


@pytest.mark.slow
@pytest.mark.parametrize(("args", "starts"), [
    ([*TINY, "trainer.max_epochs=0"], "error: trainer.max_epochs must be a positive integer; got 0"),
    ([*TINY, "dataset.batch_size=0"], "error: dataset.batch_size must be a positive integer; got 0"),
    (["dataset=mnist", "model=mlp", "trainer=cpu", "dataset.num_workers=0"], "error: "),
], ids=["zero-epochs", "zero-batch", "missing-data"])
def test_refused_run_leaves_no_run_folder(args: List[str], starts: str, tmp_path: Path):
    """A new run refused before it trains removes the folder it named: no .hydra/, no log file."""
    logs, data = tmp_path / "logs", tmp_path / "empty-data"
    data.mkdir()
    result = run_cli([*args, f"paths.log_dir={logs}", f"paths.data_dir={data}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert last_line(result).startswith(starts), last_line(result)
    assert "Traceback" not in result.stderr
    assert not logs.exists() or not list(logs.rglob("*")), sorted(map(str, logs.rglob("*")))
