"""Figures for the HTML report, drawn with matplotlib's Agg backend and returned as PNG bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from harness.formats import FORMATS

__all__ = ["CATEGORIES", "category", "error_vs", "histograms", "outcome_bars", "png"]

# Report categories, from best to worst, and their colours.
CATEGORIES = {
    "exact": "#2e7d32",
    "within tolerance": "#9ccc65",
    "inaccurate": "#fbc02d",
    "unstable": "#ef6c00",
    "spurious inf": "#c62828",
    "spurious NaN": "#6a1b9a",
    "uncertified oracle": "#9e9e9e",
}


_BY_OUTCOME = {"exact": "exact", "spurious_inf": "spurious inf", "spurious_nan": "spurious NaN",
               "uncertified": "uncertified oracle"}  # fmt: skip
_BY_VERDICT = {"ok": "within tolerance", "inaccurate": "inaccurate", "unstable": "unstable",
               "ungraded": "uncertified oracle"}  # fmt: skip


def category(records: pd.DataFrame) -> pd.Series:
    """One report category per record, from its outcome and verdict."""
    by_verdict = records["verdict"].map(_BY_VERDICT)
    return records["outcome"].map(_BY_OUTCOME).fillna(by_verdict).fillna("unstable")


def png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def outcome_bars(records: pd.DataFrame) -> bytes:
    """A stacked bar of report categories per (implementation, dtype), as shares of cases."""
    shares = pd.crosstab([records["impl"], records["dtype"]], category(records), normalize="index")
    shares = shares.reindex(columns=list(CATEGORIES), fill_value=0.0)
    labels = [f"{impl} · {dtype}" for impl, dtype in shares.index]
    figure, axis = plt.subplots(figsize=(9, 0.32 * len(labels) + 1.2))
    left = np.zeros(len(labels))
    for name, colour in CATEGORIES.items():
        axis.barh(labels, shares[name], left=left, color=colour, label=name)
        left += shares[name].to_numpy()
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_xlabel("share of cases")
    axis.legend(ncol=4, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / max(len(labels), 1)))
    return png(figure)


def _panels(records: pd.DataFrame):
    dtypes = [d for d in FORMATS if d in set(records["dtype"])]
    figure, axes = plt.subplots(1, len(dtypes), figsize=(4.2 * len(dtypes), 3.4), squeeze=False)
    return figure, list(zip(dtypes, axes[0]))


def error_vs(records: pd.DataFrame, column: str, label: str, thresholds: bool = False) -> bytes:
    """Bits of error against a per-case quantity, one panel per dtype, one colour per implementation."""
    figure, panels = _panels(records)
    for dtype, axis in panels:
        subset = records[records["dtype"] == dtype]
        for impl, rows in subset.groupby("impl"):
            # log10 on a linear axis: float64 magnitudes near 1e308 overflow a log-scale axis
            x = np.log10(rows[column].abs().clip(lower=1e-3))
            axis.scatter(x, rows["bits"].fillna(rows["bits"].max()), s=9, alpha=0.6, label=str(impl))
        if thresholds:
            fmt = FORMATS[dtype]
            axis.axvline(np.log10(fmt.exp_overflow), color="red", linestyle="--", linewidth=1, label="exp overflow")
            axis.axvline(np.log10(-fmt.exp_underflow), color="blue", linestyle=":", linewidth=1,
                         label="|exp underflow|")  # fmt: skip
        axis.set_title(dtype)
        axis.set_xlabel(f"log10 {label}")
        axis.set_ylabel("bits of error")
    panels[0][1].legend(fontsize=7)
    return png(figure)


def histograms(records: pd.DataFrame) -> bytes:
    """Distribution of bits of error (log2(1 + ULPs)) per dtype, one histogram per implementation."""
    figure, panels = _panels(records)
    for dtype, axis in panels:
        subset = records[records["dtype"] == dtype]
        top = max(float(subset["bits"].max() or 1.0), 1.0)
        bins = np.linspace(0, top, 24)
        for impl, rows in subset.groupby("impl"):
            axis.hist(rows["bits"].dropna(), bins=bins, histtype="step", linewidth=1.4, label=str(impl))
        axis.set_yscale("log")
        axis.set_title(dtype)
        axis.set_xlabel("bits of error")
    panels[0][1].legend(fontsize=7)
    return png(figure)
