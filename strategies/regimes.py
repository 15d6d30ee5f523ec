"""One row builder per regime: each returns a strategy of (row values, target index).

A row is a list of Python floats, or a float64 tensor, exactly representable in the
format. Builders only describe *what* extreme a row exercises; strategies.cases
assembles rows into cases (and builds the batch, strided and layout regimes' cases whole).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from hypothesis import strategies as st

from harness.formats import Format
from strategies.floats import format_values, near_values, round_to_format, ulp_of
from strategies.sizes import VOCABULARIES
from strategies.tiles import tiled_rows

__all__ = ["LARGE_VOCABULARIES", "REGIMES", "SMALL_REGIMES", "row_strategy"]

Row = tuple[list[float] | torch.Tensor, int]
RowBuilder = Callable[[Format, int], st.SearchStrategy[Row]]

LARGE_VOCABULARIES: tuple[int, ...] = VOCABULARIES
NEG_INF = -math.inf


def _moderate_values(fmt: Format) -> st.SearchStrategy[float]:
    return format_values(fmt, min_exponent=max(fmt.emin, -6), max_exponent=3)


def _rows(values: st.SearchStrategy[float], n_classes: int) -> st.SearchStrategy[Row]:
    return st.tuples(st.lists(values, min_size=n_classes, max_size=n_classes), st.integers(0, n_classes - 1)).map(
        lambda pair: (pair[0], pair[1])
    )


def moderate(fmt: Format, n_classes: int) -> st.SearchStrategy[Row]:
    """Ordinary logits, magnitudes between 1/64 and 16."""
    return _rows(_moderate_values(fmt), n_classes)


def huge(fmt: Format, n_classes: int) -> st.SearchStrategy[Row]:
    """Magnitudes from exp's overflow threshold up to the largest finite value, both signs."""
    low = math.floor(math.log2(fmt.exp_overflow))
    return _rows(format_values(fmt, min_exponent=low, max_exponent=fmt.emax), n_classes)


def near_overflow(fmt: Format, n_classes: int) -> st.SearchStrategy[Row]:
    """Values a few ULPs either side of exp's overflow and underflow thresholds."""
    values = st.one_of(
        near_values(fmt, fmt.exp_overflow, max_ulps=8),
        near_values(fmt, fmt.exp_underflow, max_ulps=8),
        _moderate_values(fmt),
    )
    return _rows(values, n_classes)


@st.composite
def _offset(draw, fmt: Format, n_classes: int) -> Row:
    # A large common offset with a spread of a few ULPs of it (pytorch#11752).
    top = min(fmt.emax - 1, fmt.precision + 12)
    offset = draw(format_values(fmt, min_exponent=min(8, top), max_exponent=top, sign=1))
    offset *= draw(st.sampled_from((1, -1)))
    step = ulp_of(offset, fmt)
    row = [round_to_format(offset + draw(st.integers(-4, 4)) * step, fmt) for _ in range(n_classes)]
    return row, draw(st.integers(0, n_classes - 1))


def offset(fmt: Format, n_classes: int) -> st.SearchStrategy[Row]:
    """A large common offset (up to 2**(p+12)) with a spread of a few of its ULPs."""
    return _offset(fmt, n_classes)


@st.composite
def _dominant(draw, fmt: Format, n_classes: int, *, target_is_max: bool) -> Row:
    row = draw(st.lists(_moderate_values(fmt), min_size=n_classes, max_size=n_classes))
    position = draw(st.integers(0, n_classes - 1))
    gap_top = min(fmt.emax - 5, 11)  # gaps up to ~2048: past every format's underflow of exp
    gap = draw(format_values(fmt, min_exponent=3, max_exponent=gap_top, sign=1))
    row[position] = round_to_format(max(row) + gap, fmt)
    if target_is_max:
        return row, position
    others = [i for i in range(n_classes) if i != position] or [position]
    return row, draw(st.sampled_from(others))


def dominant(fmt: Format, n_classes: int) -> st.SearchStrategy[Row]:
    """One logit far above the rest and the target: loss near 0, or underflowing (pytorch#113708)."""
    return _dominant(fmt, n_classes, target_is_max=True)


def confident_mistake(fmt: Format, n_classes: int) -> st.SearchStrategy[Row]:
    """The target far below the maximum: loss in the tens to thousands."""
    return _dominant(fmt, n_classes, target_is_max=False)


@st.composite
def _ties(draw, fmt: Format, n_classes: int) -> Row:
    top = draw(st.one_of(_moderate_values(fmt), format_values(fmt, min_exponent=0, max_exponent=fmt.emax)))
    n_tied = draw(st.integers(min(2, n_classes), n_classes))
    near = near_values(fmt, top, max_ulps=1)
    row = [top] * n_tied + [
        draw(st.one_of(near, _moderate_values(fmt).map(lambda v: min(v, top)))) for _ in range(n_classes - n_tied)
    ]
    order = draw(st.permutations(range(n_classes)))
    return [row[i] for i in order], draw(st.integers(0, n_classes - 1))


def ties(fmt: Format, n_classes: int) -> st.SearchStrategy[Row]:
    """Exact ties at the maximum plus values one ULP away; the target in or out of the tie."""
    return _ties(fmt, n_classes)


def tiny(fmt: Format, n_classes: int) -> st.SearchStrategy[Row]:
    """Zeros, subnormals and the smallest normals."""
    values = st.one_of(
        st.sampled_from((0.0, -0.0)),
        format_values(fmt, min_exponent=fmt.emin, max_exponent=fmt.emin + 2, subnormals=True),
    )
    return _rows(values, n_classes)


