"""Generate ``docs/benchmarks.md`` and its PNGs from the committed raw results (never by hand).

::

    python -m lipschitz_lightning.bench.report                    # benchmarks/results -> docs/
    python -m lipschitz_lightning.bench.report results_dir=/tmp/r out=/tmp/r/benchmarks.md

Every figure in the report is computed from ``benchmarks/results/*.csv``: the suites'
``<suite>_runs.csv`` / ``<suite>_epochs.csv`` (written by ``python -m lipschitz_lightning.bench``)
and the classical tables ``classical_table1.csv``, ``classical_table2.csv``,
``classical_curves.csv`` (written by ``python -m lipschitz_lightning.classical``). The short
readings are sentences filled in from the same numbers.

The parts: :mod:`.stats` (one record per run and per method), :mod:`.kinds` (which methods are
LipschitzLR rules, the paper's or ours, raw or with the rollback guard, from each method's own
overrides, its optim file and the rule registry; a paper rule with the guard is its own row,
``sgd (guarded)``),
:mod:`.text` (the generated sentences and tables), :mod:`.plots` (the figures),
:mod:`.classical_tables` (the classical section) and :mod:`.document` (the page).
"""

from __future__ import annotations

from lipschitz_lightning.bench.report.document import generate
from lipschitz_lightning.bench.report.stats import REFERENCE, MethodStats, RunStats, summarise

__all__ = ["REFERENCE", "MethodStats", "RunStats", "generate", "summarise"]
