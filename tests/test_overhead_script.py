"""The callback-overhead benchmark (``make bench``) runs and prints its figures, for a plain-SGD
rule, the per-step rate and the Polyak step (a smoke run: tiny, not a timing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_callback_overhead.py"


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--rule", "sgd"], ["--rule", "precond", "--per-step"], ["--rule", "precond", "--polyak"]],
                         ids=["sgd", "precond-per-step", "polyak"])
def test_overhead_benchmark_runs_and_prints_the_callbacks_share_of_a_step(extra):
    result = subprocess.run([sys.executable, str(SCRIPT), "--steps", "4", "--warmup", "1", "--rounds", "1",
                             "--batch-size", "16", "--modes", "hooks", *extra],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "time inside the callback" in result.stdout
    assert "% of a step without it" in result.stdout
    if "--polyak" in extra:  # its one collective per step under DDP, timed on two processes
        assert "DDP: the Polyak step's all-reduce of one float per step" in result.stdout
