"""Statistics over records: every number here is a pandas group-by."""

from __future__ import annotations

import pandas as pd

from harness.grading.metrics import FAILURE_OUTCOMES, OUTCOMES
from harness.grading.verdicts import VERDICTS

__all__ = ["GROUP", "headline", "reproducer_table", "summarize", "worst_cases"]

GROUP = ["impl", "dtype", "regime"]
_NONFINITE_FAILURES = ["spurious_inf", "spurious_nan", "missing_nonfinite"]


def _with_severity(records: pd.DataFrame) -> pd.DataFrame:
    return records.assign(
        verdict_rank=records["verdict"].map({name: rank for rank, name in enumerate(VERDICTS)}),
        severity=records["outcome"].map({name: rank for rank, name in enumerate(OUTCOMES)}),
        ulps_rank=records["ulps"].fillna(float("inf")),
    )


def worst_cases(records: pd.DataFrame, by: list[str] = GROUP) -> pd.DataFrame:
    """The single worst record per group: worst verdict, then outcome severity, then most ULPs."""
    order = ["verdict_rank", "severity", "ulps_rank", "case_id"]
    ranked = _with_severity(records).sort_values(order, kind="stable")
    return ranked.groupby(by, sort=True).tail(1).set_index(by).sort_index()


def _p99(values: pd.Series) -> float:
    return values.quantile(0.99)


def summarize(records: pd.DataFrame, by: list[str] = GROUP) -> pd.DataFrame:
    """Per group: count, ULP statistics, max relative error, outcome counts, worst case id."""
    grouped = records.groupby(by, sort=True)
    stats = grouped.agg(
        cases=("case_id", "size"),
        max_ulps=("ulps", "max"),
        mean_ulps=("ulps", "mean"),
        median_ulps=("ulps", "median"),
        p99_ulps=("ulps", _p99),
        max_rel_error=("rel_error", "max"),
        max_allowance_ratio=("allowance_ratio", "max"),
    )
    keys = [records[c] for c in by]
    outcomes = pd.crosstab(keys, records["outcome"]).reindex(columns=list(OUTCOMES), fill_value=0)
    verdicts = pd.crosstab(keys, records["verdict"]).reindex(columns=list(VERDICTS), fill_value=0)
    worst = worst_cases(records, by)["case_id"].rename("worst_case")
    return stats.join(outcomes).join(verdicts).join(worst).reset_index()


def headline(records: pd.DataFrame) -> pd.DataFrame:
    """Per (impl, dtype): share exact, non-finite and other failures, median and max ULPs, unstable count."""
    flags = records.assign(
        exact=records["outcome"].eq("exact"),
        nonfinite_failures=records["outcome"].isin(_NONFINITE_FAILURES),
        other_failures=records["outcome"].isin(FAILURE_OUTCOMES - set(_NONFINITE_FAILURES)),
        finite_ulps=records["ulps"].where(records["outcome"].isin(["exact", "finite_error"])),
        unstable=records["verdict"].eq("unstable"),
    )
    table = flags.groupby(["impl", "dtype"], sort=True).agg(
        cases=("case_id", "size"),
        exact_share=("exact", "mean"),
        nonfinite_failures=("nonfinite_failures", "sum"),
        other_failures=("other_failures", "sum"),
        median_ulps=("finite_ulps", "median"),
        max_finite_ulps=("finite_ulps", "max"),
        unstable=("unstable", "sum"),
    )
    return table.reset_index()


def reproducer_table(reproducers: pd.DataFrame, report_dir: str) -> pd.DataFrame:
    """The reproducers to show: where each failure was shrunk to, and the command that replays it."""
    shown = reproducers.assign(
        replay=lambda f: f["reproducer"].map(
            lambda cid: f"python -m harness replay {report_dir} {cid}" if isinstance(cid, str) and cid else "–"
        )
    )
    return shown[["impl", "dtype", "regime", "outcome", "status", "shape", "ulps", "worst_case", "replay"]]
