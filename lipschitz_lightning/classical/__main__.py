"""``python -m lipschitz_lightning.classical dataset=<name> [key=value ...]`` (Hydra; ``--multirun`` too).

The configs are found through :func:`lipschitz_lightning.configs.config_dir` (a clone's ``conf/``
or the installed package's copy): root ``classical/classical.yaml``. A missing data set or a bad
value is one ``error: ...`` line and exit status 2.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # without the [app] extra: one line naming it, exit status 2, no traceback
    from lipschitz_lightning.app.cli import require_app

    require_app("python -m lipschitz_lightning.classical")

import hydra
from omegaconf import DictConfig

from lipschitz_lightning.bench.results import ResultsFormatError
from lipschitz_lightning.classical.experiments import run
from lipschitz_lightning.classical.loaders import ClassicalDataError
from lipschitz_lightning.classical.scaling import ClassicalConfigError
from lipschitz_lightning.configs import config_dir

CONFIG_PATH = os.path.join(config_dir(), "classical")


@hydra.main(config_path=CONFIG_PATH, config_name="classical", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; a missing data set or a bad value is one ``error: ...`` line and exit status 2."""
    try:
        run(cfg)
    except (ClassicalDataError, ClassicalConfigError, ResultsFormatError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
