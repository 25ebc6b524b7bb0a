"""``python -m lipschitz_lightning.bench.report [results_dir=DIR] [out=FILE] [img_dir=DIR]``.

Defaults: in a clone, its ``benchmarks/results`` into its ``docs/benchmarks.md`` (PNGs in
``docs/img``); from an installed package, the same folders below the current one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import OmegaConf

from lipschitz_lightning.bench.report.document import generate
from lipschitz_lightning.configs import config_dir


def _project_root() -> Path:
    """The clone the configs come from (``<clone>/conf``), or the current folder for an installed package."""
    conf = Path(config_dir())
    return conf.parent if conf.parent.name != "lipschitz_lightning" else Path.cwd()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = OmegaConf.from_dotlist(list(sys.argv[1:] if argv is None else argv))
    root = _project_root()
    results = Path(str(args.get("results_dir", root / "benchmarks" / "results")))
    out = Path(str(args.get("out", root / "docs" / "benchmarks.md")))
    img = Path(str(args["img_dir"])) if args.get("img_dir") else None
    if not results.exists():
        sys.stderr.write(f"error: no results in {results} (run `make benchmark SUITE=digits` first)\n")
        return 2
    generate(results, out, img)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
