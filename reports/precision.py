"""The precision table of `audit --precision`: per (method, dtype, regime), how many results
are correctly rounded, the ULP distribution, and the error against the Blanchard–Higham–Higham
bound of the shifted algorithm (the stability allowance without its safety factor)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.formats import FORMATS
from harness.grading.metrics import ACCEPTED_OUTCOMES
from harness.grading.verdicts import SAFETY
from reports.markdown import markdown_table

__all__ = [
    "PRECISION_COLUMNS",
    "PRECISION_MEANINGS",
    "findings",
    "precision_markdown",
    "precision_table",
    "precision_totals",
    "ratios",
]

PRECISION_COLUMNS = ["impl", "dtype", "regime", "cases", "correctly_rounded", "ulps_0", "ulps_1", "ulps_2",
                     "ulps_3", "ulps_gt3", "accepted_nonfinite", "failed", "ungraded", "max_ulps",
                     "max_error_over_bound", "above_bound"]  # fmt: skip
PRECISION_MEANINGS = {
    "impl": "the way of computing the loss (audit --precision's methods)",
    "dtype": "the logits' dtype",
    "regime": "the kind of logits drawn",
    "cases": "cases drawn",
    "correctly_rounded": "share equal to the correctly rounded loss",
    "ulps_0": "share of finite results 0 ULPs from the correctly rounded loss",
    "ulps_1": "share of finite results 1 ULP off",
    "ulps_2": "share of finite results 2 ULPs off",
    "ulps_3": "share of finite results 3 ULPs off",
    "ulps_gt3": "share of finite results more than 3 ULPs off",
    "accepted_nonfinite": "share of inf/NaN results the verdicts accept (a +inf logit, or a mean whose rows overflow)",
    "failed": "share of spurious or missing inf/NaN, or failed calls",
    "ungraded": "share the oracle could not certify",
    "max_ulps": "largest ULPs of a finite result",
    "max_error_over_bound": "worst measured error over the Blanchard–Higham–Higham bound (inf: a failure)",
    "above_bound": "results whose error exceeds the bound: findings",
}
_SHARES = ["correctly_rounded", "ulps_0", "ulps_1", "ulps_2", "ulps_3", "ulps_gt3", "accepted_nonfinite", "failed",
           "ungraded"]  # fmt: skip


def _with_buckets(records: pd.DataFrame) -> pd.DataFrame:
    """Per record: its ULP bucket (finite results only), accepted/failed/ungraded flags, error over the bound."""
    finite = records["outcome"].isin(["exact", "finite_error"])
    ulps = records["ulps"].where(finite)  # NaN outside finite results: in no ULP bucket
    accepted = records["outcome"].isin(ACCEPTED_OUTCOMES)
    ungraded = records["outcome"].eq("uncertified")
    bound = records["allowance"] / SAFETY
    over = (records["abs_error"] / bound).where(records["abs_error"] > 0, 0.0)
    # non-finite answers the verdict accepts (NaN where a +inf logit makes the limit +inf) are no finding
    over = over.where(~accepted, 0.0)
    return records.assign(
        correctly_rounded=records["outcome"].eq("exact"),
        ulps_0=ulps.eq(0), ulps_1=ulps.eq(1), ulps_2=ulps.eq(2), ulps_3=ulps.eq(3), ulps_gt3=ulps.gt(3),
        accepted_nonfinite=accepted, failed=~(finite | accepted | ungraded), ungraded=ungraded,
        finite_ulps=ulps, error_over_bound=over.replace(np.nan, np.inf),
    )  # fmt: skip


def _aggregate(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return frame.groupby(by, sort=True).agg(
        cases=("case_id", "size"),
        **{share: (share, "mean") for share in _SHARES},
        max_ulps=("finite_ulps", "max"),
        max_error_over_bound=("error_over_bound", "max"),
        above_bound=("error_over_bound", lambda r: int((r > 1).sum())),
    )


def precision_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per (method, dtype, regime): shares correctly rounded, per ULP bucket (finite results), accepted inf/NaN,
    failed and ungraded (the buckets sum to 1); worst finite ULPs; worst error / bound and the count above it."""
    return _aggregate(_with_buckets(records), ["impl", "dtype", "regime"]).reset_index()[PRECISION_COLUMNS]


def precision_totals(records: pd.DataFrame) -> pd.DataFrame:
    """``precision_table`` over all regimes: one row per (method, dtype), in the records' method order."""
    table = _aggregate(_with_buckets(records), ["impl", "dtype"]).reset_index()
    order = {name: k for k, name in enumerate(dict.fromkeys(records["impl"]))}
    dtypes = {name: k for k, name in enumerate(FORMATS)}
    table = table.sort_values(["impl", "dtype"], key=lambda c: c.map(order if c.name == "impl" else dtypes))
    return table.reset_index(drop=True)[[c for c in PRECISION_COLUMNS if c != "regime"]]


def ratios(records: pd.DataFrame) -> pd.DataFrame:
    """Every record with its ``error_over_bound`` (0 for an accepted inf/NaN, inf for a failure)."""
    return _with_buckets(records)


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
        "Shares of results per ULP distance from the correctly rounded loss (finite results; accepted inf/NaN, "
        "failures and ungraded results have columns of their own, and all shares sum to 1); error / bound is the "
        "measured error over the Blanchard–Higham–Higham bound of the shifted algorithm.", "",
        markdown_table(table), "",
    ]  # fmt: skip
    if above.empty:
        lines.append("No measured error exceeds the bound.")
    else:
        lines += [f"## Findings: {len(above)} results above the bound", "", markdown_table(above.head(20)), "",
                  f"Replay any of them: python -m harness replay {report_dir} CASE_ID"]  # fmt: skip
    return "\n".join(lines) + "\n"
