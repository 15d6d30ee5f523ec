"""Statistics over records: every number here is a pandas group-by."""

from __future__ import annotations

import pandas as pd

from harness.grading.metrics import ACCEPTED_OUTCOMES, FAILURE_OUTCOMES, OUTCOMES
from harness.grading.verdicts import VERDICTS

__all__ = ["GROUP", "HEADLINE_MEANINGS", "headline", "reproducer_table", "summarize", "worst_cases"]

GROUP = ["impl", "dtype", "regime"]
_NONFINITE_FAILURES = ["spurious_inf", "spurious_nan", "missing_nonfinite"]
_VERDICT_ORDER = ("ok", "inaccurate", "unstable", "ungraded")


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
    """Per group: count, ULP statistics of the finite comparisons, max relative error and error over
    the allowance, a count per outcome and per verdict, and the worst case's id.

    ULP statistics count only finite results (outcomes exact and finite_error): an inf or
    NaN is counted by its outcome, never as a number of ULPs (NaN when a group has none).
    """
    finite = records["ulps"].where(records["outcome"].isin(["exact", "finite_error"]))
    grouped = records.assign(finite_ulps=finite).groupby(by, sort=True)
    stats = grouped.agg(
        cases=("case_id", "size"),
        max_ulps=("finite_ulps", "max"),
        mean_ulps=("finite_ulps", "mean"),
        median_ulps=("finite_ulps", "median"),
        p99_ulps=("finite_ulps", _p99),
        max_rel_error=("rel_error", "max"),
        max_allowance_ratio=("allowance_ratio", "max"),
    )
    keys = [records[c] for c in by]
    unknown = sorted(set(records["outcome"]) - set(OUTCOMES))  # failures added later still get a column
    outcomes = pd.crosstab(keys, records["outcome"]).reindex(columns=[*OUTCOMES, *unknown], fill_value=0)
    verdicts = pd.crosstab(keys, records["verdict"]).reindex(columns=list(VERDICTS), fill_value=0)
    worst = worst_cases(records, by)["case_id"].rename("worst_case")
    return stats.join(outcomes).join(verdicts).join(worst).reset_index()


def headline(records: pd.DataFrame) -> pd.DataFrame:
    """Per (impl, dtype): verdict counts, exact share, non-finite results, ULPs and the worst error.

    Columns (``HEADLINE_MEANINGS`` says each in words): cases; ok, inaccurate, unstable,
    ungraded (verdict counts); exact_share; accepted_nonfinite (inf/NaN the verdicts
    accept); nonfinite_failures and other_failures (failure outcomes); median_ulps and
    max_finite_ulps (finite comparisons only); max_allowance_ratio (the worst error over
    the stability allowance, inf for a non-finite failure).
    """
    flags = records.assign(
        exact=records["outcome"].eq("exact"),
        accepted_nonfinite=records["outcome"].isin(ACCEPTED_OUTCOMES),
        nonfinite_failures=records["outcome"].isin(_NONFINITE_FAILURES),
        other_failures=records["outcome"].isin(FAILURE_OUTCOMES - set(_NONFINITE_FAILURES))
        | ~records["outcome"].isin(OUTCOMES),
        finite_ulps=records["ulps"].where(records["outcome"].isin(["exact", "finite_error"])),
        **{verdict: records["verdict"].eq(verdict) for verdict in _VERDICT_ORDER},
    )
    table = flags.groupby(["impl", "dtype"], sort=True).agg(
        cases=("case_id", "size"),
        **{verdict: (verdict, "sum") for verdict in _VERDICT_ORDER},
        exact_share=("exact", "mean"),
        accepted_nonfinite=("accepted_nonfinite", "sum"),
        nonfinite_failures=("nonfinite_failures", "sum"),
        other_failures=("other_failures", "sum"),
        median_ulps=("finite_ulps", "median"),
        max_finite_ulps=("finite_ulps", "max"),
        max_allowance_ratio=("allowance_ratio", "max"),
    )
    return table.reset_index()


HEADLINE_MEANINGS = {
    "impl": "implementation",
    "dtype": "the logits' dtype (the loss is graded in it)",
    "cases": "cases drawn for this implementation and dtype",
    "ok": "verdict ok: exact, within the stability allowance and --max-ulps, or an accepted inf/NaN",
    "inaccurate": "verdict inaccurate: within the allowance but more than --max-ulps ULPs off (fails with --strict)",
    "unstable": "verdict unstable: a spurious or missing inf/NaN, an error beyond the allowance, or a failed call",
    "ungraded": "verdict ungraded: the oracle could not certify the rounding",
    "exact_share": "share of cases equal to the correctly rounded loss",
    "accepted_nonfinite": "inf/NaN the verdicts accept (a +inf logit, or a mean whose rows overflow)",
    "nonfinite_failures": "spurious inf, spurious NaN, or a finite value where the loss is inf/NaN",
    "other_failures": "the call raised, timed out, crashed, ran out of memory, returned a bad value, wrote an input "
    "or was nondeterministic",
    "median_ulps": "median ULPs from the correctly rounded loss, finite results only",
    "max_finite_ulps": "largest ULPs from the correctly rounded loss, finite results only",
    "max_allowance_ratio": "worst error over the stability allowance (above 1: unstable; inf: a non-finite failure)",
}


def reproducer_table(reproducers: pd.DataFrame, report_dir: str) -> pd.DataFrame:
    """The reproducers to show: where each failure was shrunk to, and the command that replays it."""
    shown = reproducers.assign(
        replay=lambda f: f["reproducer"].map(
            lambda cid: f"python -m harness replay {report_dir} {cid}" if isinstance(cid, str) and cid else "–"
        )
    )
    return shown[["impl", "dtype", "regime", "outcome", "status", "shape", "ulps", "worst_case", "replay"]]
