"""The README's Python, tested verbatim: every ```python block runs as written in a venv holding
only ``pip install <wheel>`` (no extras; tests/bare_install.py runs them in conftest's
``fresh_venv`` before any test adds an extra). A block that is not meant to run says so with
another info string (```text, ```pycon); an unmarked block holds no Python."""

from __future__ import annotations

import ast
import builtins
import re

import pytest

from tests.bare_install import README, fenced_blocks, readme_python_blocks
from tests.conftest import FreshVenv

pytestmark = pytest.mark.xdist_group("fresh_venv")

# Lines that only Python starts with.
PYTHON_LINE = re.compile(r"^(import \w|from [\w.]+ import |def \w+\(|class \w+[(:]|\w+ = \w+\()", re.MULTILINE)


def unbound_names(code: str) -> set:
    """Names the code reads but never binds (imports, assignments, definitions, arguments) and
    that are not builtins: what a reader would have to supply."""
    tree = ast.parse(code)
    bound, read = set(dir(builtins)), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return read - bound


def callback_block() -> str:
    (code,) = [code for code in readme_python_blocks() if "LipschitzLR(" in code and ".fit(" in code]
    return code


def test_readme_python_is_marked_and_defines_what_it_uses():
    unmarked = [code for info, code in fenced_blocks(README.read_text()) if not info and PYTHON_LINE.search(code)]
    assert not unmarked, f"unmarked block of Python (```python runs it; ```text does not): {unmarked[0][:200]}"
    for code in readme_python_blocks():
        assert not unbound_names(code), f"{sorted(unbound_names(code))} used but not defined in:\n{code[:300]}"
    # The callback snippet trains on the default path: the first-epoch rate from the probe.
    assert "first_epoch_lr" not in callback_block()


@pytest.mark.slow
def test_readme_python_blocks_run_verbatim_with_the_bare_wheel(fresh_venv: FreshVenv):
    blocks = readme_python_blocks()
    runs = fresh_venv.bare.readme
    assert blocks and len(runs) == len(blocks)
    for code, result in zip(blocks, runs):
        assert result.returncode == 0, f"README block failed:\n{code[:300]}\n...\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
    result = runs[blocks.index(callback_block())]
    output = result.stdout + result.stderr
    assert "from a probe of the initial weights" in output  # the module has no forward
    assert float(re.search(r"learning rate of the next epoch: (\S+)", output).group(1)) > 0
