"""Figures for the HTML report, drawn with matplotlib's Agg backend and returned as PNG bytes.

Conventions (issue 17): outcome colours come from ``reports.palette`` (failures warm,
accepted and exact cool), implementation colours from its separate palette. Error panels
draw finite errors on a ULP axis and every other result (inf, NaN, no value) in a marked
band above it, never at a number of ULPs. Implementations get a row of panels each, so
none hides another; each dtype gets a column, with its own scale. Every threshold line
carries its value.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullLocator
from PIL import Image

from harness.formats import FORMATS
from reports.palette import (
    CATEGORIES,
    category,
    category_colour,
    implementation_colours,
    is_failure_outcome,
    ordered_categories,
)

__all__ = ["PRECISION_BUCKETS", "bound_ratio", "error_vs", "outcome_bars", "png", "precision_bars", "ulp_histograms"]

_FINITE = ("exact", "finite_error")
_BAND_MARKERS = {True: "X", False: "o"}  # failure: a filled cross; accepted or ungraded: a hollow circle
# ULP buckets of the error histograms: (label, lowest ULPs, highest ULPs)
_BUCKETS = (
    ("0", 0, 0),
    ("1", 1, 1),
    ("2–4", 2, 4),
    ("5–16", 5, 16),
    ("17–256", 17, 256),
    ("257–2¹⁶", 257, 2**16),
    ("> 2¹⁶", 2**16 + 1, math.inf),
)
plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7})


def png(figure, dpi: int = 96) -> bytes:
    """The figure as PNG bytes (closed afterwards), reduced to a 256-colour palette.

    The figures are flat colours and text: a palette keeps them sharp at about a third
    of the bytes, which keeps the self-contained report page light.
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    small = io.BytesIO()
    image.save(small, format="png", optimize=True)
    return small.getvalue()


def _dtypes(records: pd.DataFrame) -> list[str]:
    present = set(records["dtype"])
    return [d for d in FORMATS if d in present] + sorted(present - set(FORMATS))


def _impls(records: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(records["impl"]))  # in the order the run declared them


def outcome_bars(records: pd.DataFrame) -> bytes:
    """A stacked bar of report categories per (implementation, dtype), as shares of its cases.

    Right of each bar: its case count and unstable count. Failures are warm, accepted
    and exact results cool (``reports.palette``).
    """
    categories = category(records)
    shares = pd.crosstab([records["impl"], records["dtype"]], categories, normalize="index")
    present = ordered_categories(shares.columns)
    impls, dtypes = _impls(records), _dtypes(records)
    rows = [(i, d) for i in impls for d in dtypes if (i, d) in shares.index]
    shares = shares.reindex(index=pd.MultiIndex.from_tuples(rows), columns=present, fill_value=0.0)
    # a gap between implementations: position = row index + implementation index * 0.6
    impl_index = {name: k for k, name in enumerate(impls)}
    y = np.array([k + 0.6 * impl_index[i] for k, (i, _) in enumerate(rows)])
    colours = implementation_colours(impls)
    figure, axis = plt.subplots(figsize=(10, 0.27 * len(rows) + 0.6 * len(impls) + 1.3))
    left = np.zeros(len(rows))
    for name in present:
        width = shares[name].to_numpy()
        axis.barh(
            y, width, left=left, color=category_colour(name), label=name, height=0.8, edgecolor="white", linewidth=0.3
        )
        left += width
    counts = records.groupby(["impl", "dtype"]).agg(
        cases=("case_id", "size"), unstable=("verdict", lambda v: int((v == "unstable").sum()))
    )
    for position, (impl, dtype) in zip(y, rows):
        n, unstable = counts.loc[(impl, dtype)]
        text = f"{n} cases" + (f", {unstable} unstable" if unstable else "")
        axis.text(
            1.01,
            position,
            text,
            va="center",
            fontsize=7,
            color="#a50026" if unstable else "#333333",
            transform=axis.get_yaxis_transform(),
        )
    axis.set_yticks(y, [d for _, d in rows])
    for tick, (impl, _) in zip(axis.get_yticklabels(), rows):
        tick.set_color(colours[impl])
    for impl in impls:  # the implementation's name once, left of its group
        group = y[[k for k, (i, _) in enumerate(rows) if i == impl]]
        axis.text(
            -0.09,
            group.mean(),
            impl,
            transform=axis.get_yaxis_transform(),
            ha="right",
            va="center",
            fontsize=9,
            fontweight="bold",
            color=colours[impl],
        )
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
    axis.set_xlabel("share of cases")
    axis.spines[["top", "right"]].set_visible(False)
    axis.legend(
        ncol=min(len(present), 5),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.5 / (0.27 * len(rows) + 1.3)),
        frameon=False,
    )
    return png(figure)


