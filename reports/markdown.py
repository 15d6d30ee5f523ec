"""Markdown rendering of an audit's statistics."""

from __future__ import annotations

import math

import pandas as pd

from reports.stats import reproducer_table

__all__ = ["markdown_table", "render_summary"]


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.3g}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-style Markdown table: integers as such, other floats to 3 significant digits, NaN as –."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def render_summary(
    headline: pd.DataFrame,
    summary: pd.DataFrame,
    manifest: dict,
    reproducers: pd.DataFrame | None = None,
    report_dir: str = "REPORT_DIR",
) -> str:
    """A Markdown page: run line, the per-(impl, dtype) headline, the full per-regime table,
    and the minimal reproducers of the failures, when there are any."""
    head = headline.assign(exact_share=headline["exact_share"].map(lambda s: f"{100 * s:.0f}%"))
    nonzero = [c for c in summary.columns if not (summary[c].dtype.kind in "iu" and summary[c].eq(0).all())]
    lines = [
        "# Cross-entropy audit" + ("" if manifest.get("status") == "complete" else " (PARTIAL: interrupted)"),
        "",
        f"`{manifest['command']}` — seed {manifest['seed']}, {manifest['cases']} cases, "
        f"{manifest['records']} records, {manifest['seconds']:.1f} s",
        "",
        *(
            [
                "Oracle tiers (the deciding tier of each case's graded sample): "
                + ", ".join(f"{n} {tier}" for tier, n in sorted(manifest["oracle_methods"].items())),
                "",
            ]
            if manifest.get("oracle_methods")
            else []
        ),
        "## Per implementation and dtype",
        "",
        "ULP columns count only finite comparisons; accepted_nonfinite counts inf/NaN the verdicts accept (a +inf "
        "logit, or a mean whose rows overflow); nonfinite_failures are spurious inf/NaN or a missing inf/NaN.",
        "",
        markdown_table(head),
        "",
        "## Per implementation, dtype and regime",
        "",
        markdown_table(summary[nonzero]),
        "",
    ]
    if reproducers is not None and len(reproducers):
        lines += [
            "## Minimal reproducers",
            "",
            "Each failing (implementation, dtype, regime), searched again with its seed and shrunk by Hypothesis.",
            "",
            markdown_table(reproducer_table(reproducers, report_dir)),
            "",
        ]
    return "\n".join(lines)
