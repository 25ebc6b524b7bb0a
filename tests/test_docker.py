"""The Dockerfile, without a Docker engine: its instructions are parsed and checked, and its
install and entry-point commands run in a plain venv (the one of tests/test_package.py).

What cannot run here is said so: the base image, the user creation and PyTorch's CUDA index
(``--extra-index-url``: no network but the package registry); the torch pin itself is checked
against pyproject.toml, and the venv already holds that torch.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from tests.conftest import ROOT, FreshVenv

# Under pytest-xdist (make test), one worker runs this module: the session's fresh venv (built in the repository's build/) is made once, on one worker.
pytestmark = pytest.mark.xdist_group("fresh_venv")

Instruction = Tuple[str, str]


def instructions(path: Path = ROOT / "Dockerfile") -> List[Instruction]:
    """(KEYWORD, arguments) per instruction; comments dropped, continuation lines joined."""
    out: List[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def ignored(relative: str, patterns: List[str]) -> bool:
    """Docker's rule: a pattern matches from the context root (the path or a folder above it);
    ``**/`` matches at any depth."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in (p.lstrip("/") for p in patterns):
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            return True
    return False


def dockerignore() -> List[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def pins() -> Dict[str, str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["app"]
    return dict(re.match(r"([\w-]+)==([\w.]+)", dep).groups() for dep in deps if "==" in dep)


def test_dockerfile_runs_as_a_non_root_user_with_data_and_log_volumes():
    steps = instructions()
    keywords = [k for k, _ in steps]
    assert steps[0][0] == "FROM" and re.match(r"python:3\.1[0-9]", steps[0][1])
    users = [args for k, args in steps if k == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert last_user > max(i for i, k in enumerate(keywords) if k == "RUN"), "no RUN after switching user"
    assert keywords.index("ENTRYPOINT") > last_user
    volumes = [v for k, args in steps if k == "VOLUME" for v in re.findall(r'"([^"]+)"', args)]
    assert {"/data", "/workspace/logs"} <= set(volumes)
    env = " ".join(args for k, args in steps if k == "ENV")
    assert "LIPSCHITZ_DATA=/data" in env
    workdir = [args for k, args in steps if k == "WORKDIR"][-1]
    assert f"{workdir}/logs" in volumes  # runs write to <cwd>/logs (paths.log_dir): the log volume
    # The run-time user owns the volumes' mount points.
    assert any("chown" in args and "/data" in args and "/workspace" in args for k, args in steps if k == "RUN")


def test_dockerfile_installs_the_pinned_torch_and_the_packaged_entry_point():
    steps = instructions()
    runs = " ".join(args for k, args in steps if k == "RUN")
    for name, version in pins().items():
        assert f"{name}=={version}" in runs, f"{name} in the image must be the pinned {version}"
    assert "download.pytorch.org/whl/${TORCH_CUDA}" in runs  # the CUDA build of that version
    assert re.search(r'pip install "\.\[app,competitors\]"', runs)  # a wheel build, not editable
    (entrypoint,) = [args for k, args in steps if k == "ENTRYPOINT"]
    assert entrypoint == '["lipschitz-train"]'
    assert 'lipschitz-train = "lipschitz_lightning.app.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_dockerignore_keeps_environments_data_and_runs_out_of_the_context():
    patterns = dockerignore()
    for path in (".git", ".venv", "data", "logs", "lipschitz_lightning/__pycache__", "build", "dist"):
        assert ignored(path, patterns), path
    for path in ("lipschitz_lightning/data/cifar.py", "conf/dataset/cifar10.yaml", "pyproject.toml"):
        assert not ignored(path, patterns), path  # a root pattern like `data` leaves the package's data/ alone
    copied = [shlex.split(args)[:-1] for k, args in instructions() if k == "COPY"]
    for sources in copied:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not ignored(source, patterns), f"COPY {source} is excluded by .dockerignore"


def staged_context(tmp_path: Path) -> Path:
    """The build context as Docker would send it: the repository minus .dockerignore."""
    patterns = dockerignore()
    context = tmp_path / "context"
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT).as_posix()
        if path.is_file() and not ignored(relative, patterns):
            (context / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, context / relative)
    return context


@pytest.mark.slow
def test_dockerfile_commands_install_and_run_the_quickstart(fresh_venv: FreshVenv, tmp_path: Path):
    """The Dockerfile's pip commands and entry point, in order, in a venv; container paths mapped
    into tmp_path (/data, /workspace), ARGs at their defaults."""
    steps = instructions()
    context = staged_context(tmp_path)
    mapped = {"/data": tmp_path / "data", "/workspace": tmp_path / "workspace",
              "/opt/lipschitz-lightning": tmp_path / "opt"}
    for folder in mapped.values():
        folder.mkdir(parents=True, exist_ok=True)
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG")
    env: Dict[str, str] = {}
    cwd = tmp_path
    ran: List[str] = []
    for keyword, rest in steps:
        if keyword == "WORKDIR":
            cwd = mapped[rest]
        elif keyword == "COPY":
            *sources, target = shlex.split(rest)
            for source in sources:
                destination = cwd / target if target not in ("./", ".") else cwd
                if (context / source).is_dir():
                    shutil.copytree(context / source, cwd / target, dirs_exist_ok=True)
                else:
                    shutil.copy2(context / source, destination / Path(source).name if target.endswith("/") else destination)
        elif keyword == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", rest):
                env[key] = str(mapped.get(value, value))
        elif keyword == "RUN" and rest.startswith("pip install"):
            for name, value in args.items():
                rest = rest.replace(f"${{{name}}}", value)
            # No network but the package registry here: PyTorch's CUDA index is left out (the pinned
            # torch is already in the venv, which is what that index would give).
            command = re.sub(r"--extra-index-url \S+", "", rest).replace("pip install", "python -m pip install -q", 1)
            result = fresh_venv.run(["bash", "-c", command], cwd=cwd)
            assert result.returncode == 0, f"RUN {rest}\n{result.stderr[-3000:]}"
            ran.append(rest)
    assert len(ran) == 2  # torch, then the package
    (entrypoint,) = [shlex.split(a.strip("[]").replace('"', "")) for k, a in steps if k == "ENTRYPOINT"]
    result = fresh_venv.run([*entrypoint, "experiment=quickstart", "trainer.max_epochs=1",
                             "trainer.enable_progress_bar=false"], cwd=cwd, timeout=600, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test accuracy:" in result.stdout + result.stderr
    runs = list((mapped["/workspace"] / "logs" / "quickstart" / "runs").iterdir())  # into the log volume
    assert len(runs) == 1 and (runs[0] / "checkpoints" / "last.ckpt").is_file()
    installed = fresh_venv.installed()
    assert {"prodigyopt", "dadaptation", "dog-optimizer", "schedulefree", "hydra-core"} <= installed
