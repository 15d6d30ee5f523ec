"""The teaching page of `python -m harness demo`: three stories, each a figure, a table of thresholds.

Figures (one column per dtype): overflow (the loss of [s, 0] and the exp(s) that naive
computes, against the format's largest value), underflow (the loss of [-s, 0] with the
target at -s, and exp(-s) against the smallest subnormal), and a loss near 0 (one
dominant logit: 1 + exp(-s) rounds to 1). The exact loss is a thick grey line; the
methods are drawn with their own colours, line styles and interleaved markers, so two
methods on the same values both stay visible; inf and NaN sit in a marked band above the
panel, zeros of a log-scale panel in a band below, never at a value.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import asdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from harness.demo import METHODS
from harness.formats import FORMATS
from reports.palette import CATEGORIES, implementation_colours
from reports.plots import png

__all__ = ["STORIES", "render_demo", "story_png"]

_COLOURS = {**implementation_colours(["stable", "naive", "torch"]), "log1p": "#35978f"}
_STYLE = {
    "naive": {"linestyle": "-", "marker": "^", "markevery": (0, 3), "linewidth": 1.4, "markersize": 4, "zorder": 4},
    "stable": {
        "linestyle": "--",
        "marker": "o",
        "markevery": (1, 3),
        "linewidth": 1.2,
        "markersize": 4,
        "markerfacecolor": "none",
    },
    "torch": {"linestyle": ":", "marker": "x", "markevery": (2, 3), "linewidth": 1.4, "markersize": 4},
    "log1p": {
        "linestyle": "-.",
        "marker": "s",
        "markevery": (1, 2),
        "linewidth": 1.2,
        "markersize": 3.5,
        "markerfacecolor": "none",
    },
}
_INF, _NAN = CATEGORIES["spurious inf"], CATEGORIES["spurious NaN"]

STORIES = {
    "overflow": {
        "title": "Overflow: a large logit",
        "file": "demo-overflow.png",
        "loss": "loss of logits [s, 0], target 1",
        "intermediate": "exp(s), as naive computes it",
        "text": "Naive softmax-then-log computes exp(s) first. Once s passes ln(largest finite value), exp(s) "
        "is inf, inf / inf is NaN and the loss is lost, though the exact loss (about s) is an ordinary number. "
        "The max-shifted log-sum-exp subtracts the largest logit first, so it only ever computes exp(0) = 1 "
        "and exp(-s) ≤ 1: nothing overflows.",
    },
    "underflow": {
        "title": "Underflow: a very unlikely target",
        "file": "demo-underflow.png",
        "loss": "loss of logits [−s, 0], target 0",
        "intermediate": "exp(−s), as naive computes it",
        "text": "Here the target's logit is −s. Naive computes its probability exp(−s) / (exp(−s) + 1); once "
        "exp(−s) drops below half the smallest subnormal it is 0, log 0 is −inf and the loss is inf, though the "
        "exact loss is about s. The max-shifted log-sum-exp never takes the log of a probability: it adds "
        "(max − target logit) = s to log(sum) = log(1 + exp(−s)), so the target's probability never has to "
        "be represented.",
    },
    "dominant": {
        "title": "A loss near 0: one dominant logit",
        "file": "demo-dominant.png",
        "loss": "loss of logits [s, 0], target 0",
        "text": "The target dominates, so the exact loss log(1 + exp(−s)) ≈ exp(−s) is tiny but representable. "
        "The max-shifted log-sum-exp forms 1 + exp(−s), which rounds to 1 once exp(−s) is at most the unit "
        "roundoff u, and returns 0: every digit is lost (pytorch#113708). Taking log1p of the sum of the other "
        "terms keeps them. Naive overflows here too, as in the first story.",
    },
}


def _band(axis, xs: np.ndarray, lanes: list[tuple[str, np.ndarray, str, str]]) -> None:
    """A grey band of lanes: per lane (name, mask of points, colour, marker)."""
    axis.set_facecolor("#f3f3f3")
    axis.set_ylim(-0.6, max(len(lanes), 1) - 0.4)
    for lane, (_, mask, colour, marker) in enumerate(lanes):
        if mask.any():
            axis.scatter(xs[mask], np.full(int(mask.sum()), lane), s=14, marker=marker, color=colour, linewidths=0.9)
    axis.set_yticks(range(len(lanes)), [name for name, *_ in lanes], fontsize=6)
    axis.tick_params(axis="x", labelbottom=False, length=0)
    axis.tick_params(axis="y", length=0)
    for spine in axis.spines.values():
        spine.set_color("#bbbbbb")


def _vline(axis, x: float, text: str, colour: str = "#555555") -> None:
    axis.axvline(x, color=colour, linestyle="--", linewidth=0.9)
    low, high = axis.get_xlim()
    right = math.log(x / low) / math.log(high / low) > 0.55
    axis.text(
        x,
        0.03,
        (text + " ") if right else (" " + text),
        transform=axis.get_xaxis_transform(),
        fontsize=6,
        color=colour,
        ha="right" if right else "left",
        va="bottom",
        bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 0.5},
    )


def _hline(axis, y: float, text: str, colour: str = "#b2182b", where: str = "bottom") -> None:
    axis.axhline(y, color=colour, linestyle="--", linewidth=0.9)
    axis.text(
        0.02,
        y,
        " " + text,
        transform=axis.get_yaxis_transform(),
        fontsize=6,
        color=colour,
        va=where,
        bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 0.5},
    )


def _decade_ticks(axis, low: float, high: float) -> None:
    """At most about six power-of-ten ticks inside [low, high], in steps of 1, 2, 5, 10, 20, 50 or 100 decades
    (matplotlib's own locator overflows near 1e308)."""
    low, high = max(low, 5e-324), min(high, 1.7e308)
    first, last = math.ceil(math.log10(low)), math.floor(math.log10(high))
    step = next((d for d in (1, 2, 5, 10, 20, 50, 100) if (last - first) / d <= 5), 200)
    ticks = [k for k in range(first - first % step, last + 1, step) if k >= first]
    axis.set_yticks([10.0**k for k in ticks], [f"$10^{{{k}}}$" if k not in (0, 1) else f"{10**k}" for k in ticks])
    axis.yaxis.set_minor_locator(NullLocator())


def story_png(story: str, panels_by_dtype: dict[str, dict[str, dict]]) -> bytes:
    """One story's figure: a column per dtype; the loss (with its inf/NaN band) and, for overflow and
    underflow, the intermediate exp below it."""
    spec = STORIES[story]
    dtypes = list(panels_by_dtype)
    with_intermediate = "intermediate" in spec
    ratios = [0.5, 2.2, *([1.5] if with_intermediate else []), *([0.4] if story == "dominant" else [])]
    figure = plt.figure(figsize=(3.0 * len(dtypes) + 0.6, 1.05 * sum(ratios) + 1.0))
    grid = figure.add_gridspec(len(ratios), len(dtypes), height_ratios=ratios, hspace=0.12, wspace=0.28)
    methods = [m for m in METHODS if m in next(iter(panels_by_dtype.values()))[story]]
    for column, dtype in enumerate(dtypes):
        fmt, data = FORMATS[dtype], panels_by_dtype[dtype][story]
        s = np.array(data["s"])
        keep = s <= -fmt.exp_underflow * 1.15 if story == "dominant" else np.ones(len(s), dtype=bool)
        s = s[keep]
        band = figure.add_subplot(grid[0, column])
        axis = figure.add_subplot(grid[1, column], sharex=band)
        exact = np.array(data["exact"])[keep]
        axis.plot(s, exact, color="#9e9e9e", linewidth=6, alpha=0.55, solid_capstyle="round", zorder=1)
        lanes = []
        zeros = []
        for name in methods:
            values = np.array(data[name], dtype=float)[keep]
            finite = np.isfinite(values) & ((values > 0) if story == "dominant" else True)
            shown = np.where(finite, values, np.nan)
            axis.plot(s, shown, color=_COLOURS[name], **{"zorder": 3, **_STYLE[name]})
            lanes.append((f"{name} → inf", np.isinf(values), _INF, "X"))
            lanes.append((f"{name} → NaN", np.isnan(values), _NAN, "X"))
            if story == "dominant":
                zeros.append((f"{name} → 0", values == 0, _COLOURS[name], _STYLE[name]["marker"]))
        lanes = [lane for lane in lanes if lane[1].any()] or [("none", np.zeros(len(s), dtype=bool), _INF, "X")]
        _band(band, s, lanes)
        axis.set_xscale("log")
        axis.set_yscale("log")
        band.set_title(dtype, fontweight="bold")
        axis.set_xlim(s.min() / 1.2, s.max() * 1.2)
        if story == "overflow":
            _vline(axis, fmt.exp_overflow, f"exp(s) = inf\nfor s > {fmt.exp_overflow:.4g}")
        elif story == "underflow":
            _vline(axis, -fmt.exp_underflow, f"exp(−s) = 0\nfor s > {-fmt.exp_underflow:.4g}")
        else:
            edge = -math.log(fmt.unit_roundoff)
            _vline(axis, edge, f"1 + exp(−s) = 1\nfor s ≥ {edge:.4g}")
        _decade_ticks(axis, *axis.get_ylim())
        if column == 0:
            axis.set_ylabel(spec["loss"])
        row = 2
        if with_intermediate:
            lower = figure.add_subplot(grid[row, column], sharex=band)
            values = np.array(data["intermediate"], dtype=float)[keep]
            ok = np.isfinite(values) & (values > 0)
            lower.plot(s[ok], values[ok], color=_COLOURS["naive"], **_STYLE["naive"])
            lower.set_yscale("log")
            edge = lower.get_xaxis_transform()  # x in data, y in axes fractions: inf and 0 have no height
            if story == "overflow":
                top = fmt.max_finite * 1e3 if fmt.max_finite < 1e300 else fmt.max_finite
                lower.set_ylim(0.5, top)
                _decade_ticks(lower, 0.5, top)
                _hline(lower, fmt.max_finite, f"largest {dtype}: {fmt.max_finite:.4g}", where="top")
                bad = ~np.isfinite(values)
                lower.scatter(s[bad], np.full(int(bad.sum()), 0.93), transform=edge, marker="X", color=_INF, s=14)
                lower.text(
                    0.02, 0.93, "×: exp(s) = inf", transform=lower.transAxes, fontsize=6, color=_INF, va="center"
                )
            else:
                bottom = fmt.smallest_subnormal / 1e3 if fmt.smallest_subnormal > 1e-300 else fmt.smallest_subnormal
                lower.set_ylim(bottom, 2)
                _decade_ticks(lower, bottom, 2)
                _hline(lower, fmt.smallest_subnormal, f"smallest {dtype}: {fmt.smallest_subnormal:.3g}", "#2166ac")
                bad = values == 0
                lower.scatter(s[bad], np.full(int(bad.sum()), 0.07), transform=edge, marker="X", color=_INF, s=14)
                lower.text(0.98, 0.15, "×: exp(−s) = 0", transform=lower.transAxes, ha="right", fontsize=6, color=_INF)
            if column == 0:
                lower.set_ylabel(spec["intermediate"])
            axis.tick_params(axis="x", labelbottom=False)
            lower.set_xlabel("s")
            row += 1
        else:
            axis.set_xlabel("s")
        if story == "dominant":
            axis.tick_params(axis="x", labelbottom=False)
            axis.set_xlabel("")
            below = figure.add_subplot(grid[row, column], sharex=band)
            _band(below, s, zeros)
            below.tick_params(axis="x", labelbottom=True, length=3)
            below.set_xlabel("s")
            below.set_title("returned exactly 0", fontsize=6, loc="right", color="#555555", pad=2)
    handles = [Line2D([], [], color="#9e9e9e", linewidth=6, alpha=0.55, label="exact loss")]
    handles += [
        Line2D([], [], color=_COLOURS[m], label=METHODS[m], **{k: v for k, v in _STYLE[m].items() if k != "markevery"})
        for m in methods
    ]
    figure.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.9), ncol=len(handles), frameon=False)
    figure.subplots_adjust(top=0.86)
    return png(figure)


