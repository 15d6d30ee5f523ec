"""How often the default check budget flags each bug class, across seeds.

    python scripts/catch_rates.py --seeds 5

Runs every test implementation (tests/implementations) over the default (dev) budget's
cases once per seed and prints, per implementation and dtype, the seeds that flagged it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.calling.loading import load_implementation
from harness.formats import FORMATS
from harness.profiles import resolve_profile
from harness.search import search
from strategies import REGIMES
from tests.implementations import mutants

SOUND = ["torch_ce", "upcast_float32", "cross_entropy_from_scratch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    specs = [f"tests.implementations.mutants:{n}" for n in mutants.BUG_CLASSES]
    specs += [f"tests.implementations.sound:{n}" for n in SOUND]
    implementations = [load_implementation(s) for s in specs]
    flagged = []
    for seed in range(args.seeds):
        found = search(
            list(FORMATS.values()), list(REGIMES), implementations, profile=resolve_profile("dev"), seed=seed
        )
        records = pd.DataFrame(found.records)
        records["impl"] = records["impl"].str.rsplit(":", n=1).str[-1]
        per = records.assign(unstable=records["verdict"].eq("unstable")).groupby(["impl", "dtype"])["unstable"].any()
        flagged.append(per.rename(seed))
        print(f"seed {seed}: {found.seconds:.0f} s", file=sys.stderr, flush=True)
    table = pd.concat(flagged, axis=1).sum(axis=1).unstack("dtype").astype(int)
    print(f"seeds (of {args.seeds}) on which each implementation was flagged, per dtype:")
    print(table.to_string())


if __name__ == "__main__":
    main()
