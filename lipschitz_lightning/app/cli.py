"""The ``lipschitz-train`` console script, and the check that the application's extra is installed.

``pip install lipschitz-lightning`` (no extras) installs the callback only: torch and Lightning.
The training application (``lipschitz-train``, ``python -m lipschitz_lightning.train``,
``.classical``, ``.bench``) needs the ``[app]`` extra; without it these say so in one line on
stderr and exit with status 2, before importing Hydra, instead of a ``ModuleNotFoundError``
traceback. This module imports nothing of the application itself.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import List, Sequence

__all__ = ["APP_MODULES", "main", "missing_modules", "require_app"]

# The top-level modules of the [app] extra's packages (pyproject.toml).
APP_MODULES = ("hydra", "omegaconf", "torchvision", "torchmetrics", "tensorboard", "sklearn", "numpy", "PIL")


def missing_modules(modules: Sequence[str] = APP_MODULES) -> List[str]:
    """The ``modules`` that cannot be imported here (found without importing them)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def require_app(command: str, extra: str = "app", modules: Sequence[str] = APP_MODULES) -> None:
    """Exit with status 2 and one line naming the extra to install when a module of it is missing."""
    missing = missing_modules(modules)
    if missing:
        sys.stderr.write(
            f"error: {command} needs the [{extra}] extra (no module named {missing[0]!r}): "
            f"pip install \"lipschitz-lightning[{extra}]\"\n"
        )
        sys.stderr.flush()
        raise SystemExit(2)


def main() -> None:
    """``lipschitz-train [overrides]``: ``python -m lipschitz_lightning.train`` once ``[app]`` is there
    (Hydra reads the overrides from ``sys.argv``)."""
    require_app("lipschitz-train")
    from lipschitz_lightning.train import main as train_main

    train_main()
