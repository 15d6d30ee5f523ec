"""A single self-contained HTML report: images embedded as data URIs, no scripts, no network fetches.

The page leads with a compact headline table (implementation × dtype); the per-regime
detail sits in collapsible <details> sections. Every column header carries a tooltip
(its ``title``) and each table a legend, and the page fits a 1,280-pixel-wide window
(tests/test_pages.py checks it in a headless browser). A precision audit (manifest
``precision``) adds the ULP-distribution bars, the error against the
Blanchard–Higham–Higham bound per regime, and precision.md's tables.
"""

from __future__ import annotations

import base64
import html
import math

import pandas as pd

from harness.formats import FORMATS
from harness.grading.metrics import FAILURE_OUTCOMES, OUTCOME_MEANINGS
from harness.grading.verdicts import SAFETY
from reports import plots
from reports.palette import CATEGORIES, CATEGORY_MEANINGS, category
from reports.precision import PRECISION_MEANINGS, findings, precision_table, precision_totals, ratios
from reports.stats import HEADLINE_MEANINGS, by_subject, headline, reproducer_table, worst_cases

__all__ = ["render_html"]

STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1em 20px;color:#222;max-width:1240px;line-height:1.4}
h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.8em;margin:.4em 0 1em}
th,td{border:1px solid #ccc;padding:.2em .45em;text-align:right;vertical-align:top}
th{background:#f0f0f0;font-weight:600;cursor:help}
td.name{text-align:left}
td.bad{background:#fde0dd;color:#a50026;font-weight:600}
td.warn{background:#fff3dc}
code{background:#f5f5f5;padding:0 .2em;overflow-wrap:anywhere}
img{max-width:100%;height:auto;display:block;margin:.4em 0}
details{margin:.3em 0 .3em .2em}
summary{cursor:pointer}
.wrap{max-width:100%;overflow-x:auto}
dl.legend{font-size:.82em;columns:2;column-gap:2em;margin:.3em 0 1em}
dl.legend dt{font-weight:600;break-after:avoid}
dl.legend dd{margin:0 0 .35em 1em;break-inside:avoid}
.swatch{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:-.1em;border:1px solid #999}
.caption{font-size:.9em;color:#444;max-width:75em}
.run{font-size:.9em}
.partial{color:#c62828;font-weight:bold}
"""

_HEADLINE_NAMES = {
    "impl": "implementation",
    "dtype": "dtype",
    "cases": "cases",
    "ok": "ok",
    "inaccurate": "inaccurate",
    "unstable": "unstable",
    "ungraded": "ungraded",
    "exact_share": "exact",
    "accepted_nonfinite": "accepted inf/NaN",
    "nonfinite_failures": "inf/NaN failures",
    "other_failures": "other failures",
    "median_ulps": "median ULPs",
    "max_finite_ulps": "worst finite ULPs",
    "max_allowance_ratio": "worst error / allowance",
}
_SUMMARY_MEANINGS = {
    **HEADLINE_MEANINGS,
    **OUTCOME_MEANINGS,
    "regime": "the kind of logits drawn (strategies/regimes.py)",
    "max_ulps": "largest ULPs from the correctly rounded loss, finite results only",
    "p99_ulps": "99th percentile of ULPs, finite results only",
    "max_allowance_ratio": HEADLINE_MEANINGS["max_allowance_ratio"],
    "worst_case": "id of the worst case (replay it with python -m harness replay)",
    "verdict": "the worst case's verdict",
    "outcome": "the worst case's outcome",
    "ulps": "ULPs from the correctly rounded loss",
    "allowance_ratio": "error over the stability allowance",
    "case_id": "case id: python -m harness replay REPORT_DIR CASE_ID",
    "status": "shrunk by Hypothesis, or why not",
    "shape": "shape of the minimal case's logits",
    "replay": "the command that replays the minimal case",
}
_SUMMARY_NAMES = {
    "max_ulps": "max ULPs",
    "p99_ulps": "p99 ULPs",
    "max_allowance_ratio": "worst error / allowance",
    "worst_case": "worst case",
    "accepted_nan": "accepted NaN",
    "accepted_inf": "accepted inf",
    "finite_error": "finite error",
    "missing_nonfinite": "missing inf/NaN",
    "spurious_inf": "spurious inf",
    "spurious_nan": "spurious NaN",
    "allowance_ratio": "error / allowance",
    "case_id": "case",
    "ulps": "ULPs",
}
_SHARE_COLUMNS = {
    "exact_share",
    "correctly_rounded",
    "ulps_0",
    "ulps_1",
    "ulps_2",
    "ulps_3",
    "ulps_gt3",
    "accepted_nonfinite",
    "failed",
    "ungraded",
}


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _cell(value, share: bool = False) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if share:
            return f"{100 * value:.0f}%" if value in (0.0, 1.0) or 0.01 <= value <= 0.99 else f"{100 * value:.1f}%"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.3g}"
    return html.escape(str(value))


def _table(
    frame: pd.DataFrame,
    meanings: dict[str, str],
    names: dict[str, str] | None = None,
    text: tuple[str, ...] = (),
    flag: dict[str, str] | None = None,
    code: tuple[str, ...] = (),
) -> str:
    """An HTML table: headers renamed by ``names`` with ``meanings`` as tooltips; ``text`` columns
    left-aligned; ``flag`` maps a column to a CSS class for its non-zero cells; ``code`` columns as code."""
    names, flag = names or {}, flag or {}
    head = "".join(
        f'<th title="{html.escape(meanings.get(c, c))}">{html.escape(names.get(c, str(c)).replace("_", " "))}</th>'
        for c in frame.columns
    )
    rows = []
    for row in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, row):
            shown = _cell(value, share=column in _SHARE_COLUMNS)
            if column in code and shown != "–":
                shown = f"<code>{shown}</code>"
            classes = []
            if column in text:
                classes.append("name")
            nonzero = isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)) and value
            if column in flag and nonzero:
                classes.append(flag[column])
            attribute = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attribute}>{shown}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<div class="wrap"><table><tr>{head}</tr>{"".join(rows)}</table></div>'


def _legend(meanings: dict[str, str], names: dict[str, str] | None = None, title: str = "What the columns mean") -> str:
    names = names or {}
    items = "".join(
        f"<dt>{html.escape(names.get(k, k).replace('_', ' '))}</dt><dd>{html.escape(v)}</dd>"
        for k, v in meanings.items()
    )
    return f'<details><summary>{html.escape(title)}</summary><dl class="legend">{items}</dl></details>'


def _category_legend(present: list[str]) -> str:
    items = "".join(
        f'<dt><span class="swatch" style="background:{CATEGORIES.get(c, "#d6604d")}"></span>{html.escape(c)}</dt>'
        f"<dd>{html.escape(CATEGORY_MEANINGS.get(c, 'a failure outcome'))}</dd>"
        for c in present
    )
    return f'<details><summary>What the colours mean</summary><dl class="legend">{items}</dl></details>'


def _headline(records: pd.DataFrame) -> str:
    table = headline(records)
    order = {name: k for k, name in enumerate(dict.fromkeys(records["impl"]))}
    dtypes = {name: k for k, name in enumerate(FORMATS)}
    table = table.sort_values(["impl", "dtype"], key=lambda c: c.map(order if c.name == "impl" else dtypes))
    meanings = {k: HEADLINE_MEANINGS[k] for k in table.columns}
    flags = {"unstable": "bad", "nonfinite_failures": "bad", "other_failures": "bad", "inaccurate": "warn"}
    return _table(table, meanings, _HEADLINE_NAMES, text=("impl", "dtype"), flag=flags) + _legend(
        meanings, _HEADLINE_NAMES
    )


def _per_impl(frame: pd.DataFrame, records: pd.DataFrame, render, what: str) -> str:
    """One collapsible section per implementation, its summary line counting unstable and inaccurate cases."""
    parts = []
    for impl in dict.fromkeys(records["impl"]):
        mine = records[records["impl"] == impl]
        unstable, inaccurate = int(mine["verdict"].eq("unstable").sum()), int(mine["verdict"].eq("inaccurate").sum())
        note = f"{len(mine)} cases, {unstable} unstable, {inaccurate} inaccurate"
        body = render(frame[frame["impl"] == impl].drop(columns="impl"))
        parts.append(f"<details><summary><b>{html.escape(str(impl))}</b> — {what} ({note})</summary>{body}</details>")
    return "".join(parts)


def _summary_section(summary: pd.DataFrame, records: pd.DataFrame) -> str:
    drop = {"mean_ulps", "median_ulps", "max_rel_error"}
    columns = [c for c in summary.columns if c not in drop]
    shown = summary[columns]
    keep = [c for c in shown.columns if not (shown[c].dtype.kind in "iu" and shown[c].eq(0).all())]
    shown = shown[keep]
    flags = {c: "bad" for c in ("unstable", "missing_nonfinite", "spurious_inf", "spurious_nan")}
    flags.update({c: "bad" for c in shown.columns if c in FAILURE_OUTCOMES or c not in _SUMMARY_MEANINGS})
    flags["inaccurate"] = "warn"
    meanings = {c: _SUMMARY_MEANINGS.get(c, c) for c in shown.columns}

    def render(frame: pd.DataFrame) -> str:
        return _table(frame, meanings, _SUMMARY_NAMES, text=("dtype", "regime", "worst_case"), flag=flags)

    return _per_impl(shown, records, render, "per dtype and regime") + _legend(
        {k: v for k, v in meanings.items() if k != "impl"}, _SUMMARY_NAMES
    )


def _worst_section(records: pd.DataFrame, report_dir: str) -> str:
    worst = worst_cases(records, ["impl", "regime"]).reset_index()
    columns = ["impl", "regime", "dtype", "verdict", "outcome", "ulps", "allowance_ratio", "case_id"]
    meanings = {c: _SUMMARY_MEANINGS.get(c, c) for c in columns}

    def render(frame: pd.DataFrame) -> str:
        return _table(
            frame,
            meanings,
            _SUMMARY_NAMES,
            text=("regime", "dtype", "verdict", "outcome", "case_id"),
            code=("case_id",),
        )

    hint = f"<p>Replay any case: <code>python -m harness replay {html.escape(report_dir)} CASE_ID</code></p>"
    return hint + _per_impl(worst[columns], records, render, "worst case per regime")


def _precision_section(records: pd.DataFrame, report_dir: str) -> list[tuple[str, str]]:
    totals = precision_totals(records)
    table = precision_table(records)
    above = findings(records)
    share_names = {
        "correctly_rounded": "correctly rounded",
        "ulps_0": "0 ULPs",
        "ulps_1": "1 ULP",
        "ulps_2": "2 ULPs",
        "ulps_3": "3 ULPs",
        "ulps_gt3": "> 3 ULPs",
        "accepted_nonfinite": "accepted inf/NaN",
        "max_ulps": "max ULPs",
        "max_error_over_bound": "worst error / bound",
        "above_bound": "above bound",
    }
    flags = {"above_bound": "bad", "failed": "bad"}
    meanings = {c: PRECISION_MEANINGS[c] for c in table.columns}
    details = []
    for dtype in dict.fromkeys(table["dtype"]):
        part = table[table["dtype"] == dtype].drop(columns="dtype")
        details.append(
            f"<details><summary><b>{html.escape(str(dtype))}</b> — per method and regime</summary>"
            f"{_table(part, meanings, share_names, text=('impl', 'regime'), flag=flags)}</details>"
        )
    sections = [
        (
            "Precision audit: ULP distribution per method and dtype",
            '<p class="caption">Shares of all results, over every regime: finite results by their distance in ULPs '
            "from the correctly rounded loss, then inf/NaN the verdicts accept, failures and ungraded results.</p>"
            + _img(plots.precision_bars(totals), "ULP distribution per method and dtype")
            + _table(
                totals,
                {c: PRECISION_MEANINGS[c] for c in totals.columns},
                share_names,
                text=("impl", "dtype"),
                flag=flags,
            ),
        ),
        (
            "Error against the Blanchard–Higham–Higham bound, per regime",
            '<p class="caption">Measured error over the first-order bound of the shifted log-sum-exp algorithm '
            "(Blanchard, Higham &amp; Higham 2021): above 1 is a finding; the stability allowance is "
            f"{SAFETY:g} × the bound. Zero errors are not drawn (the bars above count them); failures sit in the "
            "band above each panel.</p>" + _img(plots.bound_ratio(ratios(records), SAFETY), "error over the bound"),
        ),
        ("Precision table (precision.md)", "".join(details) + _legend(meanings, share_names)),
    ]
    if above.empty:
        finding = "<p>No measured error exceeds the bound.</p>"
    else:
        shown = above.head(20).rename(columns={"case_id": "case"})
        finding = (
            f"<p>{len(above)} results above the bound{' (the first 20)' if len(above) > 20 else ''}. Replay any: "
            f"<code>python -m harness replay {html.escape(report_dir)} CASE_ID</code></p>"
            + _table(
                shown,
                {
                    **PRECISION_MEANINGS,
                    "case": "case id",
                    "n_classes": "classes",
                    "output": "returned",
                    "exact": "the exact loss",
                    "ulps": "ULPs",
                    "error_over_bound": "error / bound",
                },
                text=("impl", "dtype", "regime", "case"),
                code=("case",),
            )
        )
    sections.append(("Findings: results above the bound", finding))
    return sections


def render_html(
    records: pd.DataFrame,
    summary: pd.DataFrame,
    manifest: dict,
    report_dir: str,
    reproducers: pd.DataFrame | None = None,
) -> str:
    """The whole page: run header, headline table, outcome bars, [precision], error plots, histograms,
    reproducers, worst cases and the per-regime summary (the last two collapsible)."""
    records = by_subject(records)  # a gradient's records get panels and rows of their own
    versions = ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())
    partial = manifest.get("status") != "complete"
    max_ulps = float(manifest.get("max_ulps", 4.0))
    header = [
        f'<p class="run"><b>Command:</b> <code>{html.escape(manifest["command"])}</code><br>'
        f"<b>Seed:</b> {manifest['seed']} · <b>cases:</b> {manifest['cases']} · <b>records:</b> "
        f"{manifest['records']} · <b>time:</b> {manifest['seconds']:.1f} s (oracle {manifest['oracle_seconds']:.1f} s)"
        f"<br><b>Versions:</b> {html.escape(versions)}</p>",
    ]
    if partial:
        header.append('<p class="partial">PARTIAL REPORT: the run was interrupted before the end.</p>')
    for error in manifest.get("tool_errors", []):
        header.append(f'<p class="partial">Tool error: {html.escape(error)}</p>')
    present = [c for c in CATEGORIES if c in set(category(records))]
    present += sorted(set(category(records)) - set(CATEGORIES))
    band = (
        '<p class="caption">One row of panels per implementation, one column per dtype (each with its own scale). '
        "Finite results are points on a ULP axis (0, 1, then powers of ten), coloured by category; every other "
        "result (inf, NaN, no value) is drawn in the grey band above its panel, never at a number of ULPs: "
        "failures as warm crosses, accepted inf/NaN as cool circles. "
    )
    sections = [
        ("At a glance: verdicts per implementation and dtype", _headline(records)),
        (
            "Outcomes per implementation and dtype",
            _img(plots.outcome_bars(records), "outcome bars") + _category_legend(present),
        ),
    ]
    if manifest.get("precision"):
        sections += _precision_section(records, report_dir)
    sections += [
        (
            "Error against the largest logit magnitude",
            band
            + "Dashed lines: where exp overflows and underflows in that dtype.</p>"
            + _img(
                plots.error_vs(records, "max_abs_logit", "largest |logit|", thresholds=True, max_ulps=max_ulps),
                "error vs magnitude",
            ),
        ),
        (
            "Error against the logit spread",
            band
            + "x: the largest minus the smallest finite logit of the case.</p>"
            + _img(
                plots.error_vs(records, "spread", "max − min logit", thresholds=True, max_ulps=max_ulps),
                "error vs spread",
            ),
        ),
        (
            "Error against class count",
            band
            + "</p>"
            + _img(plots.error_vs(records, "n_classes", "classes", max_ulps=max_ulps), "error vs classes"),
        ),
        (
            "Distribution of errors (finite results, by ULPs)",
            '<p class="caption">Implementations side by side; counts on a log scale.</p>'
            + _img(plots.ulp_histograms(records, max_ulps=max_ulps), "ULP histograms"),
        ),
    ]
    if reproducers is not None and len(reproducers):
        shown = reproducer_table(reproducers, report_dir)
        meanings = {c: _SUMMARY_MEANINGS.get(c, c) for c in shown.columns}
        table = _table(
            shown, meanings, _SUMMARY_NAMES, text=(*shown.columns[:6], "worst_case", "replay"), code=("replay",)
        )
        sections.append(("Minimal reproducers (shrunk by Hypothesis)", table))
    sections.append(("Worst case per regime and implementation", _worst_section(records, report_dir)))
    sections.append(("Summary per implementation, dtype and regime", _summary_section(summary, records)))
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    title = "Cross-entropy stability report" + (" (partial)" if partial else "")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{title}</title><style>{STYLE}</style></head><body><h1>{title}</h1>{''.join(header)}{body}"
        "</body></html>\n"
    )
