"""The README's table of training groups names every option of every group it lists (issue 16)."""

from __future__ import annotations

import re

from tests.conftest import CONF_DIR, ROOT


def test_the_readme_group_table_names_every_option_of_each_group() -> None:
    text = (ROOT / "README.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z_/]+)` \| (.+) \|$", text, re.M)}
    groups = [g for g in ("dataset", "model", "optim", "lr", "trainer", "logger", "module", "callbacks", "debug",
                          "hparams_search") if (CONF_DIR / g).is_dir()]
    assert len(groups) == 10
    for group in groups:
        assert group in rows, f"the README's group table has no row for {group}"
        named = set(re.findall(r"`([a-z0-9_]+)`", rows[group]))
        missing = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if p.stem not in named)
        assert not missing, f"README: the {group} row does not name {missing}"