def _symlog_ulps(axis, top: float) -> None:
    """A symmetric-log ULP axis from 0 to ``top``: 0 and 1, then at most six decades labelled."""
    top = max(top, 10.0)
    axis.set_yscale("symlog", linthresh=1, linscale=0.5)
    axis.set_ylim(-0.3, top * 3)
    decades = max(math.ceil(math.log10(top)), 1)
    step = max(1, math.ceil(decades / 5))
    axis.set_yticks([0, *([1] if decades <= 6 else []), *(10.0**k for k in range(step, decades + 1, step))])
    axis.yaxis.set_minor_locator(NullLocator())
    axis.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _ulp_label(v)))


def _ulp_label(value: float) -> str:
    if value <= 0:
        return "0"
    exponent = math.log10(value)
    return f"{value:g}" if exponent < 3 else f"$10^{{{exponent:.0f}}}$"


def _log_ticks(axis) -> None:
    """x holds log10 of a quantity: label the ticks as powers of ten."""
    axis.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"$10^{{{v:g}}}$" if float(v).is_integer() else ""))


def _threshold(axis, x: float, text: str, colour: str, style: str, height: float = 0.97) -> None:
    """A vertical line at ``x`` with its value written beside it (left of it in the panel's right half)."""
    axis.axvline(x, color=colour, linestyle=style, linewidth=1)
    low, high = axis.get_xlim()
    right_half = (x - low) / (high - low) > 0.5 if high > low else False
    axis.text(
        x,
        height,
        (text + " ") if right_half else (" " + text),
        va="top",
        ha="right" if right_half else "left",
        fontsize=6,
        color=colour,
        transform=axis.get_xaxis_transform(),
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 0.5},
    )


