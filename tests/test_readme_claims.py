"""What the README says of the quickstart, checked on a real quickstart run (issue 16: numbers a
reader can check): its last lines, and the bound of "Where the theory holds" holding on it."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli


@pytest.mark.slow
def test_the_quickstart_ends_as_the_readme_says_and_its_bound_holds(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_cli(["experiment=quickstart", "logger=csv", "trainer.enable_progress_bar=false",
                      f"paths.root_dir={tmp_path}", f"hydra.run.dir={run}"], cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"^\.\.\. (test accuracy: .*)$", readme, re.M).group(1)
    # The README's line, its "..." read as "any digits or text".
    pattern = re.escape(shown).replace(r"\.\.\.", ".+")
    assert re.search(pattern, output), (shown, output[-2000:])
    accuracy = float(re.search(r"test accuracy: ([\d.]+)", output).group(1))
    assert accuracy >= 0.9
    # "Where the theory holds": on the quickstart grad_max_over_L stays below 1 and falls.
    (metrics,) = run.rglob("metrics.csv")
    with metrics.open() as handle:
        ratios = [float(row["lipschitz/grad_max_over_L"]) for row in csv.DictReader(handle)
                  if row.get("lipschitz/grad_max_over_L")]
    assert len(ratios) == 20, ratios
    assert max(ratios) < 1 and ratios[-1] < ratios[0], ratios
