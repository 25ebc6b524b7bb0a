"""Where the Hydra configs are: ``lipschitz_lightning/conf`` in an installed wheel, ``./conf`` in a clone.

The repository's ``conf/`` folder is the configs' only source; building the wheel copies it into
the package (``setup.py``). An editable install or a clone on ``PYTHONPATH`` has no packaged
copy, so the folder next to the package is used.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["config_dir"]

_PACKAGE = Path(__file__).resolve().parent


def config_dir() -> str:
    """The absolute path of the folder holding ``train.yaml``.

    Raises:
        FileNotFoundError: neither the packaged configs nor a clone's ``conf/`` exist.
    """
    for candidate in (_PACKAGE / "conf", _PACKAGE.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"no Hydra configs: neither {_PACKAGE / 'conf'} (installed wheel) nor {_PACKAGE.parent / 'conf'} (clone) "
        "holds train.yaml; reinstall the package"
    )
