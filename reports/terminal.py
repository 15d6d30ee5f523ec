"""What the command line prints: short by default, today's full tables with ``--verbose``.

``harness/cli.py`` only prints what these functions return (issue 17):

- ``check_text``: on a pass, one line per dtype (verdict counts, worst error, time) and
  the report's path; on a failure, the counterexamples first (the first few in full),
  then where the unstable and inaccurate cases were (dtype, regime, count, worst) and a
  hint for ``--verbose``.
- ``audit_text``: the headline table (implementation × dtype: verdict counts and worst
  error), the precision headline for ``--precision``, and the report's path; under 60
  lines for the built-in runs. ``--verbose`` prints summary.md (and precision.md).
- ``demo_text``: the thresholds table and the dominant-logit finding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.formats import FORMATS
from reports.precision import precision_totals
from reports.stats import by_option, coverage_line, headline

__all__ = ["FULL_COUNTEREXAMPLES", "MAX_CELLS", "audit_text", "check_text", "demo_text"]

FULL_COUNTEREXAMPLES = 3  # counterexamples printed in full by default; --verbose prints all
MAX_CELLS = 15  # rows of the "where" table by default


def _number(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "inf"
    if float(value).is_integer() and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.3g}"


def _ulps(value: float) -> str:
    return f"{_number(value)} ULP" + ("" if value == 1 else "s")


def _text_table(frame: pd.DataFrame, indent: str = "  ") -> str:
    """Columns right-aligned except the first text ones, headers as given; numbers already formatted."""
    text = frame.astype(str)
    widths = {c: max(len(str(c)), *(len(v) for v in text[c])) if len(text) else len(str(c)) for c in text.columns}
    left = {
        c
        for c in text.columns
        if not pd.api.types.is_numeric_dtype(frame[c]) and not text[c].str.match(r"^[\d.%–-]|^inf$").all()
    }

    def line(values: Sequence[str]) -> str:
        cells = [v.ljust(widths[c]) if c in left else v.rjust(widths[c]) for c, v in zip(text.columns, values)]
        return (indent + "  ".join(cells)).rstrip()

    return "\n".join([line([str(c) for c in text.columns]), *(line(list(row)) for row in text.itertuples(index=False))])


def _dtype_order(frame: pd.DataFrame, impl_order: Sequence[str] | None = None) -> pd.DataFrame:
    order = {name: k for k, name in enumerate(FORMATS)}
    keys = ["dtype"] if impl_order is None else ["impl", "dtype"]
    impls = {name: k for k, name in enumerate(impl_order or [])}
    return frame.sort_values(keys, key=lambda c: c.map(order if c.name == "dtype" else impls), kind="stable")


def _worst(rows: pd.DataFrame) -> str:
    """The worst result of some records, in words: a failure's outcome, or ULPs and error over the allowance."""
    bad = rows[rows["verdict"].eq("unstable") & ~rows["outcome"].isin(["finite_error"])]
    if len(bad):
        top = bad["outcome"].value_counts().index[0]
        return top.replace("_", " ")
    finite = rows[rows["outcome"].isin(["exact", "finite_error"])]
    if finite.empty:
        return "–"
    # the most ULPs and the largest error over the allowance, each over all finite results
    return f"{_ulps(finite['ulps'].max())}, {_number(finite['allowance_ratio'].max())} × allowance"


def _seconds(records: pd.DataFrame) -> float:
    """Seconds in the implementation's calls and the oracle, summed over cases (a case's records share them)."""
    once = records[["case_id", "impl_seconds", "oracle_seconds"]].fillna(0).groupby("case_id").max()
    return float(once["impl_seconds"].sum() + once["oracle_seconds"].sum())


def _per_dtype_lines(records: pd.DataFrame) -> list[str]:
    rows = []
    grads = "quantity" in records and records["quantity"].eq("grad").any()
    keys = ["dtype", "quantity"] if grads else ["dtype"]
    for key, mine in _dtype_order(records).groupby(keys, sort=False):
        dtype = f"{key[0]} {'gradient' if key[1] == 'grad' else 'loss'}" if grads else key[0]
        counts = mine["verdict"].value_counts()
        verdicts = ", ".join(
            f"{int(counts.get(v, 0))} {v}"
            for v in ("ok", "inaccurate", "unstable", "ungraded")
            if v != "ungraded" or counts.get(v, 0)
        )
        rows.append(
            {
                "dtype": dtype,
                "cases": f"{len(mine)} cases:",
                "verdicts": verdicts,
                "worst": f"worst {_worst(mine)}",
                "time": f"{_seconds(mine):.1f} s",
            }
        )
    frame = pd.DataFrame(rows)
    width = {c: frame[c].str.len().max() for c in frame.columns}
    return [
        f"  {r['dtype']:<{width['dtype']}}  {r['cases']:>{width['cases']}} {r['verdicts']:<{width['verdicts']}}"
        f" · {r['worst']:<{width['worst']}} · {r['time']:>{width['time']}}"
        for r in rows
    ]


