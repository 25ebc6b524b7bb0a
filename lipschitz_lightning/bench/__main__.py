"""``python -m lipschitz_lightning.bench suite=<name> [key=value ...]``: run a benchmark suite.

The overrides are Hydra's (``conf/benchmark.yaml`` is the root, ``suite`` and ``methods`` its
groups). A bad suite, method or override is one ``error: ...`` line and exit status 2. SIGTERM or
Ctrl-C stops the running training run with its checkpoint written (it is resumed by the same
command) and exits with 143 or 130.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

if __name__ == "__main__":  # without the [app] extra: one line naming it, exit status 2, no traceback
    from lipschitz_lightning.app.cli import require_app

    require_app("python -m lipschitz_lightning.bench")

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from lipschitz_lightning.bench.results import ResultsFormatError
from lipschitz_lightning.bench.runner import BenchConfigError, SuiteInterrupted, run_suite
from lipschitz_lightning.configs import config_dir


def load_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/benchmark.yaml`` with command-line style overrides."""
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="benchmark", overrides=list(overrides))


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(argv)
        run_suite(cfg)
    except (BenchConfigError, ResultsFormatError, HydraException, OmegaConfBaseException) as exc:
        sys.stderr.write(f"error: {str(exc).splitlines()[0]}\n")
        return 2
    except SuiteInterrupted as exc:
        sys.stderr.write(f"{exc}\n")
        return exc.status
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: finished runs are saved; run the same command to resume\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
