"""Statistics over records: every number here is a pandas group-by."""

from __future__ import annotations

import pandas as pd

from harness.grading.metrics import ACCEPTED_OUTCOMES, FAILURE_OUTCOMES, OUTCOMES
from harness.grading.verdicts import VERDICTS
from strategies import BANDS, band_of

__all__ = [
    "GROUP",
    "HEADLINE_MEANINGS",
    "by_option",
    "by_subject",
    "coverage",
    "coverage_line",
    "headline",
    "option_values",
    "reproducer_table",
    "summarize",
    "worst_cases",
]

GROUP = ["impl", "quantity", "dtype", "regime"]  # quantity: loss or grad (issue 15)
_NONFINITE_FAILURES = ["spurious_inf", "spurious_nan", "missing_nonfinite"]
_VERDICT_ORDER = ("ok", "inaccurate", "unstable", "ungraded")


def by_subject(records: pd.DataFrame) -> pd.DataFrame:
    """Records with each gradient record's ``impl`` named "IMPL (gradient)": what tables and figures show apart.

    The records themselves keep ``impl`` and ``quantity`` apart (tidy data); this is for
    displays that group by implementation only.
    """
    if "quantity" not in records or not records["quantity"].eq("grad").any():
        return records
    names = records["impl"].astype(str)
    grad = records["quantity"].eq("grad") & ~names.str.endswith(" (gradient)")  # idempotent
    return records.assign(impl=names.where(~grad, names + " (gradient)"))


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
    records = by_subject(records)
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


def coverage(records: pd.DataFrame) -> dict:
    """What a run's cases reached: counts per class-count band (strategies.BANDS) and of wide,
    many-row, non-contiguous (strided regime) and K-dimensional cases. One record per case counts."""
    per_case = records.drop_duplicates("case_id")
    bands = per_case["n_classes"].map(band_of).value_counts()
    return {
        "cases": len(per_case),
        "bands": {name: int(bands.get(name, 0)) for name, _, _ in BANDS},
        "over_4096_classes": int(per_case["n_classes"].gt(4_096).sum()),
        "over_64_rows": int(per_case["n_samples"].gt(64).sum()),
        "max_classes": int(per_case["n_classes"].max()) if len(per_case) else 0,
        "max_rows": int(per_case["n_samples"].max()) if len(per_case) else 0,
        "strided": int(per_case["regime"].eq("strided").sum()),
        "k_dimensional": int(per_case["regime"].eq("layout").sum()),
    }


def coverage_line(records: pd.DataFrame) -> str:
    """One line for a run's output, e.g. 'coverage: 212 of 1400 cases had more than 4,096 classes; ...'."""
    c = coverage(records)
    bands = ", ".join(f"{name}: {n}" for name, n in c["bands"].items())
    return (
        f"coverage: {c['over_4096_classes']} of {c['cases']} cases had more than 4,096 classes "
        f"(up to {c['max_classes']:,}), {c['over_64_rows']} more than 64 samples (up to {c['max_rows']:,}), "
        f"{c['strided']} non-contiguous, {c['k_dimensional']} K-dimensional; cases per class count: {bands}"
    )


def option_values(records: pd.DataFrame) -> pd.DataFrame:
    """One categorical column per option, naming its drawn value's class (issue 14).

    reduction (none, sum, mean); weight (none, weighted); ignored (none, some, all);
    label_smoothing (0, (0, 1), 1); z_loss (0, > 0); softcap (none, capped); targets
    (indices, probabilities). Records without option columns (older reports) get none.
    """

    def column(name, default):
        return records[name] if name in records else pd.Series(default, index=records.index)

    n_ignored, n_samples = column("n_ignored", 0).fillna(0), column("n_samples", 1)
    smoothing, z = column("label_smoothing", 0.0).fillna(0.0), column("z_loss", 0.0).fillna(0.0)
    return pd.DataFrame({
        "reduction": column("reduction", "none"),
        "weight": column("weighted", False).astype(bool).map({True: "weighted", False: "none"}),
        "ignored": pd.Series("some", index=records.index).where(n_ignored > 0, "none").where(
            ~((n_ignored > 0) & (n_ignored >= n_samples)), "all"),
        "label_smoothing": pd.Series("(0, 1)", index=records.index).where(smoothing > 0, "0").where(
            smoothing < 1, "1"),
        "z_loss": pd.Series("> 0", index=records.index).where(z > 0, "0"),
        "softcap": column("softcap", None).notna().map({True: "capped", False: "none"}),
        "targets": column("soft_targets", False).astype(bool).map({True: "probabilities", False: "indices"}),
    })  # fmt: skip


def by_option(records: pd.DataFrame) -> pd.DataFrame:
    """Per (option, value class): records, share of all records, unstable count and rate.

    Only the records of calls that exercised options (a non-empty ``options`` column) count;
    an empty frame when there are none.
    """
    if "options" not in records:
        return pd.DataFrame(columns=["option", "value", "records", "share", "unstable", "unstable_rate"])
    exercised = records[records["options"].notna() & (records["options"].astype(str) != "")]
    if exercised.empty:
        return pd.DataFrame(columns=["option", "value", "records", "share", "unstable", "unstable_rate"])
    values = option_values(exercised).assign(unstable=(exercised["verdict"] == "unstable").to_numpy())
    long = values.melt(id_vars="unstable", var_name="option", value_name="value")
    table = long.groupby(["option", "value"], sort=True).agg(records=("unstable", "size"), unstable=("unstable", "sum"))
    table["share"] = table["records"] / len(exercised)
    table["unstable_rate"] = table["unstable"] / table["records"]
    return table.reset_index()[["option", "value", "records", "share", "unstable", "unstable_rate"]]