def _rows(thresholds) -> list[dict]:
    return [asdict(t) for t in thresholds]


def render_demo(thresholds, dominant: dict, figures: dict[str, bytes]) -> tuple[str, str]:
    """(Markdown, HTML) of the demonstration; ``figures`` maps each story of STORIES to its PNG."""
    head = [
        "dtype",
        "naive breaks at",
        "ln(max finite) boundary",
        "exp underflows below",
        "theory",
        "max-shifted there",
        "torch there",
        "correctly rounded",
    ]
    rows = [
        [
            t.dtype,
            f"{t.naive_breaks_at:.7g}",
            f"{t.theory_overflow:.7g}",
            f"{t.exp_underflows_below:.7g}",
            f"{t.theory_underflow:.7g}",
            f"{t.stable_loss:.7g} ({t.stable_ulps:g} ULP)",
            f"{t.torch_loss:.7g} ({t.torch_ulps:g} ULP)",
            f"{t.oracle_loss:.7g}",
        ]
        for t in thresholds
    ]
    story = [
        "Why naive softmax breaks: exp(x) overflows to inf once x passes ln(largest finite value), and inf/inf "
        "is NaN; for very negative logits exp underflows to 0, and log 0 is -inf. Subtracting the row maximum "
        "first (the max-shifted log-sum-exp: loss = (max − target logit) + log Σ exp(x − max)) keeps every "
        "exponent at or below 0, so nothing overflows, and the largest term is exactly 1, so the sum never "
        "underflows.",
        "The thresholds below were found by bisection over each format's own values (on logits [x, 0], target 1), "
        "not read from a table.",
    ]
    d = dominant
    dominant_text = (
        f"Where even the max-shifted version loses: with one dominant logit {d['logits']} ({d['dtype']}, target "
        f"{d['target']}), the exact loss is log1p(exp(-{d['logits'][0]:g})) = {d['exact']:.6g}, and its correctly "
        f"rounded value is {d['oracle']:.6g}; but 1 + exp(-{d['logits'][0]:g}) rounds to 1, so the max-shifted "
        f"log-sum-exp returns {d['stable']:.6g} and torch {d['torch']:.6g} (pytorch#113708). A log1p form keeps it."
    )
    legend = "Methods: " + "; ".join(f"{v}" for v in METHODS.values()) + ". The exact loss is the thick grey line."
    sections_md, sections_html = [], []
    for name, spec in STORIES.items():
        sections_md += [f"## {spec['title']}", "", spec["text"], "", f"![{spec['title']}]({spec['file']})", ""]
        image = base64.b64encode(figures[name]).decode()
        sections_html.append(
            f"<h2>{html.escape(spec['title'])}</h2><p>{html.escape(spec['text'])}</p>"
            f'<img alt="{html.escape(spec["title"])}" src="data:image/png;base64,{image}">'
        )
    markdown = "\n".join(
        [
            "# Overflow and underflow in softmax cross entropy",
            "",
            *story,
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
            *["| " + " | ".join(r) + " |" for r in rows],
            "",
            dominant_text,
            "",
            legend,
            "",
            *sections_md,
        ]
    )
    table = (
        "<div class='wrap'><table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        + "</table></div>"
    )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'><title>Softmax overflow demo</title>"
        "<style>*{box-sizing:border-box}body{font-family:system-ui,sans-serif;margin:0 auto;padding:1em 20px;"
        "max-width:1240px;line-height:1.45;color:#222}table{border-collapse:collapse;font-size:.85em}"
        "td,th{border:1px solid #ccc;padding:.25em .5em}th{background:#f0f0f0}.wrap{max-width:100%;overflow-x:auto}"
        "img{max-width:100%;height:auto;display:block}p{max-width:75em}</style></head><body>"
        "<h1>Overflow and underflow in softmax cross entropy</h1>"
        + "".join(f"<p>{html.escape(p)}</p>" for p in story)
        + table
        + f"<p>{html.escape(dominant_text)}</p><p>{html.escape(legend)}</p>"
        + "".join(sections_html)
        + "</body></html>\n"
    )
    return markdown, page
