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
