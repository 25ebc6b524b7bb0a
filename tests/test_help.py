"""``--help`` lists the training config's groups and every option of each, and nothing of the
other entry points' configs (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, run_cli


@pytest.mark.slow
def test_help_lists_the_training_groups_with_all_their_options_and_no_other_entry_points(tmp_path: Path) -> None:
    result = run_cli(["--help"], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    groups_section = result.stdout.split("== Configuration groups", 1)[1].split("== Config (", 1)[0]
    listed = {line.split(":", 1)[0]: line for line in groups_section.splitlines() if ": " in line}
    expected = [next(iter(entry)) for entry in OmegaConf.load(CONF_DIR / "train.yaml").defaults
                if not isinstance(entry, str) and next(iter(entry)) not in ("hydra", "override hydra/help")]
    assert expected, "train.yaml's defaults list names no group"
    for group in expected:
        assert group in listed, (group, groups_section)
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        assert options, group
        for option in options:
            assert f" {option}," in listed[group] + "," or f" {option} (" in listed[group], (option, listed[group])
    for other in ("classical", "suite", "methods"):
        assert other not in listed, groups_section
    assert "is powered by Hydra" not in result.stdout
    # --help writes no run folder.
    assert not (tmp_path / "logs").exists()
