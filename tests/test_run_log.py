"""The run folder's log file holds what the run prints (issue 16: each message once, in the right
place), and the lines no user can act on are not printed at all."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import run_cli, tiny_data

TINY = ["model=mlp", "model.hidden_sizes=[8]", "optim=sgd", "trainer=cpu", "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false", *tiny_data("tabular")]


@pytest.mark.slow
def test_the_log_file_holds_lightnings_and_lipschitzlrs_lines_and_no_noise(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # With the TensorBoard logger: 4 batches per epoch, fewer than Lightning's logging interval.
    result = run_cli([*TINY, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    text = (run / "train.log").read_text()
    printed = result.stdout + result.stderr
    # LipschitzLR's first-epoch line and Lightning's own lines reach the file as well as the terminal.
    for line in ("LipschitzLR: first-epoch rate", "`Trainer.fit` stopped", "test loss" if "test accuracy" not in text
                 else "test accuracy"):
        assert line in printed, printed[-3000:]
        assert line in text, text
    # Lightning's advertisement, its note about a limit of 1.0 and its advice about the logging
    # interval (the app logs per epoch) are dropped everywhere.
    for noise in ("litlogger", "was configured so 100% of the batches", "smaller than the logging interval"):
        assert noise not in printed, printed[-3000:]
        assert noise not in text, text
    # The test line says which weights it measured: the best epoch by val/loss, of how many.
    found = re.search(r"test (?:accuracy|loss): \S+ \(the weights of epoch ([12]) of 2, the lowest val/loss\)", text)
    assert found, text
    assert (run / "checkpoints" / f"epoch_{int(found.group(1)) - 1:03d}.ckpt").is_file()


@pytest.mark.slow
def test_the_error_line_is_printed_once_and_kept_in_the_log_file(tmp_path: Path) -> None:
    # A folder given with hydra.run.dir is kept when the run is refused; its log holds the line.
    run = tmp_path / "run"
    result = run_cli([*TINY, "trainer.max_epochs=0", f"hydra.run.dir={run}"], cwd=tmp_path)
    line = "error: trainer.max_epochs must be a positive integer; got 0"
    assert result.returncode == 2, result.stderr[-3000:]
    assert (result.stdout + result.stderr).count(line) == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == line
    assert line in (run / "train.log").read_text()


@pytest.mark.slow
def test_a_multiruns_list_of_failed_jobs_is_in_its_log_file(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(["--multirun", *TINY, "dataset.batch_size=-1,0", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    summary = result.stderr.strip().splitlines()[-3:]
    assert summary[0] == "2 job(s) of the multirun failed:", result.stderr[-3000:]
    assert summary[1:] == [f"  job {n} (dataset.batch_size={v}): error: dataset.batch_size must be a positive "
                           f"integer; got {v}" for n, v in ((0, -1), (1, 0))]
    assert (sweep / "train.log").read_text().splitlines()[-3:] == summary
    # Each job's own log has its line.
    assert summary[1].split(": ", 1)[1] in (sweep / "0" / "train.log").read_text()
