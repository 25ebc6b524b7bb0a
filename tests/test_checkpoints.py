"""Checkpoints and run folders through the real command line: a checkpoint that would run code is
refused unread, a save that fails or is killed leaves the previous checkpoint whole, ``resume=``
picks by training progress and falls back to an intact checkpoint, a run folder belongs to one
run, a moved folder keeps its best-epoch tracking, and a refused resume changes nothing.

Faults at a save come from ``tests/_save_faults.py``: the run's own checkpoint plugin with a real
write failure (the kernel's file-size limit) or a SIGKILL at a chosen save or removal.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import ROOT, run_cli

EPOCHS = 3
STEPS = 4  # 32 training samples, batch 8
TAGS = ("train/loss", "val/loss", "lipschitz/lr")


def args(run_dir: Path, *extra: str, epochs: int = EPOCHS, optim: str = "sgd") -> List[str]:
    """A tiny tabular run: 4 steps per epoch, validation on 16 samples, TensorBoard on; ``extra``
    replaces a base override of the same key."""
    keys = {e.split("=", 1)[0] for e in extra}
    return [a for a in [
        "dataset=synthetic", "dataset.input_shape=[10]", "dataset.num_classes=3", "dataset.num_train=32",
        "dataset.num_test=16", "dataset.batch_size=8", "dataset.num_workers=0", "model=mlp", "model.hidden_sizes=[16]",
        f"optim={optim}", "trainer=cpu", f"trainer.max_epochs={epochs}", "trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false", "+trainer.num_sanity_val_steps=0", "seed=3", f"hydra.run.dir={run_dir}",
    ] if a.split("=", 1)[0] not in keys] + list(extra)


def resume_args(run_dir: Path, *extra: str, epochs: int = EPOCHS, optim: str = "sgd") -> List[str]:
    return [a for a in args(run_dir, *extra, f"resume={run_dir}", epochs=epochs, optim=optim)
            if not a.startswith("hydra.run.dir")]


def fault(name: str, nth: int, how: str) -> str:
    return f"trainer.plugins=[{{_target_:tests._save_faults.FaultAtSave,name:{name},nth:{nth},fault:{how}}}]"


def error_line(result: subprocess.CompletedProcess) -> str:
    """The run's last stderr line, checked to be its only ``error:`` line and no traceback."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], result.stderr[-3000:]
    return lines[-1]


def files(folder: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def epoch_points(run_dir: Path) -> Dict[str, List[float]]:
    """Each tag's epoch-level points in the run's TensorBoard run (steps in order)."""
    folders = sorted({f.parent for f in run_dir.rglob("events.out.tfevents.*")})
    assert len(folders) == 1, folders
    accumulator = EventAccumulator(str(folders[0]))
    accumulator.Reload()
    return {tag: [e.step for e in sorted(accumulator.Scalars(tag), key=lambda e: e.step)]
            for tag in TAGS if tag in accumulator.Tags()["scalars"]}


def best_state(checkpoint_path: Path) -> dict:
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if "'monitor': 'val/loss'" in k]
    return state


def assert_one_best(run_dir: Path) -> None:
    """One best checkpoint (save_top_k=1): the one last.ckpt records, of the lowest val/loss logged."""
    checkpoints = run_dir / "checkpoints"
    best = sorted(p for p in checkpoints.iterdir() if p.name.startswith("epoch_"))
    assert len(best) == 1, best
    state = best_state(checkpoints / "last.ckpt")
    assert state["best_model_path"] == str(best[0]), (state["best_model_path"], best)
    accumulator = EventAccumulator(str(next(run_dir.rglob("events.out.tfevents.*")).parent))
    accumulator.Reload()
    losses = [e.value for e in accumulator.Scalars("val/loss")]
    assert float(state["best_model_score"]) == pytest.approx(min(losses))
    epoch = int(best[0].stem.split("_")[1])
    assert losses[epoch] == pytest.approx(min(losses))


# --------------------------------------------------------------------------- code in a checkpoint


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ckpt_path", "resume"])
def test_checkpoint_that_runs_code_is_refused_unread(how: str, tmp_path: Path):
    """A pickle whose unpickling runs a shell command: refused in one line, the command never runs."""
    marker = tmp_path / "the_command_ran"
    folder = tmp_path / "other" / "checkpoints"
    folder.mkdir(parents=True)
    (tmp_path / "other" / ".hydra").mkdir()
    evil = folder / "last.ckpt"
    torch.save({"state_dict": {}, "loops": {}, "payload": _RunsCode(marker)}, evil)
    target = [f"ckpt_path={evil}"] if how == "ckpt_path" else [f"resume={tmp_path / 'other'}"]
    result = run_cli([a for a in args(tmp_path / "run") if not a.startswith("hydra.run.dir")] + target, cwd=tmp_path)
    assert not marker.exists(), "the checkpoint's code ran"
    assert result.returncode == 2, result.stderr[-3000:]
    line = error_line(result)
    assert "last.ckpt" in line and ("Python objects" in line), line