def error_vs(
    records: pd.DataFrame,
    column: str,
    label: str,
    thresholds: bool = False,
    max_ulps: float | None = None,
) -> bytes:
    """ULPs of error against a per-case quantity: a row of panels per implementation, a column per dtype.

    Finite results (exact and finite errors) are points on a symmetric-log ULP axis,
    coloured by category (within allowance, inaccurate, unstable). Every other result
    is drawn in the band above its panel, one lane per category: failures as warm
    crosses, accepted inf/NaN and ungraded results as cool or grey circles. x is log10
    of ``column``'s magnitude (float64 values near 1e308 overflow a log-scale axis).
    ``thresholds`` marks exp's overflow and underflow thresholds of each dtype;
    ``max_ulps`` the line above which a result is inaccurate.
    """
    impls, dtypes = _impls(records), _dtypes(records)
    frame = records.assign(
        category=category(records), x=np.log10(records[column].abs().clip(lower=1e-3, upper=1.7e308))
    )
    band = frame[~frame["outcome"].isin(_FINITE)]
    lanes = ordered_categories(set(band["category"]))
    rng = np.random.default_rng(0)  # jitter in the band only; finite errors are drawn where they are
    figure = plt.figure(figsize=(2.75 * len(dtypes) + 0.8, (1.9 + 0.22 * max(len(lanes), 1)) * len(impls) + 1.0))
    grid = figure.add_gridspec(
        2 * len(impls),
        len(dtypes),
        height_ratios=[0.22 * max(len(lanes), 1), 1.9] * len(impls),
        hspace=0.08,
        wspace=0.22,
    )
    colours = implementation_colours(impls)
    main_axes = {}
    for column_index, dtype in enumerate(dtypes):
        in_dtype = frame[frame["dtype"] == dtype]
        finite_top = in_dtype.loc[in_dtype["outcome"].isin(_FINITE), "ulps"].max()
        top = float(finite_top) if pd.notna(finite_top) else 10.0
        x = in_dtype["x"].dropna()
        x_range = (float(x.min()) - 0.3, float(x.max()) + 0.3) if len(x) else (-1.0, 1.0)
        fmt = FORMATS.get(dtype)
        if thresholds and fmt is not None:
            x_range = (
                min(x_range[0], math.log10(fmt.exp_overflow) - 0.3),
                max(x_range[1], math.log10(-fmt.exp_underflow) + 0.3),
            )
        for row, impl in enumerate(impls):
            rows = in_dtype[in_dtype["impl"] == impl]
            top_axis = figure.add_subplot(grid[2 * row, column_index])
            axis = figure.add_subplot(grid[2 * row + 1, column_index], sharex=top_axis)
            main_axes[(row, column_index)] = axis
            finite = rows[rows["outcome"].isin(_FINITE)]
            axis.scatter(
                finite["x"],
                finite["ulps"],
                s=9,
                alpha=0.55,
                linewidths=0,
                rasterized=True,
                c=[category_colour(c) for c in finite["category"]],
            )
            _symlog_ulps(axis, top)
            if max_ulps is not None:
                axis.axhline(max_ulps, color="#e08214", linestyle=":", linewidth=0.9)
                axis.text(
                    0.01,
                    max_ulps,
                    f"--max-ulps {max_ulps:g}",
                    transform=axis.get_yaxis_transform(),
                    fontsize=6,
                    color="#b35806",
                    va="bottom",
                )
            axis.set_xlim(*x_range)
            if thresholds and fmt is not None:
                _threshold(
                    axis, math.log10(fmt.exp_overflow), f"exp(x) overflows: x > {fmt.exp_overflow:.4g}", "#b2182b", "--"
                )
                _threshold(
                    axis,
                    math.log10(-fmt.exp_underflow),
                    f"exp(−|x|) underflows: |x| > {-fmt.exp_underflow:.4g}",
                    "#2166ac",
                    ":",
                    height=0.8,
                )
            _log_ticks(axis)
            # the band: inf, NaN and no value, one lane per category, never at a number of ULPs
            top_axis.set_facecolor("#f3f3f3")
            top_axis.set_ylim(-0.6, max(len(lanes), 1) - 0.4)
            top_axis.set_yticks(range(len(lanes)), lanes if column_index == 0 else [""] * len(lanes), fontsize=6)
            top_axis.tick_params(axis="x", labelbottom=False, length=0)
            top_axis.tick_params(axis="y", length=0)
            for lane, name in enumerate(lanes):
                points = rows[rows["category"] == name]
                if points.empty:
                    continue
                failure = is_failure_outcome(str(points["outcome"].iloc[0]))
                jitter = rng.uniform(-0.28, 0.28, len(points))
                colour = category_colour(name)
                top_axis.scatter(
                    points["x"],
                    lane + jitter,
                    s=12 if failure else 10,
                    marker=_BAND_MARKERS[failure],
                    alpha=0.6,
                    rasterized=True,
                    linewidths=0 if failure else 0.8,
                    c=colour if failure else "none",
                    edgecolors=colour,
                )
            for spine in top_axis.spines.values():
                spine.set_color("#bbbbbb")
            if row == 0:
                top_axis.set_title(dtype)
            if row == len(impls) - 1:
                axis.set_xlabel(label)
            else:
                axis.tick_params(axis="x", labelbottom=False)
            if column_index == 0:
                axis.set_ylabel("ULPs", fontsize=7)
                top_axis.text(
                    -0.42,
                    -0.25,
                    impl,
                    transform=top_axis.transAxes,
                    fontsize=9,
                    fontweight="bold",
                    color=colours[impl],
                    ha="left",
                    va="center",
                    rotation=90,
                )
    handles = [
        Line2D([], [], marker="o", linestyle="", color=CATEGORIES[c], label=c)
        for c in ("exact", "within allowance", "inaccurate", "unstable error")
    ]
    for name in lanes:
        failure = name not in CATEGORIES or is_failure_outcome(
            str(band.loc[band["category"] == name, "outcome"].iloc[0])
        )
        handles.append(
            Line2D(
                [],
                [],
                marker=_BAND_MARKERS[failure],
                linestyle="",
                label=f"{name} (band)",
                color=category_colour(name),
                markerfacecolor=category_colour(name) if failure else "none",
            )
        )
    figure.legend(
        handles=handles,
        loc="upper center",
        ncol=min(len(handles), 6),
        frameon=False,
        bbox_to_anchor=(0.5, 0.06 if len(impls) > 1 else 0.0),
    )
    return png(figure)


def _bucket(ulps: pd.Series) -> pd.Series:
    labels = pd.Series(index=ulps.index, dtype=object)
    for name, low, high in _BUCKETS:
        labels[(ulps >= low) & (ulps <= high)] = name
    return labels