@st.composite
def _masked(draw, fmt: Format, n_classes: int) -> Row:
    row, target = draw(moderate(fmt, n_classes))
    layout = draw(st.sampled_from(("scattered", "leading_block", "whole_row")))
    if layout == "whole_row":
        masked = range(n_classes)
    elif layout == "leading_block":
        masked = range(draw(st.integers(1, n_classes)))  # flash-attention#1930
    else:
        masked = draw(st.sets(st.integers(0, n_classes - 1), max_size=n_classes))
    for i in masked:
        row[i] = NEG_INF
    return row, target


def masked(fmt: Format, n_classes: int) -> st.SearchStrategy[Row]:
    """-inf logits: scattered, a whole leading block, or the whole row; the target may be masked."""
    return _masked(fmt, n_classes)


@st.composite
def _special(draw, fmt: Format, n_classes: int) -> Row:
    row, target = draw(moderate(fmt, n_classes))
    for i in draw(st.sets(st.integers(0, n_classes - 1), min_size=1, max_size=min(3, n_classes))):
        row[i] = draw(st.sampled_from((math.inf, math.nan, NEG_INF)))
    return row, target


def special(fmt: Format, n_classes: int) -> st.SearchStrategy[Row]:
    """+inf and NaN (with some -inf) among ordinary logits."""
    return _special(fmt, n_classes)


SMALL_REGIMES: dict[str, RowBuilder] = {
    "moderate": moderate,
    "offset": offset,
    "huge": huge,
    "near_overflow": near_overflow,
    "dominant": dominant,
    "confident_mistake": confident_mistake,
    "ties": ties,
    "tiny": tiny,
    "masked": masked,
    "special": special,
}


def _background(draw, fmt: Format, n_classes: int) -> torch.Tensor:
    """Bulk values of a large row, from a seed: Hypothesis only shrinks the few parameters."""
    kind = draw(st.sampled_from(("flat", "noise", "near_max", "tiles")))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    if kind == "flat":
        # every class equal: the exponential sum is n_classes exactly, where low-precision
        # accumulators stall and float16 sums overflow
        row = torch.full((n_classes,), draw(_moderate_values(fmt)), dtype=torch.float64)
    elif kind == "noise":
        scale = draw(st.sampled_from((0.5, 2.0, 8.0)))
        row = torch.randn(n_classes, generator=generator, dtype=torch.float64) * scale
    elif kind == "near_max":
        # uniform just below a common maximum: many terms of the sum are of similar size
        width = draw(st.sampled_from((0.25, 1.0, 4.0)))
        row = -torch.rand(n_classes, generator=generator, dtype=torch.float64) * width
    else:
        # a level per block of classes: where the maximum lies depends on the block, not the position
        block = draw(st.sampled_from((128, 1024, 4096)))
        levels = torch.randn(-(-n_classes // block), generator=generator, dtype=torch.float64) * 4
        row = levels.repeat_interleave(block)[:n_classes] + torch.rand(n_classes, generator=generator)
    return row.to(fmt.dtype).to(torch.float64)


@st.composite
def _large_vocab(draw, fmt: Format, n_classes: int) -> Row:
    # Drawing 10**5 floats one by one through Hypothesis is slow and overruns its
    # buffer, so the bulk comes from a seeded background and Hypothesis plants a small
    # row from another regime (the extreme part, which it can shrink) at drawn positions.
    row = _background(draw, fmt, n_classes)
    inner = draw(st.sampled_from(["none", *(name for name in SMALL_REGIMES if name != "moderate")]))
    if inner == "none":
        return row, draw(st.integers(0, n_classes - 1))
    planted, planted_target = draw(SMALL_REGIMES[inner](fmt, 8))
    positions = draw(st.lists(st.integers(0, n_classes - 1), min_size=8, max_size=8, unique=True))
    row[positions] = torch.tensor(planted, dtype=torch.float64)
    target = positions[planted_target] if draw(st.booleans()) else draw(st.integers(0, n_classes - 1))
    return row, target


def large_vocab(fmt: Format, n_classes: int) -> st.SearchStrategy[Row]:
    """Wide rows: a flat, noisy, near-maximum or blockwise background from a seed, usually with
    another regime's row of 8 values planted in it at drawn positions."""
    return _large_vocab(fmt, n_classes)


def layout(fmt: Format, n_classes: int) -> st.SearchStrategy[Row]:
    """Rows of a (N, C, d1, ..., dk) case (pytorch#85791): each from any small regime.

    strategies.cases gives this regime its batch shape; the rows here only fill it.
    """
    return st.one_of(*(builder(fmt, n_classes) for builder in SMALL_REGIMES.values()))


def tiled(fmt: Format, n_classes: int) -> st.SearchStrategy[Row]:
    """Tile-structured wide rows (strategies.tiles): per-tile levels, a late maximum, masked tiles."""
    return tiled_rows(fmt, n_classes)


def mixed(fmt: Format, n_classes: int) -> st.SearchStrategy[Row]:
    """A row from any small regime: one row of a batch, strided or layout case."""
    return st.one_of(*(builder(fmt, n_classes) for builder in SMALL_REGIMES.values()))


# batch, strided and layout cases are built whole by strategies.cases; their rows here are
# what one of their rows may be, for users who draw rows themselves
REGIMES: dict[str, RowBuilder] = {
    **SMALL_REGIMES, "large_vocab": large_vocab, "tiled": tiled, "batch": mixed, "strided": mixed, "layout": layout,
}  # fmt: skip


def row_strategy(regime: str, fmt: Format, n_classes: int) -> st.SearchStrategy[Row]:
    """The (row, target) strategy of a named regime."""
    return REGIMES[regime](fmt, n_classes)
