"""What kind of method a benchmark row is, read from its optim file and the rule registry only.

A method ``m`` of the results runs ``optim=m`` (``conf/optim/<m>.yaml``; a method without such a
file, e.g. a suite's extra one, is ``other``). Its file is composed as Hydra composes it (a
defaults list or a shared base file included), never matched by name.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from omegaconf import DictConfig

from lipschitz_lightning.configs import config_dir

__all__ = ["LR_FREE_PACKAGES", "MethodKind", "method_kind"]

# The learning-rate-free competitors, by the package their optimizer comes from.
LR_FREE_PACKAGES: Tuple[str, ...] = ("prodigyopt", "dadaptation", "dog", "schedulefree", "prodigyplus")


@dataclass(frozen=True)
class MethodKind:
    """``rule``: the LipschitzLR rule the method schedules with (None: no LipschitzLR);
    ``kind``: ``paper`` (one of the paper's rules), ``ours`` (a rule of our own), ``lr_free`` (a
    learning-rate-free optimizer from its own package) or ``other`` (fixed and tuned baselines);
    ``family``: the optimizer it steps with and whether with momentum (the paper's rule of the
    same family is the one with the same pair)."""

    rule: Optional[str]
    kind: str
    family: Tuple[str, bool]

    @property
    def lipschitz(self) -> bool:
        return self.rule is not None


@functools.lru_cache(maxsize=None)
def _optim(conf: str, method: str) -> Optional[DictConfig]:
    """The ``optim`` node of ``conf/optim/<method>.yaml`` as composed (None: no such file)."""
    if not (Path(conf) / "optim" / f"{method}.yaml").is_file():
        return None
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()  # as the bench's load_config: one composition of its own
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        return compose(config_name=f"optim/{method}").get("optim")


def method_kind(method: str) -> MethodKind:
    from lipschitz_lightning.math.rules import RULES

    node = _optim(config_dir(), method)
    callback = node.get("callback") if node is not None else None
    rule = (str(callback.get("rule")) if callback is not None and "LipschitzLR" in str(callback.get("_target_"))
            else None)
    optimizer = node.get("optimizer") if node is not None else None
    target = str(optimizer.get("_target_", "")) if optimizer is not None else ""
    family = (target, float(optimizer.get("momentum") or 0.0) > 0) if optimizer is not None else ("", False)
    if rule is not None:
        kind = "paper" if RULES[rule].paper else "ours"
    else:
        kind = "lr_free" if target.split(".")[0] in LR_FREE_PACKAGES else "other"
    return MethodKind(rule, kind, family)
