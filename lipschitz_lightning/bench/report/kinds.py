"""What kind of method a benchmark row is, read from its overrides, its optim file and the rule
registry only.

A method ``m`` of the results ran the overrides its method list gives it (``conf/methods/*.yaml``
or a suite's ``extra_methods``; a method listed nowhere, or listed as null, ran ``optim=m``). Its
``optim=<file>`` entry names ``conf/optim/<file>.yaml``, composed as Hydra composes it (a defaults
list or a shared base file included) with the method's own ``optim.*`` overrides applied (e.g.
``optim.callback.guard=false``: the raw rule), never matched by name. A method whose optim file
does not exist is ``other``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from lipschitz_lightning.configs import config_dir

__all__ = ["LR_FREE_PACKAGES", "MethodKind", "method_kind", "method_label", "overrides_of"]

# The learning-rate-free competitors, by the package their optimizer comes from.
LR_FREE_PACKAGES: Tuple[str, ...] = ("prodigyopt", "dadaptation", "dog", "schedulefree", "prodigyplus")


@dataclass(frozen=True)
class MethodKind:
    """``rule``: the LipschitzLR rule the method schedules with (None: no LipschitzLR);
    ``kind``: ``paper`` (one of the paper's rules), ``ours`` (a rule of our own), ``lr_free`` (a
    learning-rate-free optimizer from its own package) or ``other`` (fixed and tuned baselines);
    ``family``: the optimizer it steps with and whether with momentum (the paper's rule of the
    same family is the one with the same pair); ``optim``: the optim file it ran (None: none
    exists); ``guard``: it ran a LipschitzLR rule with the rollback guard on."""

    rule: Optional[str]
    kind: str
    family: Tuple[str, bool]
    optim: Optional[str] = None
    guard: bool = False

    @property
    def lipschitz(self) -> bool:
        return self.rule is not None


@functools.lru_cache(maxsize=None)
def _listed(conf: str) -> Dict[str, Tuple[str, ...]]:
    """Method -> overrides of every method list: ``conf/methods/*.yaml``, then the suites'
    ``extra_methods`` (the first list naming a method wins; a null entry is ``optim=<method>``)."""
    table: Dict[str, Tuple[str, ...]] = {}
    sources = [*sorted((Path(conf) / "methods").glob("*.yaml")), *sorted((Path(conf) / "suite").glob("*.yaml"))]
    for path in sources:
        node = OmegaConf.load(path)
        methods = node if path.parent.name == "methods" else node.get("extra_methods")
        if methods is None:
            continue
        for name, overrides in OmegaConf.to_container(methods, resolve=False).items():
            table.setdefault(str(name), (f"optim={name}",) if overrides is None else tuple(map(str, overrides)))
    return table


def overrides_of(method: str) -> Tuple[str, ...]:
    """The training app's overrides the method ran with (``optim=<method>`` if no list names it)."""
    return _listed(config_dir()).get(method, (f"optim={method}",))


def _split(overrides: Tuple[str, ...]) -> Tuple[Optional[str], Tuple[str, ...]]:
    """The optim file an override list picks (its last ``optim=``) and its ``optim.*`` overrides."""
    optim, own = None, []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key == "optim" and "=" in item:
            optim = item.split("=", 1)[1]
        elif key.startswith("optim."):
            own.append(item)
    return optim, tuple(own)


@functools.lru_cache(maxsize=None)
def _optim(conf: str, optim: str, overrides: Tuple[str, ...] = ()) -> Optional[DictConfig]:
    """The ``optim`` node of ``conf/optim/<optim>.yaml`` as composed, with ``overrides`` (``optim.*``)
    applied (None: no such file)."""
    if not (Path(conf) / "optim" / f"{optim}.yaml").is_file():
        return None
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()  # as the bench's load_config: one composition of its own
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        return compose(config_name=f"optim/{optim}", overrides=list(overrides)).get("optim")


def method_kind(method: str) -> MethodKind:
    from lipschitz_lightning.math.rules import get_rule

    optim, own = _split(overrides_of(method))
    node = _optim(config_dir(), optim, own) if optim is not None else None
    callback = node.get("callback") if node is not None else None
    lipschitz = callback is not None and "LipschitzLR" in str(callback.get("_target_"))
    rule = str(callback.get("rule")) if lipschitz else None
    optimizer = node.get("optimizer") if node is not None else None
    target = str(optimizer.get("_target_", "")) if optimizer is not None else ""
    family = (target, float(optimizer.get("momentum") or 0.0) > 0) if optimizer is not None else ("", False)
    if rule is not None:
        kind = "paper" if get_rule(rule).paper else "ours"
    else:
        kind = "lr_free" if target.split(".")[0] in LR_FREE_PACKAGES else "other"
    guard = lipschitz and callback.get("guard", True) is not False  # null: the rule's default, on
    return MethodKind(rule, kind, family, optim if node is not None else None, guard)


def method_label(method: str) -> str:
    """The method's name in the report: a paper rule run with the rollback guard is its optim
    file's name and ``(guarded)`` (``sgd (guarded)``), beside the paper's rule raw; every other
    method is its own name."""
    kind = method_kind(method)
    return f"{kind.optim} (guarded)" if kind.kind == "paper" and kind.guard else method
