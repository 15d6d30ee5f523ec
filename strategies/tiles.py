"""Tile-structured rows: where fused kernels that tile the class dimension go wrong.

A kernel that walks a row in tiles of T classes (online softmax) keeps a running
maximum and a running sum; its bugs sit at tile boundaries: a maximum that arrives in a
late tile after earlier tiles with real mass (the running sum must be rescaled), a
fully masked tile before any finite value (-inf - (-inf) = NaN, flash-attention#1930),
a target inside a masked tile or on a tile's first or last class, and tiles whose
levels differ. Every position here is a Hypothesis choice (tile indices, offsets,
lengths), so targeted search can move it and shrinking can simplify it; the bulk
values come from a drawn seed.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from harness.formats import Format
from strategies.bulk import round_rows
from strategies.floats import format_values
from strategies.sizes import TILE_SIZES, VOCABULARIES, tile_counts

__all__ = ["MIN_TILED_CLASSES", "tiled_class_counts", "tiled_rows"]

MIN_TILED_CLASSES = 2 * TILE_SIZES[0] + 1  # two whole tiles of the smallest size, and one more class
_SEEDS = st.integers(0, 2**32 - 1)
_TARGETS = ("anywhere", "max", "masked", "tile_boundary", "late_tile")
_SHARES = (0.125, 0.25, 0.5, 0.75, 0.875)  # of the row, for runs at its start or end


def tiled_class_counts(max_classes: int) -> st.SearchStrategy[int]:
    """At least two tiles: multiples of a tile size +-1, any count from 4,097, or a vocabulary size."""
    choices = [tile_counts(max_classes, min_tiles=2)] * 3
    if max_classes > 4_096:
        choices.append(st.integers(4_097, min(32_767, max_classes)))
    fitting = [v for v in VOCABULARIES if v <= max_classes]
    if fitting:
        choices.append(st.sampled_from(fitting))
    return st.integers(0, len(choices) - 1).flatmap(lambda i: choices[i])


def _levels(draw, fmt: Format, n_tiles: int, gen: torch.Generator) -> torch.Tensor:
    """One background level per tile: equal, random per tile, rising or falling across the row."""
    pattern = draw(st.sampled_from(("equal", "random", "rising", "falling")))
    step = draw(st.sampled_from((0.5, 2.0, 8.0)))
    if pattern == "equal":
        return torch.zeros(n_tiles, dtype=torch.float64)
    if pattern == "random":
        return step * torch.randn(n_tiles, generator=gen, dtype=torch.float64)
    ramp = torch.linspace(0.0, step * min(n_tiles, 8), n_tiles, dtype=torch.float64)
    return ramp if pattern == "rising" else ramp.flip(0)


@st.composite
def _masked_run(draw, n_classes: int, where: str) -> tuple[int, int]:
    """[start, stop) of a run of -inf: whole tiles of a drawn size, aligned or off by a drawn offset,
    or (at the start or the end) a drawn share of the row. A run at the start or the end leaves
    at least one class of the row unmasked: a whole masked row is the masked regime's."""
    tile = draw(st.sampled_from(TILE_SIZES))
    # sampled_from, not integers: Hypothesis draws wide integer ranges toward their small end
    if where != "middle" and draw(st.integers(0, 2)) == 0:
        length, shift = int(n_classes * draw(st.sampled_from(_SHARES))), draw(st.integers(-2, 2))
    else:
        length = tile * draw(st.sampled_from((1, 2, 3, 4, 6, 8)))
        shift = draw(st.one_of(st.just(0), st.sampled_from((-1, 1)), st.integers(-tile + 1, tile - 1)))
    if where == "start":
        return 0, max(1, min(length + shift, n_classes - 1))
    if where == "end":
        return max(1, min(n_classes - length - shift, n_classes - 1)), n_classes
    start = max(0, min(tile * draw(st.integers(1, max(1, n_classes // tile))) + shift, n_classes - 1))
    return start, max(start + 1, min(start + length, n_classes))


@st.composite
def _tiled(draw, fmt: Format, n_classes: int) -> tuple[torch.Tensor, int]:
    tile = draw(st.sampled_from([t for t in TILE_SIZES if 2 * t <= n_classes] or [TILE_SIZES[0]]))
    n_tiles = math.ceil(n_classes / tile)
    gen = torch.Generator().manual_seed(draw(_SEEDS))
    base = draw(format_values(fmt, min_exponent=max(fmt.emin, -4), max_exponent=3))
    spread = draw(st.sampled_from((0.0, 0.25, 1.0, 4.0)))
    levels = _levels(draw, fmt, n_tiles, gen).repeat_interleave(tile)[:n_classes]
    row = round_rows(base + levels + spread * torch.randn(n_classes, generator=gen, dtype=torch.float64), fmt)

    if n_tiles > 1 and draw(st.booleans()):  # the maximum in a late tile, above everything before it
        late = draw(st.integers(n_tiles // 2, n_tiles - 1)) * tile + draw(st.integers(0, tile - 1))
        gap = draw(st.sampled_from((0.5, 2.0, 8.0, 32.0)))
        row[min(late, n_classes - 1)] = round_rows(row.max() + gap, fmt)

    runs = []
    if draw(st.sampled_from((True, True, False))):  # a leading run: what a kernel reads before any finite value
        runs.append(draw(_masked_run(n_classes, "start")))
    for where in draw(st.lists(st.sampled_from(("middle", "end")), max_size=2)):
        runs.append(draw(_masked_run(n_classes, where)))
    for start, stop in runs:
        row[start:stop] = -math.inf

    kind = draw(st.sampled_from(_TARGETS))
    if kind == "max" and torch.isfinite(row).any():
        target = int(torch.argmax(row))
    elif kind == "masked" and runs:
        start, stop = runs[draw(st.integers(0, len(runs) - 1))]
        target = draw(st.integers(start, stop - 1))
    elif kind == "tile_boundary" and n_tiles > 1:
        target = draw(st.integers(1, n_tiles - 1)) * tile - draw(st.sampled_from((0, 1)))
    elif kind == "late_tile":
        target = draw(st.integers((n_tiles - 1) * tile, n_classes - 1))
    else:
        target = draw(st.integers(0, n_classes - 1))
    return row, min(target, n_classes - 1)


def tiled_rows(fmt: Format, n_classes: int) -> st.SearchStrategy[tuple[torch.Tensor, int]]:
    """(row, target) with tile structure: per-tile background levels, a late maximum, masked runs.

    The row is a float64 tensor of ``n_classes`` values exact in ``fmt``. Tiles are of a
    drawn size from 128 to 8,192; masked runs start at the row's start, in its middle or
    at its end, cover whole tiles of another drawn size, aligned or not.
    """
    return _tiled(fmt, n_classes)
