"""Print the markdown table of ``docs/rules.md`` section 6 from the runs' raw ``metrics.csv`` files.

The files are the CSV logger's output of single training runs, copied to
``docs/measurements/rules/<suite>_<option>.csv``; this script only reads them, so the table in
the docs is generated, never typed::

    python scripts/rules_table.py digits_mlp
    python scripts/rules_table.py mnist_cnn
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Dict, List

from lipschitz_lightning.bench.results import read_metrics

FOLDER = Path(__file__).resolve().parents[1] / "docs" / "measurements" / "rules"


def epochs_of(path: Path) -> List[Dict[str, float]]:
    """One dict per epoch: every non-empty column of the rows logged in that epoch."""
    return list(read_metrics([path]).values())


def fmt(x: float, spec: str = ".4g") -> str:
    return "NaN" if isinstance(x, float) and math.isnan(x) else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", help="file prefix, e.g. digits_mlp")
    args = parser.parse_args()
    files = sorted(FOLDER.glob(f"{args.suite}_*.csv"))
    if not files:
        parser.error(f"no {args.suite}_*.csv in {FOLDER}")
    print("| option | epochs | lr per epoch | val acc per epoch | best | rollbacks | max grad_max_over_L |")
    print("|---|---|---|---|---|---|---|")
    for path in files:
        rows = epochs_of(path)
        option = path.stem[len(args.suite) + 1:]
        lrs = ", ".join(fmt(r.get("lipschitz/lr", math.nan), ".3g") for r in rows)
        accs = ", ".join(fmt(100 * r.get("val/acc", math.nan), ".1f") for r in rows)
        best = max((r.get("val/acc", math.nan) for r in rows), default=math.nan)
        rollbacks = rows[-1].get("lipschitz/rollbacks")
        ratios = [r["lipschitz/grad_max_over_L"] for r in rows if "lipschitz/grad_max_over_L" in r]
        print(f"| `{option}` | {len(rows)} | {lrs} | {accs} | {fmt(100 * best, '.1f')} | "
              f"{'off' if rollbacks is None else int(rollbacks)} | {fmt(max(ratios), '.3g') if ratios else '-'} |")


if __name__ == "__main__":
    main()