# --------------------------------------------------------------------------- a save that fails or is killed


@pytest.mark.slow
def test_failed_save_says_so_and_leaves_the_previous_checkpoint(tmp_path: Path):
    """The second last.ckpt save fails partway (a real write error): one line naming the intact
    checkpoint, exit 2; last.ckpt still holds epoch 1; no temp file, no on_exception.ckpt."""
    run_dir = tmp_path / "run"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    os.environ["TMPDIR"] = str(tmpdir)
    try:
        result = run_cli(args(run_dir, fault("last.ckpt", 2, "fail_mid_write"), "~logger"), cwd=tmp_path)
    finally:
        del os.environ["TMPDIR"]
    assert result.returncode == 2, result.stderr[-3000:]
    line = error_line(result)
    assert line.startswith(f"error: could not save the checkpoint {run_dir / 'checkpoints' / 'last.ckpt'} (File too large)"), line
    assert line.endswith("; the previous last.ckpt is intact (after epoch 1, step 4)"), line
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_001.ckpt", "last.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == STEPS
    assert not [p for p in tmpdir.rglob("*") if p.is_file() and "torchinductor" not in str(p)]  # no temp copy


@pytest.mark.slow
@pytest.mark.parametrize(("name", "nth", "how"), [
    ("last.ckpt", 2, "kill_mid_write"),  # epoch 2's last.ckpt half-written when the process dies
    ("last.ckpt", 2, "kill_before_write"),  # after epoch 2's best was saved and epoch 1's removed
    ("epoch_000.ckpt", 1, "kill_before_remove"),  # epoch 2's best saved, epoch 1's not yet removed
], ids=["while-writing-last", "after-removing-old-best", "before-removing-old-best"])
def test_kill_during_an_epochs_save_then_resume(name: str, nth: int, how: str, tmp_path: Path):
    """SIGKILL at a moment of epoch 2's saves: last.ckpt is whole (epoch 1), resume= finishes the
    run; one best checkpoint (save_top_k=1), the one recorded, and each epoch's TensorBoard points once."""
    run_dir = tmp_path / "run"
    killed = run_cli(args(run_dir, fault(name, nth, how)), cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = run_dir / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == STEPS

    resumed = run_cli(resume_args(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stdout + resumed.stderr
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == EPOCHS * STEPS
    assert_one_best(run_dir)
    points = epoch_points(run_dir)
    assert set(points) == set(TAGS)
    for tag, steps in points.items():
        assert len(steps) == EPOCHS and len(set(steps)) == EPOCHS, (tag, steps)


# --------------------------------------------------------------------------- resume= on a stopped run


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A curvature run stopped by SIGTERM in the middle of epoch 2 (step 6): on_exception.ckpt,
    last.ckpt (epoch 1), epoch_000.ckpt."""
    root = tmp_path_factory.mktemp("stopped")
    run_dir = root / "run"
    result = run_cli(args(run_dir, "+callbacks.signal._target_=tests._signal_at_step.SignalAtStep",
                          "+callbacks.signal.step=6", optim="curvature"), cwd=root)
    assert result.returncode == 143, result.stderr[-3000:]
    assert (run_dir / "checkpoints" / "on_exception.ckpt").is_file()
    return run_dir


def copy_of(stopped: Path, tmp_path: Path, name: str = "run") -> Path:
    run_dir = tmp_path / name
    shutil.copytree(stopped, run_dir)
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("change", [
    pytest.param(["dataset.batch_size=16"], id="larger-batch"),
    pytest.param(["dataset.batch_size=4"], id="smaller-batch"),
    pytest.param(["trainer=ddp_sim"], id="two-processes"),
    pytest.param(["optim=curvature_momentum"], id="momentum"),
    pytest.param(["+optim.callback.guard_shrink=0.5"], id="rule-setting"),
    pytest.param(["epochs=1"], id="fewer-epochs"),
])
def test_refused_resume_changes_nothing(change: List[str], stopped: Path, tmp_path: Path):
    """A resume whose settings differ from the checkpoint's is refused in one line before anything
    is written: the checkpoints and .hydra/ stay byte for byte as they were."""
    run_dir = copy_of(stopped, tmp_path)
    before = {folder: files(run_dir / folder) for folder in ("checkpoints", ".hydra")}
    extra = [c for c in change if not c.startswith(("optim=", "epochs="))]
    optim = next((c.split("=", 1)[1] for c in change if c.startswith("optim=")), "curvature")
    epochs = int(next((c.split("=", 1)[1] for c in change if c.startswith("epochs=")), EPOCHS))
    result = run_cli(resume_args(run_dir, *extra, optim=optim, epochs=epochs), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    line = error_line(result)
    assert line.startswith("error: ckpt_path: ") and "on_exception.ckpt" in line, line
    expected = {"larger-batch": "dataset.batch_size=8", "smaller-batch": "dataset.batch_size=8",
                "two-processes": "trained by 1 process", "momentum": "momentum=0.0",
                "rule-setting": "guard_shrink", "fewer-epochs": "resume with epochs=2 or more"}
    assert any(text in line for text in expected.values()), line
    after = {folder: files(run_dir / folder) for folder in ("checkpoints", ".hydra")}
    assert after == before


@pytest.mark.slow
def test_resume_picks_by_progress_and_retires_on_exception(stopped: Path, tmp_path: Path):
    """resume= continues from on_exception.ckpt (the most progress), which is deleted once the run
    has saved past it; a stale copy put back with the newest mtime does not rewind the run."""
    run_dir = copy_of(stopped, tmp_path)
    stale = (run_dir / "checkpoints" / "on_exception.ckpt").read_bytes()
    first = run_cli(resume_args(run_dir, optim="curvature"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "continuing from on_exception.ckpt (in epoch 2, step 6)" in first.stdout + first.stderr
    assert not (run_dir / "checkpoints" / "on_exception.ckpt").exists()

    (run_dir / "checkpoints" / "on_exception.ckpt").write_bytes(stale)  # newest file by mtime, as after cp -r
    again = run_cli(resume_args(run_dir, optim="curvature", epochs=EPOCHS + 1), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"continuing from last.ckpt (after epoch {EPOCHS}, step {EPOCHS * STEPS})" in again.stdout + again.stderr
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == (EPOCHS + 1) * STEPS
    assert not (run_dir / "checkpoints" / "on_exception.ckpt").exists()
    assert all(len(steps) == EPOCHS + 1 for steps in epoch_points(run_dir).values())


@pytest.mark.slow
def test_resume_falls_back_to_the_newest_intact_checkpoint(stopped: Path, tmp_path: Path):
    """last.ckpt truncated to 0 bytes (no on_exception.ckpt): resume= says so and continues from
    epoch_000.ckpt."""
    run_dir = copy_of(stopped, tmp_path)
    (run_dir / "checkpoints" / "on_exception.ckpt").unlink()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    result = run_cli(resume_args(run_dir, optim="curvature"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("resume: last.ckpt is 0 bytes; continuing from epoch_000.ckpt (after epoch 1, step 4), "
            "the newest intact checkpoint") in result.stdout + result.stderr
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == EPOCHS * STEPS


@pytest.mark.slow
def test_moved_run_folder_keeps_best_epoch_tracking(stopped: Path, tmp_path: Path):
    """The folder moved to another path, then resume=: the recorded best checkpoint is found in the
    new folder, so one best checkpoint remains and it is the best epoch's by val/loss."""
    run_dir = copy_of(stopped, tmp_path, "moved")
    result = run_cli(resume_args(run_dir, optim="curvature"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dirpath has changed" not in result.stdout + result.stderr
    assert best_state(run_dir / "checkpoints" / "last.ckpt")["dirpath"] == str(run_dir / "checkpoints")
    assert_one_best(run_dir)


# --------------------------------------------------------------------------- one run per folder


def start(command: List[str], cwd: Path) -> subprocess.Popen:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0", PYTHONPATH=path)
    return subprocess.Popen([sys.executable, "-m", "lipschitz_lightning.train", *command], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_run_folder_belongs_to_one_run(tmp_path: Path):
    """While a run trains in an explicit hydra.run.dir, a second run there and a resume= of it are
    refused in one line, and write nothing (its .hydra/ stays the first run's); once it has ended,
    even killed, the folder is resumed."""
    run_dir, flag = tmp_path / "run", tmp_path / "flag"
    first = start(args(run_dir, "+callbacks.wait._target_=tests._save_faults.WaitForFile",
                       f"+callbacks.wait.flag={flag}", epochs=1), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not Path(f"{flag}.started").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.stderr else ""
            time.sleep(0.5)
        hydra_before = files(run_dir / ".hydra")
        second = run_cli(args(run_dir, "seed=4", epochs=1), cwd=tmp_path)
        assert second.returncode == 2
        line = error_line(second)
        assert line == (f"error: {run_dir} is in use by another run (pid {first.pid} on host {socket.gethostname()}): "
                        "wait until it ends, or start this run in another folder"), line
        third = run_cli(resume_args(run_dir, epochs=2), cwd=tmp_path)
        assert third.returncode == 2 and error_line(third) == line
        assert files(run_dir / ".hydra") == hydra_before
        first.send_signal(signal.SIGKILL)  # ended without releasing anything itself
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    # It was killed during its first epoch, before any checkpoint: nothing to resume, so a new run
    # (the same command) may take the folder.
    again = run_cli(args(run_dir, epochs=1), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
