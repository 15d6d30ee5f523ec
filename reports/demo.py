"""The teaching page of `python -m harness demo`: a table of thresholds, a plot, a short story."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import asdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from reports.plots import png

__all__ = ["curves_png", "render_demo"]

COLOURS = {"naive": "#c62828", "stable": "#1565c0", "torch": "#2e7d32", "oracle": "#000000"}


def curves_png(curves_by_dtype: dict[str, dict[str, list[float]]], overflow: dict[str, float]) -> bytes:
    """Loss against logit scale per dtype; naive's inf/NaN drawn as crosses along the top."""
    figure, axes = plt.subplots(1, len(curves_by_dtype), figsize=(4.4 * len(curves_by_dtype), 3.6), squeeze=False)
    for axis, (dtype, curves) in zip(axes[0], curves_by_dtype.items()):
        top = max(v for v in curves["oracle"] if math.isfinite(v)) * 1.4
        for name in ("oracle", "stable", "torch", "naive"):
            xs, ys = curves["scale"], curves[name]
            finite = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
            broken = [x for x, y in zip(xs, ys) if not math.isfinite(y)]
            style = {"linewidth": 3, "alpha": 0.35} if name == "oracle" else {"linewidth": 1.3}
            if finite:
                axis.plot(*zip(*finite), color=COLOURS[name], label=name, **style)
            if broken:
                axis.scatter(broken, [top] * len(broken), marker="x", color=COLOURS[name], s=18,
                             label=f"{name}: inf/NaN")  # fmt: skip
        axis.axvline(overflow[dtype], color="grey", linestyle="--", linewidth=1)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(f"{dtype}: loss of [s, 0], target 1")
        axis.set_xlabel("logit scale s")
    axes[0][0].set_ylabel("loss")
    axes[0][0].legend(fontsize=7)
    return png(figure)


def _rows(thresholds) -> list[dict]:
    return [asdict(t) for t in thresholds]


def render_demo(thresholds, dominant: dict, plot: bytes) -> tuple[str, str]:
    """(Markdown, HTML) of the demonstration."""
    head = ["dtype", "naive breaks at", "ln(max finite) boundary", "exp underflows below", "theory",
            "stable there", "torch there", "oracle"]  # fmt: skip
    rows = [
        [t.dtype, f"{t.naive_breaks_at:.7g}", f"{t.theory_overflow:.7g}", f"{t.exp_underflows_below:.7g}",
         f"{t.theory_underflow:.7g}", f"{t.stable_loss:.7g} ({t.stable_ulps:g} ULP)",
         f"{t.torch_loss:.7g} ({t.torch_ulps:g} ULP)", f"{t.oracle_loss:.7g}"]
        for t in thresholds
    ]  # fmt: skip
    story = [
        "Why naive softmax breaks: exp(x) overflows to inf once x passes ln(largest finite value), and inf/inf "
        "is NaN; for very negative logits exp underflows to 0, and 0/0 is NaN or log 0 is -inf. Shifting by the "
        "row maximum first (the seed notebook's method) keeps every exponent at or below 0, so nothing "
        "overflows, and the largest term is exactly 1, so the sum never underflows.",
        "The thresholds below were found by bisection over each format's own values, not read from a table.",
    ]
    d = dominant
    dominant_text = (
        f"Where even the shifted version loses: with one dominant logit {d['logits']} ({d['dtype']}, target "
        f"{d['target']}), the exact loss is log1p(exp(-{d['logits'][0]:g})) = {d['exact']:.6g}, and its correctly "
        f"rounded value is {d['oracle']:.6g}; but 1 + exp(-{d['logits'][0]:g}) rounds to 1, so stable returns "
        f"{d['stable']:.6g} and torch {d['torch']:.6g} (pytorch#113708). A log1p form keeps it."
    )
    markdown = "\n".join(
        ["# Overflow and underflow in softmax cross entropy", "", *story, "",
         "| " + " | ".join(head) + " |", "|" + "---|" * len(head), *["| " + " | ".join(r) + " |" for r in rows],
         "", dominant_text, "", "![loss against logit scale](demo.png)", ""]
    )  # fmt: skip
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    ) + "</table>"  # fmt: skip
    image = f'<img alt="loss against logit scale" src="data:image/png;base64,{base64.b64encode(plot).decode()}">'
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Softmax overflow demo</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.25em .5em}img{max-width:100%}</style></head><body>"
        "<h1>Overflow and underflow in softmax cross entropy</h1>"
        + "".join(f"<p>{html.escape(p)}</p>" for p in story) + table
        + f"<p>{html.escape(dominant_text)}</p>{image}</body></html>\n"
    )  # fmt: skip
    return markdown, page
