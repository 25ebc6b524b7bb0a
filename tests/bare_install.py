"""What runs in tests/conftest.py's ``fresh_venv`` right after ``pip install <wheel>`` (no extras),
before any test installs one: the README's ``python`` code blocks, verbatim, and the
application's commands, which must say in one line which extra to add.

The results are kept on the venv (``FreshVenv.bare``) for tests/test_readme.py and
tests/test_package.py to check.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# A fenced block: its info string and its text. ```python blocks run; a block that must not run
# says so with another info string (```text, ```pycon, ...).
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)

# The application's commands, without the [app] (or [bench]) extra; the plot gets a run folder.
APP_COMMANDS: Dict[str, List[str]] = {
    "lipschitz-train": ["lipschitz-train", "experiment=quickstart"],
    "train": ["python", "-m", "lipschitz_lightning.train", "experiment=quickstart"],
    "classical": ["python", "-m", "lipschitz_lightning.classical", "dataset=iris"],
    "bench": ["python", "-m", "lipschitz_lightning.bench", "suite=mnist"],
    "plot": ["python", "-m", "lipschitz_lightning.plot", "run"],
}


def fenced_blocks(text: str) -> List[Tuple[str, str]]:
    """``(info string, code)`` of every fenced code block of a Markdown text, in order."""
    return [(info.strip(), code) for info, code in FENCE.findall(text)]


def readme_python_blocks() -> List[str]:
    """The README's ``python`` blocks: the code that is claimed to run as written."""
    return [code for info, code in fenced_blocks(README.read_text()) if info == "python"]


@dataclass
class BareRuns:
    """The commands run in the core-only venv, by name: README block i is ``readme[i]``."""

    readme: List[subprocess.CompletedProcess] = field(default_factory=list)
    commands: Dict[str, subprocess.CompletedProcess] = field(default_factory=dict)


def run_bare_checks(venv) -> BareRuns:
    """Run the README's python blocks and the application's commands in ``venv`` (a
    ``FreshVenv`` holding the core install only), each in a folder of its own."""
    runs = BareRuns()
    for i, code in enumerate(readme_python_blocks()):
        folder = venv.root / f"readme_block_{i}"
        folder.mkdir()
        (folder / "block.py").write_text(code)
        runs.readme.append(venv.run([venv.python, "block.py"], cwd=folder, timeout=600))
    work = venv.root / "app_commands"
    (work / "run").mkdir(parents=True)
    (work / "run" / "metrics.csv").write_text("epoch,step,lipschitz/lr\n0,3,0.1\n1,7,0.2\n")
    for name, command in APP_COMMANDS.items():
        runs.commands[name] = venv.run(command, cwd=work, timeout=300)
    return runs