def ulp_histograms(records: pd.DataFrame, max_ulps: float | None = None) -> bytes:
    """Counts of finite results per ULP bucket, one panel per dtype, implementations side by side.

    Only finite comparisons (exact and finite_error); non-finite results are counted in
    the outcome bars. Counts on a log axis, so rare large errors stay visible.
    """
    impls, dtypes = _impls(records), _dtypes(records)
    finite = records[records["outcome"].isin(_FINITE)]
    colours = implementation_colours(impls)
    names = [b[0] for b in _BUCKETS]
    figure, axes = plt.subplots(1, len(dtypes), figsize=(3.0 * len(dtypes) + 0.5, 2.9), squeeze=False, sharey=True)
    width = 0.8 / max(len(impls), 1)
    for axis, dtype in zip(axes[0], dtypes):
        subset = finite[finite["dtype"] == dtype]
        for k, impl in enumerate(impls):
            counts = _bucket(subset.loc[subset["impl"] == impl, "ulps"]).value_counts().reindex(names, fill_value=0)
            positions = np.arange(len(names)) - 0.4 + width * (k + 0.5)
            axis.bar(positions, counts.to_numpy(), width=width, color=colours[impl], label=impl)
        if max_ulps is not None and max_ulps == 4:  # the bucket edge between 2–4 and 5–16
            axis.axvline(2.5, color="#e08214", linestyle=":", linewidth=0.9)
            axis.text(
                2.55, 0.97, "--max-ulps 4", transform=axis.get_xaxis_transform(), fontsize=6, color="#b35806", va="top"
            )
        if len(subset):  # a log scale needs a positive count (a run that graded nothing has none)
            axis.set_yscale("log")
        axis.set_xticks(range(len(names)), names, rotation=35, fontsize=7)
        axis.set_title(dtype)
        axis.set_xlabel("ULPs from the correctly rounded loss")
        axis.spines[["top", "right"]].set_visible(False)
    axes[0][0].set_ylabel("finite results (log scale)")
    figure.legend(
        *axes[0][0].get_legend_handles_labels(),
        loc="lower center",
        bbox_to_anchor=(0.5, 0.98),
        ncol=len(impls),
        frameon=False,
    )
    return png(figure)


# The ULP distribution of the precision audit: finite results by ULPs, then the rest.
PRECISION_BUCKETS = {
    "0 ULPs (correctly rounded)": "#08519c",
    "1 ULP": "#3182bd",
    "2 ULPs": "#9ecae1",
    "3 ULPs": "#deebf7",
    "> 3 ULPs": "#fdb863",
    "accepted inf/NaN": CATEGORIES["accepted NaN"],
    "failed": CATEGORIES["spurious inf"],
    "ungraded": CATEGORIES["uncertified oracle"],
}


def precision_bars(table: pd.DataFrame) -> bytes:
    """Per (method, dtype), a stacked bar of the ULP distribution over all regimes.

    ``table`` is ``reports.precision.precision_totals``: shares per bucket (ulps_0 ...
    ulps_gt3 for finite results, accepted_nonfinite, failed, ungraded), correctly_rounded
    and above_bound. Right of each bar: the share correctly rounded and the results above
    the Blanchard–Higham–Higham bound.
    """
    columns = ["ulps_0", "ulps_1", "ulps_2", "ulps_3", "ulps_gt3", "accepted_nonfinite", "failed", "ungraded"]
    impls = list(dict.fromkeys(table["impl"]))
    colours = implementation_colours(impls)
    impl_index = {name: k for k, name in enumerate(impls)}
    y = np.array([k + 0.6 * impl_index[i] for k, i in enumerate(table["impl"])])
    figure, axis = plt.subplots(figsize=(10, 0.3 * len(table) + 0.6 * len(impls) + 1.2))
    left = np.zeros(len(table))
    for column, (name, colour) in zip(columns, PRECISION_BUCKETS.items()):
        width = table[column].to_numpy(dtype=float)
        if width.sum() == 0 and column in ("failed", "ungraded", "accepted_nonfinite"):
            continue
        axis.barh(y, width, left=left, color=colour, label=name, height=0.8, edgecolor="white", linewidth=0.3)
        left += width
    for position, row in zip(y, table.itertuples(index=False)):
        text = f"{100 * row.correctly_rounded:.0f}% correctly rounded"
        text += f", {row.above_bound} above the bound" if row.above_bound else ", none above the bound"
        axis.text(
            1.01,
            position,
            text,
            va="center",
            fontsize=7,
            transform=axis.get_yaxis_transform(),
            color="#a50026" if row.above_bound else "#333333",
        )
    axis.set_yticks(y, list(table["dtype"]))
    for tick, impl in zip(axis.get_yticklabels(), table["impl"]):
        tick.set_color(colours[impl])
    for impl in impls:
        group = y[(table["impl"] == impl).to_numpy()]
        axis.text(
            -0.08,
            group.mean(),
            impl,
            transform=axis.get_yaxis_transform(),
            ha="right",
            va="center",
            fontsize=8,
            fontweight="bold",
            color=colours[impl],
        )
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
    axis.set_xlabel("share of results, all regimes")
    axis.spines[["top", "right"]].set_visible(False)
    axis.legend(ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.6 / (0.3 * len(table) + 1.2)), frameon=False)
    return png(figure)


