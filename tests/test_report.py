"""The benchmark report tells the paper's rules run raw from the same rules run with the rollback
guard: a method's kind comes from its own overrides (``conf/methods/*.yaml``), not its name."""

from __future__ import annotations

from pathlib import Path

import pytest

from lipschitz_lightning.bench.report import generate
from lipschitz_lightning.bench.report.kinds import method_kind, method_label
from lipschitz_lightning.bench.results import EPOCH_COLUMNS, RUN_COLUMNS, append_rows


@pytest.mark.parametrize("optim", ["sgd", "adamo", "rmsprop", "auto_adam"])
def test_a_guarded_paper_rule_is_the_paper_rule_with_the_guard(optim: str):
    raw, guarded = method_kind(optim), method_kind(f"{optim}_guarded")
    assert (raw.kind, raw.guard, raw.optim) == ("paper", False, optim)
    assert (guarded.kind, guarded.guard, guarded.optim) == ("paper", True, optim)
    assert guarded.rule == raw.rule and guarded.family == raw.family and guarded.lipschitz
    assert (method_label(optim), method_label(f"{optim}_guarded")) == (optim, f"{optim} (guarded)")


def test_a_suite_method_takes_its_kind_from_its_optim_override():
    """``momentum_tuned`` (a suite's extra method) runs ``optim=momentum_fixed``: SGD with momentum."""
    kind = method_kind("momentum_tuned")
    assert (kind.kind, kind.optim, kind.family, kind.lipschitz) == ("other", "momentum_fixed", ("torch.optim.SGD", True), False)
    assert method_label("momentum_tuned") == "momentum_tuned"


def test_report_shows_a_guarded_rule_as_its_own_labelled_row(tmp_path: Path):
    results = tmp_path / "results"
    final = {"sgd_fixed": 0.90, "sgd": 0.95, "sgd_guarded": 0.96}
    append_rows(results / "mnist_runs.csv", RUN_COLUMNS,
                [{"suite": "mnist", "method": m, "seed": 0, "epochs": 2, "status": "ok", "test_acc": a}
                 for m, a in final.items()])
    append_rows(results / "mnist_epochs.csv", EPOCH_COLUMNS,
                [{"suite": "mnist", "method": m, "seed": 0, "epoch": e, "train/loss": 1.0 / (e + 1),
                  "val/acc": a - 0.01 * (1 - e), "bench/step_seconds": 0.01,
                  **({"lipschitz/lr": 0.5 * (e + 1), "lipschitz/rollbacks": 0.0} if m != "sgd_fixed" else {})}
                 for m, a in final.items() for e in range(2)])
    text = generate(results, tmp_path / "docs" / "benchmarks.md")
    rows = [line for line in text.splitlines() if line.startswith("| **sgd")]
    assert [row.split(" | ")[0] for row in rows] == ["| **sgd**", "| **sgd (guarded)**"]
    assert "| sgd_guarded |" not in text and "`sgd_guarded`" not in text
    assert "- `sgd (guarded)`: the rate rose, from 0.5 (epoch 1) to 1 (epoch 2)" in text
    assert "Best LipschitzLR rule: `sgd (guarded)` at 96.00% best test accuracy" in text
    assert "| mnist (target 98%) | `sgd (guarded)` |" in text
