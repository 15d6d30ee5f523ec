"""A single self-contained HTML report: images embedded as data URIs, no network fetches."""

from __future__ import annotations

import base64
import html
import math

import pandas as pd

from reports import plots
from reports.stats import reproducer_table

__all__ = ["render_html"]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f0f0f0; } td.name { text-align: left; }
code { background: #f5f5f5; padding: 0 0.2em; }
img { max-width: 100%; }
.partial { color: #c62828; font-weight: bold; }
"""


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _cell(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.3g}"
    return html.escape(str(value))


def _table(frame: pd.DataFrame, names: tuple[str, ...] = ()) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):
        cells = "".join(
            f'<td class="name">{_cell(v)}</td>' if c in names else f"<td>{_cell(v)}</td>"
            for c, v in zip(frame.columns, row)
        )
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _worst_table(records: pd.DataFrame, report_dir: str) -> pd.DataFrame:
    """Regime × implementation: the worst case's verdict, ULPs and replay command."""
    from reports.stats import worst_cases

    worst = worst_cases(records, ["regime", "impl"]).reset_index()
    worst["replay"] = "python -m harness replay " + report_dir + " " + worst["case_id"]
    columns = ["regime", "impl", "dtype", "verdict", "outcome", "ulps", "allowance_ratio", "replay"]
    return worst[columns]


def render_html(
    records: pd.DataFrame,
    summary: pd.DataFrame,
    manifest: dict,
    report_dir: str,
    reproducers: pd.DataFrame | None = None,
) -> str:
    """The whole page: run header, outcome bars, error plots, histograms, worst cases, reproducers, summary."""
    versions = ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())
    partial = manifest.get("status") != "complete"
    header = [
        f"<p><b>Command:</b> <code>{html.escape(manifest['command'])}</code></p>",
        f"<p><b>Seed:</b> {manifest['seed']} · <b>cases:</b> {manifest['cases']} · <b>records:</b> "
        f"{manifest['records']} · <b>time:</b> {manifest['seconds']:.1f} s (oracle {manifest['oracle_seconds']:.1f} s)"
        "</p>",
        f"<p><b>Versions:</b> {html.escape(versions)}</p>",
    ]
    if partial:
        header.append('<p class="partial">PARTIAL REPORT: the run was interrupted before the end.</p>')
    for error in manifest.get("tool_errors", []):
        header.append(f'<p class="partial">Tool error: {html.escape(error)}</p>')
    finite = records[records["bits"].notna()]
    sections = [
        ("Outcomes per implementation and dtype", _img(plots.outcome_bars(records), "outcome bars")),
        ("Error against the largest logit magnitude",
         _img(plots.error_vs(finite, "max_abs_logit", "largest |logit|", thresholds=True), "error vs magnitude")),
        ("Error against the logit spread",
         _img(plots.error_vs(finite, "spread", "max − min logit", thresholds=True), "error vs spread")),
        ("Error against class count", _img(plots.error_vs(finite, "n_classes", "classes"), "error vs classes")),
        ("Distribution of errors (ULP histograms, as bits)", _img(plots.histograms(finite), "histograms")),
        ("Worst case per regime and implementation",
         _table(_worst_table(records, report_dir), names=("regime", "impl", "dtype", "verdict", "outcome", "replay"))),
    ]  # fmt: skip
    if reproducers is not None and len(reproducers):
        shown = reproducer_table(reproducers, report_dir)
        sections.append(("Minimal reproducers (shrunk by Hypothesis)", _table(shown, names=tuple(shown.columns[:6]))))
    summary_table = _table(summary, names=("impl", "dtype", "regime"))
    sections.append(("Summary per implementation, dtype and regime", summary_table))
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    title = "Cross-entropy stability report" + (" (partial)" if partial else "")
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{STYLE}</style></head><body><h1>{title}</h1>{''.join(header)}{body}</body></html>\n"
    )
