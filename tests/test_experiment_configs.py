"""Experiment files state only what differs from the group options they pick.

An experiment picks its dataset, model, optim (and maybe trainer) options; every value it sets
beyond that must change something: a value equal to what those options already give is a
restatement that drifts the day the group file changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, compose_train, path_overrides

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def leaves(node: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_sets_only_what_differs(name: str, tmp_path: Path):
    raw: Dict[str, Any] = yaml.safe_load((CONF_DIR / "experiment" / f"{name}.yaml").read_text())
    picks: List[str] = []
    for entry in raw.pop("defaults", []):
        (group, option), = entry.items()
        picks.append(f"{group.replace('override /', '')}={option}")
    raw.pop("task_name")  # names the log folder: always the experiment's own
    without = compose_train(path_overrides(tmp_path) + picks)
    restated = [
        f"{key}: {value!r}"
        for key, value in leaves(raw)
        if OmegaConf.select(without, key, default="<unset>") == value
    ]
    assert not restated, f"{name} restates what its group options already set: {restated}"


def test_lr_group_is_one_file():
    """The first-epoch rate is one number: `lr.first_epoch=0.5`, not one file per value."""
    assert sorted(p.name for p in (CONF_DIR / "lr").glob("*.yaml")) == ["default.yaml"]
