"""Audit cost of one row against class count, oracle tier split.

    python scripts/scaling.py

Runs one random row per (dtype, class count) through harness.runner.run_case with the
three built-ins and prints the seconds per row, the oracle's share and the deciding tier.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.calling.loading import REGISTRY
from harness.runner import run_case
from strategies import Case


def main() -> None:
    rows = []
    for dtype in (torch.float32, torch.float64):
        for n in (4096, 16384, 65536, 131072, 262144):
            x = (torch.randn(1, n, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
            case = Case(x, torch.tensor([7]), "large_vocab")
            start = time.perf_counter()
            records = run_case(case, list(REGISTRY))
            rows.append({
                "dtype": str(dtype).removeprefix("torch."), "classes": n,
                "seconds_per_row": round(time.perf_counter() - start, 3),
                "oracle_seconds": round(records[0]["oracle_seconds"], 3), "tier": records[0]["oracle_method"],
            })  # fmt: skip
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