def _where(records: pd.DataFrame, limit: int | None) -> list[str]:
    """Per failing or inaccurate (dtype, regime): counts and the worst result."""
    flagged = records[records["verdict"].isin(["unstable", "inaccurate"])]
    if flagged.empty:
        return []
    rows = []
    quantity = flagged["quantity"] if "quantity" in flagged else pd.Series("loss", index=flagged.index)
    flagged = flagged.assign(quantity=quantity.map({"grad": "gradient"}).fillna(quantity))
    for (dtype, regime, what), cell in flagged.groupby(["dtype", "regime", "quantity"], sort=False):
        rows.append(
            {
                "dtype": dtype,
                "regime": regime,
                "quantity": what,
                "unstable": int(cell["verdict"].eq("unstable").sum()),
                "inaccurate": int(cell["verdict"].eq("inaccurate").sum()),
                "worst": _worst(cell),
            }
        )
    table = _dtype_order(pd.DataFrame(rows))
    table = table.sort_values(["unstable", "inaccurate"], ascending=False, kind="stable")
    shown = table if limit is None else table.head(limit)
    lines = [
        "Where the unstable and inaccurate cases are (count per dtype, regime and quantity, and the worst):",
        _text_table(shown),
    ]
    if len(shown) < len(table):
        lines.append(f"  … and {len(table) - len(shown)} more cells (--verbose lists them all; summary.md too)")
    return lines


def _option_lines(records: pd.DataFrame) -> list[str]:
    """Where option values explain failures: each (option, value) whose unstable rate stands out."""
    table = by_option(records)
    if table.empty or not table["unstable"].any():
        return []
    overall = table.groupby("option")["unstable"].sum().max() / table.groupby("option")["records"].sum().max()
    telling = table[(table["unstable"] > 0) & (table["unstable_rate"] >= 2 * overall)]
    if telling.empty:
        return []
    parts = [f"{r.option} {r.value}: {int(r.unstable)} of {int(r.records)}" for r in telling.itertuples()]
    return [f"Unstable more often with (option value: unstable of records): {'; '.join(parts)}"]


def check_text(
    result,
    report_dir: Path | str,
    *,
    verbose: bool = False,
    quiet: bool = False,
    baseline: pd.DataFrame | None = None,
    baseline_file: Path | str | None = None,
    saved_baseline: Path | str | None = None,
) -> str:
    """The output of ``python -m harness check`` for a ``harness.api.CheckResult``.

    ``baseline``: ``harness.baseline.compare``'s table, printed with the cells that
    regressed; ``saved_baseline``: where ``--save-baseline`` wrote. ``quiet``: the
    status line and the counterexamples only; ``verbose``: every counterexample and
    the per-regime comparison with torch.
    """
    from harness.api import describe_counterexample

    records, replay = result.records, str(report_dir)
    lines = [result.status_line()]
    shown = result.counterexamples if (verbose or quiet) else result.counterexamples[:FULL_COUNTEREXAMPLES]
    for cx in shown:
        lines += ["", describe_counterexample(cx, replay)]
    hidden = len(result.counterexamples) - len(shown)
    if hidden:
        lines += [
            "",
            f"… and {hidden} more counterexamples, one per failing (dtype, regime) cell (--verbose prints them all)",
        ]
    lines += [f"tool error: {e}" for e in result.errors]
    if not quiet:
        if result.passed:
            lines += _per_dtype_lines(records)
        else:
            lines += ["", *_where(records, None if verbose else MAX_CELLS)]
            lines += _option_lines(records)
        if verbose:
            lines += [
                "",
                "Per regime, against torch (worst error / allowance; unstable counts as inf):",
                result.versus_reference().to_string(index=False),
            ]
        elif not result.passed:
            lines.append("Run with --verbose for every counterexample and the per-regime comparison with torch.")
    if baseline is not None:
        worse = baseline[baseline["regressed"]]
        lines.append(f"Baseline {baseline_file}: {len(worse)} of {len(baseline)} cells regressed")
        if len(worse):
            columns = [
                "quantity",
                "dtype",
                "regime",
                "max_ulps_baseline",
                "max_ulps",
                "nonfinite_baseline",
                "nonfinite",
            ]
            lines.append(worse[columns].to_string(index=False))
    if saved_baseline:
        lines.append(f"baseline saved to {saved_baseline}")
    if len(records) > 1 and not quiet:  # what the run's cases reached (issue 13)
        lines.append(coverage_line(records))
    lines.append(f"report: {Path(report_dir) / 'report.html'}")
    return "\n".join(lines)


