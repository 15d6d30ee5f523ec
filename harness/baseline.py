"""Baselines for regression testing: per-(quantity, dtype, regime) error statistics of a check.

Cells are per quantity (loss, grad: issue 15); a baseline saved before gradients were
graded has only loss cells, and its cells compare with the loss records.

A baseline is only comparable with a check run on the same cases: the same seed,
budget and class limit. Comparison fails a cell when the implementation got
measurably worse: more non-finite failures, or a worst finite error above
``max_ulps * (1 + REL_MARGIN) + ABS_MARGIN_ULPS`` of the baseline's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

__all__ = ["ABS_MARGIN_ULPS", "REL_MARGIN", "BaselineError", "compare", "load", "save", "statistics"]

FORMAT_VERSION = 1
REL_MARGIN = 0.25
ABS_MARGIN_ULPS = 2.0
_NONFINITE = ["spurious_inf", "spurious_nan", "missing_nonfinite", "raised", "bad_output", "timeout",
              "killed_memory", "crashed", "mutated_input", "nondeterministic"]  # fmt: skip
_RUN_KEYS = ("seed", "examples", "max_classes", "profile")


class BaselineError(ValueError):
    """A baseline file that is missing, corrupt or not comparable; the message is one line."""


def statistics(records: pd.DataFrame) -> pd.DataFrame:
    """Per (quantity, dtype, regime): cases, worst finite ULPs, non-finite failures, unstable cases."""
    quantity = records["quantity"] if "quantity" in records else pd.Series("loss", index=records.index)
    frame = records.assign(
        quantity=quantity,
        finite_ulps=records["ulps"].where(records["outcome"].isin(["exact", "finite_error"]), 0.0),
        nonfinite=records["outcome"].isin(_NONFINITE),
        unstable=records["verdict"].eq("unstable"),
    )
    return (
        frame.groupby(["quantity", "dtype", "regime"], sort=True)
        .agg(
            cases=("case_id", "size"),
            max_ulps=("finite_ulps", "max"),
            nonfinite=("nonfinite", "sum"),
            unstable=("unstable", "sum"),
        )
        .reset_index()
    )


def save(path: Path, records: pd.DataFrame, run: dict) -> None:
    data = {
        "format": FORMAT_VERSION,
        "implementation": run["implementation"],
        **{key: run[key] for key in _RUN_KEYS},
        "cells": statistics(records).to_dict(orient="records"),
    }
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def load(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BaselineError(f"baseline {path} does not exist")
    try:
        data = json.loads(path.read_text())
        cells = pd.DataFrame(data["cells"])
        if data.get("format") != FORMAT_VERSION:
            raise BaselineError(f"baseline {path} has format {data.get('format')!r}, expected {FORMAT_VERSION}")
        missing = {"dtype", "regime", "max_ulps", "nonfinite"} - set(cells.columns)
        if missing or any(key not in data for key in _RUN_KEYS):
            raise KeyError(sorted(missing) or "run settings")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, BaselineError):
            raise
        raise BaselineError(f"baseline {path} is corrupt: {type(exc).__name__}: {exc}") from None
    return data


def compare(baseline: dict, records: pd.DataFrame, run: dict) -> pd.DataFrame:
    """Per cell present in both: baseline and current statistics and whether it regressed."""
    differing = [f"{k} {baseline[k]!r} vs {run[k]!r}" for k in _RUN_KEYS if baseline[k] != run[k]]
    if differing:
        raise BaselineError(f"baseline was recorded on other cases ({', '.join(differing)}); save it again")
    current = statistics(records)
    cells = pd.DataFrame(baseline["cells"])
    if "quantity" not in cells:
        cells["quantity"] = "loss"
    joined = cells.merge(current, on=["quantity", "dtype", "regime"], suffixes=("_baseline", ""))
    if joined.empty:
        raise BaselineError("baseline shares no (quantity, dtype, regime) cell with this check")
    allowed = joined["max_ulps_baseline"] * (1 + REL_MARGIN) + ABS_MARGIN_ULPS
    joined["regressed"] = (joined["max_ulps"] > allowed) | (joined["nonfinite"] > joined["nonfinite_baseline"])
    return joined
