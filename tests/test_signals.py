"""Stop signals as a scheduler, ``timeout`` or a terminal send them, and DDP peers that fail.

Each run is a real ``python -m lipschitz_lightning.train`` in a session of its own
(``start_new_session=True``); the test signals the whole process group (``os.killpg``), as
SLURM's ``scancel`` and time limit, ``timeout`` and a terminal's Ctrl-C do: the DataLoader
workers and the DDP ranks get the signal too. The run waits at a known step for it
(``tests._signal_at_step.WaitForSignalAtStep`` writes a marker file there). Afterwards no process
of the group may be left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import pytest

from tests._dataset_files import write_mnist_raw
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

STOP_STATUS = {"SIGTERM": 143, "SIGINT": 130}
STOP_NAME = {"SIGTERM": "SIGTERM", "SIGINT": "Ctrl-C"}


class Run:
    """``python -m lipschitz_lightning.train <args>`` as the leader of its own process group."""

    def __init__(self, args: Sequence[str], cwd: Path) -> None:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0", PYTHONPATH=path)
        env.pop("LIPSCHITZ_DATA", None)
        self.out = open(cwd / "stdout.txt", "w+")
        self.err = open(cwd / "stderr.txt", "w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lipschitz_lightning.train", *args], cwd=cwd, env=env, stdout=self.out,
            stderr=self.err, text=True, start_new_session=True,
            # Ctrl-C at its default, as a shell in a terminal starts a command.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.pgid = self.process.pid

    def wait_for(self, marker: Path, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert self.process.poll() is None, f"the run ended before {marker.name}:\n{self.stderr()[-3000:]}"
            assert time.monotonic() < deadline, f"no {marker.name} after {timeout} s"
            time.sleep(0.05)
        time.sleep(0.5)  # the run is now waiting in the marker's step

    def signal_group(self, name: str) -> None:
        os.killpg(self.pgid, getattr(signal, name))

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {timeout} s later:\n{self.stderr()[-3000:]}")
        finally:
            self.assert_no_process_left()

    def stderr(self) -> str:
        self.err.flush()
        return Path(self.err.name).read_text()

    def assert_no_process_left(self, grace: float = 15.0) -> None:
        """No live process of the run's group (workers, DDP ranks) stays behind; killed if one does."""
        deadline = time.monotonic() + grace
        while (left := group_members(self.pgid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left behind: {left}"


def group_members(pgid: int) -> List[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == pgid and fields[0] != "Z":
                pids.append(int(entry))
    return pids


def quiet(tmp_path: Path) -> List[str]:
    return ["trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false", "+trainer.num_sanity_val_steps=0",
            "~logger", f"paths.root_dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}"]


def wait_at(step: int, marker: Path) -> List[str]:
    return ["+callbacks.wait._target_=tests._signal_at_step.WaitForSignalAtStep", f"+callbacks.wait.step={step}",
            f"+callbacks.wait.marker={marker}"]


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------- DataLoader workers

WORKER_RUNS = {
    "synthetic": ["dataset=synthetic", "dataset.input_shape=[10]", "dataset.num_train=2000", "dataset.num_test=64",
                  "dataset.batch_size=50", "model=mlp", "epochs=3"],
    # The README's MNIST run (4 workers by default), on generated files.
    "mnist": ["dataset=mnist", "model=mlp", "dataset.batch_size=20", "epochs=2"],
}


@pytest.mark.parametrize(("dataset", "signum"), [("synthetic", "SIGTERM"), ("synthetic", "SIGINT"), ("mnist", "SIGTERM")])
def test_group_wide_stop_signal_with_loader_workers_is_a_clean_stop(dataset: str, signum: str, tmp_path: Path):
    """The workers ignore the stop signals: the main process finishes the batch, writes
    on_exception.ckpt, prints its one line and exits 143 (130), and takes its workers with it."""
    if dataset == "mnist":
        write_mnist_raw(tmp_path / "data", num_train=400, num_test=40)
    marker = tmp_path / "waiting"
    run = Run([*WORKER_RUNS[dataset], "trainer=cpu", "dataset.num_workers=2", *quiet(tmp_path),
               f"hydra.run.dir={tmp_path / 'run'}", *wait_at(3, marker)], cwd=tmp_path)
    run.wait_for(marker)
    run.signal_group(signum)
    status = run.finish()
    err = run.stderr()
    assert status == STOP_STATUS[signum], err[-3000:]
    assert "Traceback" not in err and "DataLoader worker" not in err, err[-3000:]
    line = last_line(err)
    assert line.startswith(f"stopped by {STOP_NAME[signum]}; checkpoint written; resume with: "), err[-3000:]
    assert line.endswith(f"resume={tmp_path / 'run'}")
    assert (tmp_path / "run" / "checkpoints" / "on_exception.ckpt").is_file()


# --------------------------------------------------------------------------- multirun

@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT twice"])
def test_stop_signal_ends_a_multirun_and_lists_the_jobs_not_run(how: str, tmp_path: Path):
    """SIGTERM (or Ctrl-C twice) during job 0 of three: job 0 stops, the sweep starts no other job,
    exits 143 (130) and names the jobs that did not run by their overrides."""
    marker, sweep = tmp_path / "waiting", tmp_path / "sweep"
    run = Run(["--multirun", "dataset=synthetic", "dataset.input_shape=[10]", "dataset.num_train=400",
               "dataset.num_test=16", "dataset.batch_size=8", "model=mlp", "epochs=2", "trainer=cpu", "seed=1,2,3",
               *quiet(tmp_path), f"hydra.sweep.dir={sweep}", *wait_at(3, marker)], cwd=tmp_path)
    run.wait_for(marker)
    signum = how.split()[0]
    run.signal_group(signum)
    if how.endswith("twice"):
        time.sleep(0.05)
        run.signal_group(signum)
    status = run.finish()
    err = run.stderr()
    assert status == STOP_STATUS[signum], err[-3000:]
    assert "Traceback" not in err and "Error executing job" not in err, err[-3000:]
    assert err.strip().splitlines()[-3:] == [
        f"the multirun was stopped by {STOP_NAME[signum]} in job 0 (seed=1); 2 job(s) did not run:",
        "  job 1: seed=2",
        "  job 2: seed=3",
    ], err[-3000:]
    # The stopped job's own line came first; the other jobs trained nothing.
    assert "resume with: " in err and f"resume={sweep / '0'}" in err
    assert not any((sweep / job / "checkpoints").exists() for job in ("1", "2"))
    if how == "SIGTERM":
        assert (sweep / "0" / "checkpoints" / "on_exception.ckpt").is_file()


# --------------------------------------------------------------------------- DDP peers

def ddp_run(tmp_path: Path, how: str, marker: Path, *extra: str) -> Run:
    """Two gloo processes (trainer=ddp_sim); rank 1 dies or freezes after step 3."""
    return Run(["dataset=synthetic", "dataset.input_shape=[10]", "dataset.num_train=400", "dataset.num_test=16",
                "dataset.batch_size=8", "model=mlp", "epochs=2", "trainer=ddp_sim", *quiet(tmp_path),
                f"hydra.run.dir={tmp_path / 'run'}", "+callbacks.peer._target_=tests._signal_at_step.PeerFailsAtStep",
                "+callbacks.peer.step=3", f"+callbacks.peer.how={how}", f"+callbacks.peer.marker={marker}", *extra],
               cwd=tmp_path)


def assert_one_error_line(err: str, *words: str, resume: Optional[Path] = None) -> None:
    assert "Traceback" not in err and "Error executing job" not in err, err[-3000:]
    line = last_line(err)
    assert all(word in line for word in words), err[-3000:]
    if resume is not None:
        assert line.endswith(f"resume={resume}"), line


def test_ddp_peer_killed_is_one_error_line(tmp_path: Path):
    marker = tmp_path / "rank1_gone"
    run = ddp_run(tmp_path, "exit", marker)
    status = run.finish()
    err = run.stderr()
    assert marker.exists(), err[-3000:]
    assert status == 1, err[-3000:]
    assert_one_error_line(err, "error: DDP rank 0 lost its connection to a peer", "resume with: ",
                          resume=tmp_path / "run")


def test_ddp_peer_that_stops_answering_times_out_with_one_error_line(tmp_path: Path):
    """rank 1 frozen (SIGSTOP): rank 0 gives up after trainer.strategy.timeout (long enough here
    for rank 1 to start on a loaded machine), says so in one line, and the frozen rank goes too."""
    marker = tmp_path / "rank1_frozen"
    run = ddp_run(tmp_path, "freeze", marker, "trainer.strategy.timeout.seconds=60")
    run.wait_for(marker)
    frozen = time.monotonic()
    status = run.finish(timeout=240)
    err = run.stderr()
    assert status == 1, err[-3000:]
    assert time.monotonic() - frozen >= 55
    assert_one_error_line(err, "error: DDP rank 0 waited 60 s for a peer that stopped answering",
                          "trainer.strategy.timeout", resume=tmp_path / "run")


def test_ddp_rank_blocked_on_a_frozen_peer_still_stops_on_sigterm(tmp_path: Path):
    """rank 1 frozen, the collective's timeout long (the config's default): a group-wide SIGTERM
    ends rank 0, blocked in the collective, within seconds, with its line and status 143."""
    marker = tmp_path / "rank1_frozen"
    run = ddp_run(tmp_path, "freeze", marker)
    run.wait_for(marker)
    run.signal_group("SIGTERM")
    signalled = time.monotonic()
    status = run.finish(timeout=120)
    err = run.stderr()
    assert status == 143, err[-3000:]
    assert time.monotonic() - signalled < 60
    assert_one_error_line(err, "stopped by SIGTERM while DDP rank 0 waited for a peer that stopped answering",
                          resume=tmp_path / "run")
