"""Build hook: copy the Hydra configs (./conf, their source) into the wheel as lipschitz_lightning/conf.

Everything else is declared in pyproject.toml. An editable install copies nothing: the entry point
reads ./conf of the clone directly (lipschitz_lightning/configs.py).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class BuildPyWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        if not (CONF / "train.yaml").is_file():
            raise FileNotFoundError(f"{CONF / 'train.yaml'} is missing: the wheel would ship without its configs")
        target = Path(self.build_lib) / "lipschitz_lightning" / "conf"
        shutil.copytree(CONF, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithConfigs})
