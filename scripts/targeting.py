"""Does targeted search find larger errors than plain generation on the same budget?

    python scripts/targeting.py --seeds 3 --examples 60 [--dtype D]... [--impl IMPL]...

For each seed, every implementation below runs over the same (dtype, regime) cells twice
with the same per-cell seeds: once with Hypothesis's target phase climbing
log2(1 + error / allowance) (what audits and checks do), once with plain generation.
Both runs draw identical cases until the target phase starts (after half the budget).
Prints, per implementation, in how many (dtype, regime, seed) cells the targeted run's
worst error was larger, equal or smaller, and the median gain in bits of error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.calling.loading import load_implementation
from harness.formats import FORMATS
from harness.profiles import resolve_profile
from harness.search import search
from strategies import REGIMES

SPECS = [
    "stable", "naive", "torch",
    "tests.implementations.mutants:low_precision_running_sum",
    "tests.implementations.mutants:rounded_lse_then_subtract",
    "tests.implementations.mutants:epsilon_in_log",
    "tests.implementations.mutants:shift_by_mean",
    "tests.implementations.mutants:low_precision_tile_sums",
]  # fmt: skip


def worst_per_cell(records: pd.DataFrame) -> pd.DataFrame:
    """Per (impl, dtype, regime): the largest error over the allowance, in bits, and the largest finite ULPs."""
    scored = records.assign(
        score=np.log2(1.0 + records["allowance_ratio"].astype(float).clip(upper=1e300).fillna(0.0)),
        finite_ulps=records["ulps"].where(np.isfinite(records["output"].astype(float)), np.nan),
    )
    return scored.groupby(["impl", "dtype", "regime"])[["score", "finite_ulps"]].max()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--examples", type=int, default=60)
    parser.add_argument("--dtype", action="append", choices=list(FORMATS), help="dtypes (default all four)")
    parser.add_argument("--impl", action="append", help="IMPL specs (default: the list at the top of this file)")
    args = parser.parse_args()
    implementations = [load_implementation(s) for s in args.impl or SPECS]
    formats = [FORMATS[d] for d in args.dtype or FORMATS]
    regimes = [r for r in REGIMES if r not in ("large_vocab", "layout")]  # the row regimes; large rows cost most
    runs = []
    for seed in range(args.seeds):
        for targeted in (True, False):
            found = search(
                formats, regimes, implementations, profile=resolve_profile("dev"), seed=seed,
                examples=args.examples, targeted=targeted, progress=False, self_check=0,
            )  # fmt: skip
            worst = worst_per_cell(pd.DataFrame(found.records)).assign(seed=seed, targeted=targeted)
            runs.append(worst.reset_index())
            print(f"seed {seed} targeted={targeted}: {found.seconds:.0f} s", file=sys.stderr, flush=True)
    table = pd.concat(runs, ignore_index=True)
    table["impl"] = table["impl"].str.rsplit(":", n=1).str[-1]
    paired = table.pivot_table(index=["impl", "dtype", "regime", "seed"], columns="targeted", values="score")
    gain = paired[True] - paired[False]
    summary = pd.DataFrame(
        {
            "cells": gain.groupby("impl").size(),
            "targeted_larger": (gain > 1e-9).groupby("impl").sum(),
            "equal": (gain.abs() <= 1e-9).groupby("impl").sum(),
            "plain_larger": (gain < -1e-9).groupby("impl").sum(),
            "median_gain_bits": gain.groupby("impl").median(),
            "mean_gain_bits": gain.groupby("impl").mean(),
        }
    )
    total = summary[["cells", "targeted_larger", "equal", "plain_larger"]].sum()
    print(f"{args.examples} examples per (dtype, regime) cell, seeds 0-{args.seeds - 1}; score = "
          "log2(1 + error / allowance), the worst per cell; gain = targeted - plain, in those units")  # fmt: skip
    print(summary.to_string(float_format=lambda v: f"{v:.3g}"))
    print(f"all: {int(total['targeted_larger'])} cells larger with targeting, {int(total['equal'])} equal, "
          f"{int(total['plain_larger'])} larger without, of {int(total['cells'])}")  # fmt: skip


if __name__ == "__main__":
    main()
