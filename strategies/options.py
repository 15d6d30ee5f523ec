"""Strategies for the options of cross entropy, with the extremes that break them.

``loss_options`` draws the keyword values an implementation is called with (and which of
a case's targets are ignored); ``probability_rows`` draws probability targets. Values are
exact in the case's format (torch requires class weights and probability targets in
the logits' dtype). See harness.oracle.options for the exact semantics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from harness.formats import Format
from harness.oracle.options import OPTION_NAMES, REDUCTIONS, LossOptions
from strategies.floats import as_format, format_values, round_to_format

__all__ = ["IGNORE_INDEX", "class_weights", "loss_options", "probability_rows"]

IGNORE_INDEX = -100  # torch's default


def _check_names(names: Iterable[str]) -> frozenset[str]:
    names = frozenset(names)
    unknown = sorted(names - set(OPTION_NAMES))
    if unknown:
        raise InvalidArgument(f"unknown option {unknown[0]!r}; expected some of {', '.join(OPTION_NAMES)}")
    return names


def class_weights(dtype: torch.dtype | str | Format, n_classes: int) -> st.SearchStrategy[tuple[float, ...]]:
    """C class weights in the format: ones, moderate values, exact zeros, subnormals and huge values mixed.

    Huge weights (up to a quarter of the largest finite value) make weighted sums overflow;
    subnormal ones underflow products; zeros exclude classes (even at −inf logits).
    """
    fmt = as_format(dtype)
    if n_classes < 1:
        raise InvalidArgument(f"n_classes must be >= 1, got {n_classes}")
    huge_exponent = fmt.emax - 2
    value = st.one_of(
        st.just(1.0),
        st.just(0.0),
        format_values(fmt, min_exponent=-4, max_exponent=4, sign=1),
        st.just(fmt.smallest_subnormal),
        format_values(fmt, min_exponent=max(fmt.emin, huge_exponent - 2), max_exponent=huge_exponent, sign=1),
    )
    if n_classes <= 64:
        return st.lists(value, min_size=n_classes, max_size=n_classes).map(tuple)
    # vocabulary-size weights: a drawn fill with a few drawn classes, so Hypothesis can shrink them
    return st.tuples(value, st.lists(st.tuples(st.integers(0, n_classes - 1), value), max_size=8)).map(
        lambda pair: _planted(n_classes, *pair)
    )


def _planted(n: int, fill: float, planted: Sequence[tuple[int, float]]) -> tuple[float, ...]:
    out = [fill] * n
    for index, value in planted:
        out[index] = value
    return tuple(out)


@st.composite
def loss_options(
    draw, dtype: torch.dtype | str | Format, n_classes: int, targets: Sequence[int], names: Iterable[str]
) -> tuple[LossOptions, list[int]]:
    """(options, targets with the ignored ones replaced by ignore_index) for one case.

    ``names``: the options to exercise (others keep torch's defaults). Ignored targets:
    none, some, all, or all but one; weights may be zero at the only non-ignored target;
    label smoothing 0, tiny, 1 or in between; z-loss 0, small or large (lse² overflows
    float16); soft-capping below the logits' scale, so tanh saturates.
    """
    fmt = as_format(dtype)
    names = _check_names(names)
    targets = list(targets)
    ignore_index = IGNORE_INDEX
    if "ignore_index" in names and targets:
        ignore_index = draw(st.sampled_from([IGNORE_INDEX, -1, n_classes - 1]))
        pattern = draw(st.sampled_from(["none", "some", "all", "all_but_one"]))
        if pattern == "all":
            targets = [ignore_index] * len(targets)
        elif pattern == "all_but_one":
            keep = draw(st.integers(0, len(targets) - 1))
            targets = [t if i == keep else ignore_index for i, t in enumerate(targets)]
        elif pattern == "some":
            mask = draw(st.lists(st.booleans(), min_size=len(targets), max_size=len(targets)))
            targets = [ignore_index if m else t for m, t in zip(mask, targets)]
    weight = None
    if "weight" in names and draw(st.booleans()):
        weight = list(draw(class_weights(fmt, n_classes)))
        live = [t for t in targets if t != ignore_index]
        if len(set(live)) == 1 and draw(st.booleans()):
            weight[live[0]] = 0.0  # zero weight at the only non-ignored target: a mean of 0 / 0
        weight = tuple(weight)
    smoothing = 0.0
    if "label_smoothing" in names:
        smoothing = draw(st.one_of(st.sampled_from([0.0, 1.0, 0.1]), st.floats(1e-12, 1e-6), st.floats(0.01, 0.99)))
    z_loss = 0.0
    if "z_loss" in names:
        z_loss = draw(st.one_of(st.sampled_from([0.0, 1e-4, 1.0]), st.floats(1e-8, 1e-2), st.floats(1.0, 1e3)))
    softcap = None
    if "softcap" in names:
        softcap = draw(st.one_of(st.none(), st.sampled_from([30.0, 50.0]), st.floats(0.25, 8.0)))
    reduction = draw(st.sampled_from(REDUCTIONS)) if "reduction" in names else "none"
    options = LossOptions(weight=weight, ignore_index=ignore_index, reduction=reduction,
                          label_smoothing=smoothing, z_loss=z_loss, softcap=softcap)  # fmt: skip
    return options, targets


@st.composite
def probability_rows(draw, dtype: torch.dtype | str | Format, row: Sequence[float]) -> list[float]:
    """Probability targets for one row of logits, exact in the format.

    One-hot, smoothed one-hot, spread over a few classes, with exact zeros at −inf logits,
    and rows that do not sum to 1 exactly in the format (the rounding of each entry).
    """
    fmt = as_format(dtype)
    n = len(row)
    if n < 1:
        raise InvalidArgument("a probability row needs at least one class")
    kind = draw(st.sampled_from(["one_hot", "smoothed", "spread", "masked_zeros"]))
    hot = draw(st.integers(0, n - 1))
    if kind == "one_hot":
        probs = [1.0 if j == hot else 0.0 for j in range(n)]
    elif kind == "smoothed":
        eps = draw(st.sampled_from([0.1, 0.01, 1e-4]))
        probs = [(1 - eps) * (j == hot) + eps / n for j in range(n)]
    else:
        raw = draw(st.lists(st.integers(0, 8), min_size=n, max_size=n))
        if kind == "masked_zeros":
            raw = [0 if row[j] == -math.inf else r for j, r in enumerate(raw)]
        if not any(raw):
            finite = [j for j in range(n) if row[j] != -math.inf] or [hot]
            raw[finite[0]] = 1
        total = sum(raw)
        probs = [r / total for r in raw]
    return [round_to_format(p, fmt) for p in probs]