def _headline_text(records: pd.DataFrame) -> str:
    table = _dtype_order(headline(records), list(dict.fromkeys(records["impl"])))
    shown = pd.DataFrame(
        {
            "impl": table["impl"],
            "dtype": table["dtype"],
            "cases": table["cases"],
            "ok": table["ok"],
            "inaccurate": table["inaccurate"],
            "unstable": table["unstable"],
            "exact": (100 * table["exact_share"]).map(lambda s: f"{s:.0f}%"),
            "inf/NaN ok": table["accepted_nonfinite"],
            "worst ULPs": table["max_finite_ulps"].map(_number),
            "worst err/allow": table["max_allowance_ratio"].map(lambda v: _number(round(v, 3)) if v == v else "–"),
        }
    )
    if table["ungraded"].any():
        shown.insert(6, "ungraded", table["ungraded"])
    return _text_table(shown)


def _precision_text(records: pd.DataFrame) -> str:
    totals = precision_totals(records)
    share = lambda column: (100 * totals[column]).map(lambda s: f"{s:.0f}%")  # noqa: E731
    shown = pd.DataFrame(
        {
            "method": totals["impl"],
            "dtype": totals["dtype"],
            "cases": totals["cases"],
            "0 ULPs": share("ulps_0"),
            "1": share("ulps_1"),
            "2": share("ulps_2"),
            "3": share("ulps_3"),
            ">3": share("ulps_gt3"),
            "inf/NaN ok": share("accepted_nonfinite"),
            "failed": share("failed"),
            "worst err/bound": totals["max_error_over_bound"].map(lambda v: _number(round(v, 3))),
            "above bound": totals["above_bound"],
        }
    )
    return _text_table(shown)


def audit_text(report, *, verbose: bool = False, quiet: bool = False, what: str = "report") -> str:
    """The output of ``audit`` and ``merge`` for a ``harness.campaign.report.AuditReport``.

    Default: a run line, the headline table, the precision headline (``--precision``),
    a line on the minimal reproducers and the report's path. ``verbose``: summary.md and
    precision.md as written. ``quiet``: the path only.
    """
    partial = " (partial)" if report.status != "complete" else ""
    where = f"{what}: {report.path('report.html') if report.path('report.html').is_file() else report.out}{partial}"
    if quiet:
        return where
    if verbose:
        parts = [report.path(name) for name in ("summary.md", "precision.md")]
        texts = [
            p.read_text()
            for p in parts
            if p.is_file() and (p.name != "precision.md" or report.manifest.get("precision"))
        ]
        coverage = [coverage_line(report.records)] if report.records is not None and len(report.records) else []
        return "\n".join([*texts, *coverage, where])
    records, manifest = report.records, report.manifest
    if records is None or records.empty:
        return where
    seconds = manifest.get("seconds")
    run = (
        f"{records['case_id'].nunique()} cases, {len(records)} records"
        + (f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else "")
        + (f", seed {manifest['seed']}" if "seed" in manifest else "")
    )
    lines = [
        f"Audit{partial}: {run}",
        coverage_line(records),
        "",
        "Verdicts per implementation and dtype (ULPs of finite results; worst error over the stability allowance):",
        _headline_text(records),
    ]
    if manifest.get("precision"):
        lines += [
            "",
            "Precision per method and dtype (shares of results; error over the Blanchard–Higham–Higham bound):",
            _precision_text(records),
        ]
    reproducers = report.reproducers
    if reproducers is not None and len(reproducers):
        shrunk = int(reproducers["status"].astype(str).str.startswith(("shrunk", "minimal")).sum())
        lines += [
            "",
            f"{len(reproducers)} failing (implementation, dtype, regime) cells, {shrunk} shrunk to minimal "
            "reproducers (summary.md lists them with replay commands)",
        ]
    lines += ["Per-regime tables: summary.md (--verbose prints it) and the report page.", where]
    return "\n".join(lines)


def demo_text(markdown: str) -> str:
    """The demo's Markdown page, as printed (it is short: the thresholds and the story)."""
    return markdown.split("\n## ", 1)[0].rstrip()
