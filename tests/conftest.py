"""Shared helpers of the training-app tests: compose the real ``conf/`` and shrink it.

The configs are composed exactly as ``python -m lipschitz_lightning.train`` composes them, then
made tiny (synthetic data, a couple of batches, CPU, no progress bar) and pointed into
``tmp_path`` so that no test writes into the repository or needs a dataset on disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

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
        f"trainer.limit_train_batches={batches}",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
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
        preexec_fn=_sigint_as_in_a_terminal,
    )


def _sigint_as_in_a_terminal() -> None:
    """Start the child with Ctrl-C at its default, as a shell in a terminal does. A test session
    started in the background (``cmd &``, nohup) ignores SIGINT, its children inherit that, and the
    app rightly leaves an ignored SIGINT ignored: the Ctrl-C tests would then see no Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def _clear_hydra():
    """Each test composes afresh."""
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


# --------------------------------------------------------------------------- a fresh virtual environment

CORE_ONLY_ABSENT = ("hydra-core", "omegaconf", "scikit-learn", "torchvision", "tensorboard", "prodigyopt",
                    "dadaptation", "dog-optimizer", "schedulefree", "prodigy-plus-schedule-free", "matplotlib")


class FreshVenv:
    """A virtual environment outside the repository, with the wheel built from it installed (core only)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "venv"
        self.bin = self.dir / "bin"
        self.python = str(self.bin / "python")
        self.wheel: Path
        self.core_packages: set = set()  # what `pip install <wheel>` (no extras) installed
        self.core_run: Optional[subprocess.CompletedProcess] = None  # callback_only_script.py, core only
        self.bare = None  # tests/bare_install.py's BareRuns: the README's python blocks and the app's commands, core only

    def run(self, args: Sequence[str], cwd: Path, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
        """Run a command with this environment first on PATH and nothing of the repository on PYTHONPATH."""
        environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "LIPSCHITZ_DATA")}
        environ.update(PATH=f"{self.bin}{os.pathsep}{environ.get('PATH', '')}", PYTHONWARNINGS="ignore", **env)
        return subprocess.run(list(args), cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout)

    def pip(self, *args: str, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
        # --no-compile: byte-compiling torch takes longer than unpacking it; pip's cache has the wheels.
        result = self.run([self.python, "-m", "pip", "install", "-q", "--no-compile", *args], cwd=cwd or self.root)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    def installed(self) -> set:
        result = self.run([self.python, "-m", "pip", "list", "--format=freeze"], cwd=self.root)
        return {line.split("==")[0].lower() for line in result.stdout.splitlines() if "==" in line}


def link_torch(venv: Path, into: Path) -> None:
    """Make the pinned torch of this environment, and the packages torch itself requires, visible
    to ``venv`` through symlinks and a ``.pth`` file, instead of unpacking its 5.5 GB again.

    pip sees them as installed (torch==2.14.1 satisfies the wheel's pin) and installs everything
    else the wheel asks for itself; nothing else of this environment (Lightning, Hydra, ...) is
    visible in ``venv``.
    """
    from importlib import metadata

    from packaging.requirements import Requirement

    todo, seen = ["torch"], set()
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(name)
        for requirement in map(Requirement, dist.requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
        site = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] not in ("..", "__pycache__")}:
            if (site / top).exists() and not (into / top).exists():
                (into / top).symlink_to(site / top)
    (site_packages,) = venv.glob("lib/python*/site-packages")
    (site_packages / "torch_from_the_test_environment.pth").write_text(f"{into}\n")


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory) -> FreshVenv:
    """Build the wheel (sdist first, as `python -m build` does) and install it without extras in a
    new venv outside the repository. torch (and what torch requires) comes from this environment
    through links (:func:`link_torch`); pip installs everything else from the wheel's metadata,
    from its cache or the package index."""
    venv = FreshVenv(tmp_path_factory.mktemp("fresh_venv"))
    dist = venv.root / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (venv.wheel,) = dist.glob("lipschitz_lightning-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv.dir)], check=True, timeout=300)
    (venv.root / "torch").mkdir()
    link_torch(venv.dir, venv.root / "torch")
    venv.pip(str(venv.wheel))
    venv.core_packages = venv.installed()
    venv.core_run = venv.run([venv.python, str(ROOT / "tests" / "callback_only_script.py")], cwd=venv.root)
    from tests.bare_install import run_bare_checks

    venv.bare = run_bare_checks(venv)  # before any test installs an extra into this venv
    return venv
