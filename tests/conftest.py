"""Shared helpers of the training-app tests: compose the real ``conf/`` and shrink it.

The configs are composed exactly as ``python -m lipschitz_lightning.train`` composes them, then
made tiny (synthetic data, a couple of batches, CPU, no progress bar) and pointed into
``tmp_path`` so that no test writes into the repository or needs a dataset on disk.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"


def compose_train(overrides: Sequence[str] = (), hydra_config: bool = False) -> DictConfig:
    """Compose ``conf/train.yaml`` with command-line style ``overrides``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra_config)


def path_overrides(tmp_path: Path) -> List[str]:
    """Every output and data path into ``tmp_path`` (``paths.output_dir`` replaces Hydra's run dir)."""
    return [
        f"paths.root_dir={tmp_path}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.output_dir={tmp_path / 'run'}",
    ]


def tiny_data(kind: str = "image", loss: str = "softmax_ce") -> List[str]:
    """Synthetic data: 3x8x8 images or 10 features, 32 train / 16 test samples, batch 8."""
    shape = "[3,8,8]" if kind == "image" else "[10]"
    return [
        "dataset=synthetic",
        f"dataset.input_shape={shape}",
        f"dataset.loss={loss}",
        "dataset.num_classes=3",
        "dataset.num_train=32",
        "dataset.num_test=16",
        "dataset.batch_size=8",
    ]


def tiny_trainer(epochs: int = 1, batches: int = 2, logger: bool = False) -> List[str]:
    """One CPU process, ``batches`` training batches per epoch, one val / test batch, quiet."""
    return [
        "trainer=cpu",
        f"trainer.max_epochs={epochs}",
        f"+trainer.limit_train_batches={batches}",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
        "+trainer.num_sanity_val_steps=0",
        "+trainer.enable_model_summary=false",
        "trainer.enable_progress_bar=false",
    ] + ([] if logger else ["~logger"])


def tiny_cfg(tmp_path: Path, *extra: str, kind: str = "image", loss: str = "softmax_ce", **trainer) -> DictConfig:
    """The real config made tiny; ``extra`` overrides come last and win."""
    return compose_train(path_overrides(tmp_path) + tiny_data(kind, loss) + tiny_trainer(**trainer) + list(extra))


def run_cli(args: Sequence[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m lipschitz_lightning.train <args>`` in ``cwd``; capture text output."""
    # The repository first on the path: this checkout's package and the tests' helper callbacks.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0", PYTHONPATH=path)
    env.pop("LIPSCHITZ_DATA", None)
    return subprocess.run(
        [sys.executable, "-m", "lipschitz_lightning.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(autouse=True)
def _clear_hydra():
    """Each test composes afresh."""
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()
