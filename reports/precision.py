"""The precision table of `audit --precision`: per (method, dtype, regime), how many results
are correctly rounded, the ULP distribution, and the error against the Blanchard–Higham–Higham
bound of the shifted algorithm (the stability allowance without its safety factor)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.grading.verdicts import SAFETY
from reports.markdown import markdown_table

__all__ = ["PRECISION_COLUMNS", "findings", "precision_markdown", "precision_table"]

PRECISION_COLUMNS = ["impl", "dtype", "regime", "cases", "correctly_rounded", "ulps_0", "ulps_1", "ulps_2",
                     "ulps_3", "ulps_gt3", "max_ulps", "max_error_over_bound", "above_bound"]  # fmt: skip


def _with_buckets(records: pd.DataFrame) -> pd.DataFrame:
    ulps = records["ulps"].fillna(np.inf)  # a failed call counts as far off
    bound = records["allowance"] / SAFETY
    over = (records["abs_error"] / bound).where(records["abs_error"] > 0, 0.0)
    # non-finite answers the verdict accepts (NaN where a +inf logit makes the limit +inf) are no finding
    accepted = records["verdict"].eq("ok") & ~records["outcome"].isin(["exact", "finite_error"])
    over = over.where(~accepted, 0.0)
    return records.assign(
        correctly_rounded=records["outcome"].eq("exact"),
        ulps_0=ulps.eq(0), ulps_1=ulps.eq(1), ulps_2=ulps.eq(2), ulps_3=ulps.eq(3), ulps_gt3=ulps.gt(3),
        error_over_bound=over.replace(np.nan, np.inf),
    )  # fmt: skip


def precision_table(records: pd.DataFrame) -> pd.DataFrame:
    """Shares of correctly rounded results and of each ULP bucket, worst ULPs, worst error / bound."""
    frame = _with_buckets(records)
    table = frame.groupby(["impl", "dtype", "regime"], sort=True).agg(
        cases=("case_id", "size"),
        correctly_rounded=("correctly_rounded", "mean"),
        ulps_0=("ulps_0", "mean"), ulps_1=("ulps_1", "mean"), ulps_2=("ulps_2", "mean"), ulps_3=("ulps_3", "mean"),
        ulps_gt3=("ulps_gt3", "mean"),
        max_ulps=("ulps", "max"),
        max_error_over_bound=("error_over_bound", "max"),
        above_bound=("error_over_bound", lambda r: int((r > 1).sum())),
    )  # fmt: skip
    return table.reset_index()[PRECISION_COLUMNS]


def findings(records: pd.DataFrame) -> pd.DataFrame:
    """Every record whose measured error exceeds the bound, worst first."""
    frame = _with_buckets(records)
    above = frame[frame["error_over_bound"] > 1]
    columns = ["impl", "dtype", "regime", "case_id", "n_classes", "output", "exact", "ulps", "error_over_bound"]
    return above.sort_values("error_over_bound", ascending=False)[columns]


def precision_markdown(records: pd.DataFrame, report_dir: str) -> str:
    """precision.md: the table, then every finding above the bound (the first 20), with how to replay them."""
    table = precision_table(records)
    above = findings(records)
    lines = [
        "# Precision audit", "",
        "Shares of results per ULP distance from the correctly rounded loss; error / bound is the measured "
        "error over the Blanchard–Higham–Higham bound of the shifted algorithm.", "",
        markdown_table(table), "",
    ]  # fmt: skip
    if above.empty:
        lines.append("No measured error exceeds the bound.")
    else:
        lines += [f"## Findings: {len(above)} results above the bound", "", markdown_table(above.head(20)), "",
                  f"Replay any of them: python -m harness replay {report_dir} CASE_ID"]  # fmt: skip
    return "\n".join(lines) + "\n"
