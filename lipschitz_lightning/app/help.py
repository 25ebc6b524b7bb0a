"""``lipschitz-train --help``: the groups of the training config and their options, read from the
configs themselves (``train.yaml``'s defaults list and each group's folder), so the help lists
exactly what ``train`` composes and nothing of the other entry points' configs (``classical``,
``suite``, ``methods``).

The text reaches Hydra through the ``training_groups`` resolver used by ``conf/hydra/help/train.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from omegaconf import OmegaConf

from lipschitz_lightning.configs import config_dir

__all__ = ["training_groups"]


def _options(folder: Path) -> List[str]:
    """The options of a group folder: its files, and those of its subfolders as ``sub/name``
    (except ``base/``: files the options pull in through their defaults lists, not options)."""
    return sorted(str(path.relative_to(folder).with_suffix("")) for path in folder.rglob("*.yaml")
                  if "base" not in path.relative_to(folder).parts[:-1])


def training_groups(root: str = "train", conf: Optional[str] = None) -> str:
    """One line per group of ``<conf>/<root>.yaml``'s defaults list: ``group: a, b, c (default: b)``."""
    folder = Path(conf or config_dir())
    lines = []
    for entry in OmegaConf.load(folder / f"{root}.yaml").get("defaults", []):
        if isinstance(entry, str):
            continue  # _self_
        ((group, default),) = dict(entry).items()
        group = str(group).lstrip("+~").split("@")[0]
        if group == "hydra" or not (folder / group).is_dir():
            continue
        chosen = "none" if default is None else str(default)
        lines.append(f"{group}: {', '.join(_options(folder / group))} (default: {chosen})")
    return "\n".join(lines)


OmegaConf.register_new_resolver("training_groups", lambda: training_groups(), replace=True)
