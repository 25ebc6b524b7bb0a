"""The paper's classical experiments (sections 7.1-7.2, Tables 1 and 2, Figure 1): full-batch
gradient descent at a guessed rate alpha = 0.1 against alpha = 1/L.

::

    python -m lipschitz_lightning.classical dataset=breast_cancer
    python -m lipschitz_lightning.classical --multirun dataset=breast_cancer,iris,digits,wine,diabetes,mnist results_dir=benchmarks/results

The Hydra root is ``conf/classical/classical.yaml``, the data sets ``conf/classical/dataset/``.
The parts: :mod:`.loaders` (the data), :mod:`.descent` (gradient descent and the closed-form L),
:mod:`.scaling` (which feature scaling a row runs with), :mod:`.experiments` (the tables:
:func:`run`), :mod:`.tables` (their result files) and :mod:`.__main__` (the command).

The names below are imported from their modules when first used, so that
``python -m lipschitz_lightning.classical`` without the ``[app]`` extra can still say in one line
which extra to install.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict

# Public name -> the module of this package that defines it.
_EXPORTS: Dict[str, str] = {
    **dict.fromkeys(("ClassicalDataError", "Data", "load_csv", "load_mnist", "load_sklearn", "load_sklearn_fetch"),
                    "loaders"),
    **dict.fromkeys(("CONSTANTS", "descend"), "descent"),
    **dict.fromkeys(("SCALE_BASES", "SCALINGS", "SCALING_WORDS", "ClassicalConfigError", "ScaleChoice", "choose_scale"),
                    "scaling"),
    **dict.fromkeys(("run", "table1", "table2"), "experiments"),
    **dict.fromkeys(("CURVE_COLUMNS", "TABLE1_COLUMNS", "TABLE2_COLUMNS", "upsert_dataset"), "tables"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_EXPORTS))
