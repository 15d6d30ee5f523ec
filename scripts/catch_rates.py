"""How often the default check budget flags each bug class, across seeds.

    python scripts/catch_rates.py --seeds 5 [--csv rates.csv]
    python scripts/catch_rates.py --gradients --seeds 5    # the gradient bug classes (issue 15)

Runs every test implementation (tests/implementations: the mutants, one per bug class;
the tiled online-softmax kernels at tile sizes 1,024 to 8,192; the sound ones) over the
default (dev) budget's cases once per seed and prints, per implementation and dtype, the
number of seeds that flagged it (a case graded unstable). Sound implementations must
stay at 0. The cases are check's: the same per-cell seeds; check stops a cell at its
first failure, so what it flags is what this flags.

With ``--gradients`` the implementations are tests/implementations/gradients.py's (one
per gradient bug class, each with a right forward, and the two sound backwards) and only
their gradients are graded (check --grad-only), with the upstream gradients check draws.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.calling.loading import load_implementation
from harness.formats import FORMATS
from harness.profiles import resolve_profile
from harness.search import search
from strategies import REGIMES
from tests.implementations import gradients, mutants, tiled

SOUND = ["torch_ce", "upcast_float32", "cross_entropy_from_scratch"]


def implementation_specs(gradient: bool = False) -> list[str]:
    if gradient:
        names = [*gradients.BUG_CLASSES, *gradients.SOUND]
        return [f"tests.implementations.gradients:{n}" for n in names]
    specs = [f"tests.implementations.mutants:{n}" for n in mutants.BUG_CLASSES]
    specs += [f"tests.implementations.tiled:{v}_{t}" for v in tiled.VARIANTS for t in tiled.TILE_SIZES]
    return specs + [f"tests.implementations.sound:{n}" for n in SOUND]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--profile", default="dev")
    parser.add_argument("--csv", type=Path, help="also write the table here")
    parser.add_argument("--gradients", action="store_true", help="the gradient bug classes, graded on the gradient")
    args = parser.parse_args()
    specs = implementation_specs(args.gradients)
    implementations = [load_implementation(s) for s in specs]
    quantities = ("grad",) if args.gradients else ("loss",)
    regimes = list(REGIMES)
    flagged = []
    for seed in range(args.seeds):
        start = time.perf_counter()
        found = search(list(FORMATS.values()), regimes, implementations, profile=resolve_profile(args.profile),
                       seed=seed, progress=False, quantities=quantities)  # fmt: skip
        records = pd.DataFrame(found.records)
        records["impl"] = records["impl"].str.rsplit(":", n=1).str[-1]
        per = records.assign(unstable=records["verdict"].eq("unstable")).groupby(["impl", "dtype"])["unstable"].any()
        flagged.append(per.rename(seed))
        for error in found.errors:
            print(f"seed {seed}: TOOL ERROR {error}", file=sys.stderr, flush=True)
        big = records.drop_duplicates("case_id")["n_classes"].gt(4096).sum()
        print(f"seed {seed}: {time.perf_counter() - start:.0f} s, {records['case_id'].nunique()} cases, "
              f"{big} with more than 4,096 classes", file=sys.stderr, flush=True)  # fmt: skip
    table = pd.concat(flagged, axis=1).fillna(False).sum(axis=1).unstack("dtype").fillna(0).astype(int)
    order = [s.rsplit(":", 1)[-1] for s in specs]
    table = table.reindex([name for name in order if name in table.index])
    print(f"seeds (of {args.seeds}) on which each implementation was flagged, per dtype:")
    print(table.to_string())
    if args.csv:
        table.to_csv(args.csv)


if __name__ == "__main__":
    main()