def bound_ratio(frame: pd.DataFrame, safety: float) -> bytes:
    """Measured error over the Blanchard–Higham–Higham bound against the regime, one panel per dtype.

    ``frame`` holds one row per record with ``error_over_bound`` (``reports.precision``).
    Methods sit side by side within each regime, jittered; a zero error (correctly
    rounded, or exact at the limit) is not drawn (the ULP bars count it). Failures and
    non-finite results (an infinite ratio) go in the band above. The bound (ratio 1)
    and the stability allowance (ratio ``safety``) are marked with their values.
    """
    impls, dtypes = _impls(frame), _dtypes(frame)
    regimes = sorted(set(frame["regime"]))
    colours = implementation_colours(impls)
    rng = np.random.default_rng(0)
    figure = plt.figure(figsize=(max(8.0, 0.62 * len(regimes) + 1.5), 3.0 * len(dtypes) + 0.6))
    grid = figure.add_gridspec(2 * len(dtypes), 1, height_ratios=[0.3, 2.6] * len(dtypes), hspace=0.16, top=0.93)
    finite_ratio = frame["error_over_bound"].replace(np.inf, np.nan)
    positive = finite_ratio[finite_ratio > 0]
    low = max(float(positive.min()) / 2, 1e-6) if len(positive) else 1e-3
    high = max(float(positive.max()) * 2, safety * 2) if len(positive) else safety * 2
    width = 0.8 / max(len(impls), 1)
    for row, dtype in enumerate(dtypes):
        band = figure.add_subplot(grid[2 * row])
        axis = figure.add_subplot(grid[2 * row + 1], sharex=band)
        subset = frame[frame["dtype"] == dtype]
        for k, impl in enumerate(impls):
            mine = subset[subset["impl"] == impl]
            x = mine["regime"].map({r: i for i, r in enumerate(regimes)}).to_numpy(dtype=float)
            x = x - 0.4 + width * (k + 0.5) + rng.uniform(-width / 3, width / 3, len(mine))
            ratio = mine["error_over_bound"].to_numpy(dtype=float)
            shown = (ratio > 0) & np.isfinite(ratio)
            axis.scatter(
                x[shown], ratio[shown], s=10, alpha=0.55, color=colours[impl], linewidths=0, label=impl, rasterized=True
            )
            failed = ~np.isfinite(ratio)
            band.scatter(
                x[failed],
                rng.uniform(-0.3, 0.3, int(failed.sum())),
                s=14,
                marker="X",
                linewidths=0,
                color=CATEGORIES["spurious inf"],
                alpha=0.7,
            )
        axis.set_yscale("log")
        axis.set_ylim(low, high)
        for level, text, colour, where in (
            (1.0, "the bound: error / bound = 1", "#b2182b", "top"),
            (safety, f"stability allowance: {safety:g} × the bound", "#e08214", "bottom"),
        ):
            axis.axhline(level, color=colour, linestyle="--", linewidth=1)
            axis.text(
                0.995,
                level,
                text,
                transform=axis.get_yaxis_transform(),
                ha="right",
                va=where,
                fontsize=6.5,
                color=colour,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 0.5},
            )
        for boundary in range(1, len(regimes)):
            axis.axvline(boundary - 0.5, color="#e0e0e0", linewidth=0.6, zorder=0)
        band.set_facecolor("#f3f3f3")
        band.set_ylim(-0.6, 0.6)
        band.set_yticks([0], ["failed or inf/NaN"], fontsize=6)
        band.tick_params(axis="x", labelbottom=False, length=0)
        band.set_title(dtype, loc="left", pad=3, fontweight="bold")
        axis.set_ylabel("error / BHH bound")
        axis.set_xlim(-0.5, len(regimes) - 0.5)
        axis.set_xticks(
            range(len(regimes)), regimes if row == len(dtypes) - 1 else [""] * len(regimes), rotation=30, ha="right"
        )
    handles = [Line2D([], [], marker="o", linestyle="", color=colours[i], label=i) for i in impls]
    figure.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.95), ncol=len(impls), frameon=False)
    return png(figure)
