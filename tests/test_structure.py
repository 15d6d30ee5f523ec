"""Strategies reach kernel structure: size bands, tile-structured rows, batches, layouts (issue 13)."""

from __future__ import annotations

import collections
import math

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from harness.formats import FORMATS
from strategies import BANDS, TILE_SIZES, VOCABULARIES, band_of, cases, class_counts
from strategies.bulk import BULK_KINDS, bulk_rows
from strategies.sizes import row_counts, size_bands, tile_counts
from strategies.tiles import tiled_rows


class _Found(Exception):
    pass


def find(strategy, predicate, max_examples: int = 1_000):
    """The first drawn value satisfying ``predicate`` (no shrinking: reachability is the point)."""

    @settings(max_examples=max_examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def search(value):
        if predicate(value):
            raise _Found(value)

    try:
        search()
    except _Found as found:
        return found.args[0]
    raise AssertionError(f"nothing satisfying the predicate in {max_examples} examples")


def _draw(strategy, count: int) -> list:
    seen = []

    @settings(max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value):
        seen.append(value)

    collect()
    return seen


def test_large_vocab_class_counts_reach_every_band_above_64():
    counts = _draw(class_counts("large_vocab", 256_000), 400)
    bands = collections.Counter(band_of(n) for n in counts)
    assert set(bands) == {name for name, _, _ in BANDS[1:]}, bands
    assert any(n % 2 and 513 <= n <= 1023 for n in counts)  # odd widths of pytorch#147284
    assert set(VOCABULARIES) & set(counts) and {50_257, 50_304} & set(counts)
    tiled = [n for n in counts if any(n % t in (0, 1, t - 1) and n > t for t in TILE_SIZES[3:])]
    assert {n % 1024 for n in tiled} & {0} and {n % 1024 for n in tiled} & {1} and {n % 1024 for n in tiled} & {1023}
    assert sum(n > 4_096 for n in counts) > 0.4 * len(counts)  # much of the budget past 4,096 classes


def test_tile_counts_are_multiples_plus_or_minus_one():
    counts = _draw(tile_counts(40_000, min_tiles=2), 300)
    assert all(any((n + d) % t == 0 and (n + d) // t >= 2 for t in TILE_SIZES for d in (-1, 0, 1)) for n in counts)
    assert max(counts) > 16_384 and min(counts) <= 1_025
    with pytest.raises(InvalidArgument, match="tile_counts needs"):
        tile_counts(200, min_tiles=2)
    with pytest.raises(InvalidArgument, match="unknown size band"):
        size_bands(1_000, {"huge": 1})


def test_row_counts_reach_thousands_and_shrink_small():
    counts = _draw(row_counts(16_384, min_rows=4), 150)
    assert min(counts) >= 4 and max(counts) >= 4_096 and sum(n >= 1_000 for n in counts) >= 15
    assert {15, 16, 17} & set(counts)  # powers of two +-1
    with pytest.raises(InvalidArgument):
        row_counts(4, min_rows=8)


def test_tiled_rows_are_exact_and_mostly_past_4096_classes():
    drawn = _draw(cases(dtype="float16", regimes=["tiled"], max_classes=131_072), 40)
    assert all(c.n_classes >= 2 * TILE_SIZES[0] - 1 and c.n_samples == 1 for c in drawn)
    assert sum(c.n_classes > 4_096 for c in drawn) >= 0.7 * len(drawn)
    for case in drawn:
        x = case.logits.to(torch.float64)
        assert torch.equal(x.to(torch.float16).view(torch.int16), case.logits.view(torch.int16))


def _row(n: int):
    return st.tuples(st.just(n), tiled_rows(FORMATS["float32"], n))


@pytest.mark.parametrize("tile", [1024, 8192])
def test_a_fully_masked_leading_tile_before_a_finite_value_is_drawn(tile):
    """The flash-attention#1930 input: every class of the first tile -inf, a finite value after it."""
    _n, (row, _target) = find(
        _row(20_000),
        lambda drawn: bool(torch.isneginf(drawn[1][0][:tile]).all() and torch.isfinite(drawn[1][0][tile:]).any()),
    )
    assert torch.isneginf(row[:tile]).all()


def test_the_maximum_arrives_in_a_late_tile_after_mass_in_the_first():
    def late(drawn) -> bool:
        row = drawn[1][0]
        first = row[:8192]
        return bool(torch.isfinite(first).any() and row[8192:].max() > first[torch.isfinite(first)].max() + 4)

    _n, (row, _target) = find(_row(30_000), late)
    assert int(torch.argmax(row)) >= 8192


def test_targets_inside_masked_tiles_and_on_tile_boundaries_are_drawn():
    masked = find(_row(20_000), lambda d: bool(torch.isneginf(d[1][0][d[1][1]])))
    assert torch.isneginf(masked[1][0][masked[1][1]])
    boundary = find(_row(20_000), lambda d: d[1][1] % 1024 in (0, 1023) and d[1][1] > 0)
    assert boundary[1][1] % 1024 in (0, 1023)


def test_masked_runs_end_the_row_and_start_off_tile_boundaries():
    def end_run(d) -> bool:
        row = d[1][0]
        return bool(torch.isneginf(row[-1024:]).all() and torch.isfinite(row).any())

    find(_row(20_000), end_run)

    def unaligned_middle(d) -> bool:
        masked = torch.isneginf(d[1][0]).to(torch.int8)
        starts = torch.nonzero(torch.diff(masked) == 1).flatten() + 1
        return any(int(s) % 128 not in (0,) and int(s) > 0 for s in starts)

    find(_row(20_000), unaligned_middle)


def test_tile_backgrounds_differ_from_tile_to_tile():
    def stepped(d) -> bool:
        row = d[1][0]
        means = [row[i : i + 1024][torch.isfinite(row[i : i + 1024])].mean() for i in range(0, 8192, 1024)]
        finite = [float(m) for m in means if not math.isnan(float(m))]
        return len(finite) >= 4 and max(finite) - min(finite) > 4

    find(_row(20_000), stepped)


@pytest.mark.parametrize("kind", BULK_KINDS)
@pytest.mark.parametrize("dtype", list(FORMATS))
def test_bulk_rows_are_exact_and_show_their_kind(kind, dtype):
    fmt = FORMATS[dtype]
    values, targets = bulk_rows(fmt, [kind], 200, 16, seed=7)
    assert values.shape == (200, 16) and targets.shape == (200,) and ((targets >= 0) & (targets < 16)).all()
    finite = values[torch.isfinite(values)]
    assert torch.equal(finite.to(fmt.dtype).to(torch.float64), finite)  # exact in the format
    if kind == "huge":
        assert finite.abs().min() >= fmt.exp_overflow * 0.99
    if kind == "masked":
        assert torch.isneginf(values).any() and torch.isfinite(values[torch.arange(200), targets]).float().mean() > 0.8
    if kind == "special":
        assert (torch.isnan(values) | torch.isposinf(values)).any()
    if kind == "tiny":
        assert finite.abs().max() <= fmt.smallest_normal * 8
    if kind == "dominant":
        assert torch.equal(values.argmax(dim=1), targets)


def test_bulk_rows_mix_kinds_by_weight_and_reject_bad_arguments():
    values, _ = bulk_rows(FORMATS["float32"], ["moderate", "huge"], 1_000, 8, seed=1, weights=[0.9, 0.1])
    huge_rows = (values.abs().max(dim=1).values > 80).sum()
    assert 40 < huge_rows < 200
    with pytest.raises(ValueError, match="bulk kinds"):
        bulk_rows(FORMATS["float32"], ["bogus"], 2, 2, seed=0)
    with pytest.raises(ValueError, match="weight"):
        bulk_rows(FORMATS["float32"], ["moderate"], 2, 2, seed=0, weights=[0.0])


def test_batch_cases_reach_thousands_of_rows_with_mixed_regimes():
    drawn = _draw(cases(dtype="bfloat16", regimes=["batch"], max_classes=1_023, max_rows=4_096), 50)
    rows = [c.n_samples for c in drawn]
    assert max(rows) >= 2_048 and min(rows) >= 4
    assert all(c.logits.numel() <= 2**15 or c.n_classes == 2 for c in drawn)
    assert any(bool(torch.isneginf(c.logits).any()) and bool((c.logits.abs() > 1e3).any()) for c in drawn)


def test_layout_cases_reach_64_positions_and_permuted_views():
    drawn = _draw(cases(dtype="float32", regimes=["layout"], max_classes=16), 80)
    positions = [math.prod(c.logits.shape[2:]) for c in drawn]
    assert max(positions) == 64 or max(positions) >= 48
    assert sum(p >= 16 for p in positions) >= 8
    permuted = [c for c in drawn if not c.contiguous]
    assert permuted and all(c.logits.stride(1) == 1 for c in permuted)  # classes innermost in memory
    assert all(len(c.logits.shape) - 2 <= 3 for c in drawn)


def test_strided_cases_draw_every_layout():
    drawn = _draw(cases(dtype="float64", regimes=["strided"], max_classes=300), 50)
    assert all(not c.contiguous for c in drawn)
    kinds = collections.Counter()
    for case in drawn:
        (rows, classes), offset = case.logits.stride(), case.logits.storage_offset()
        if rows == 0:
            kinds["expanded"] += 1
        elif rows == 1 and classes == case.n_samples:
            kinds["transposed"] += 1
        elif classes in (2, 3) and rows == classes * case.n_classes:
            kinds["strided"] += 1
        elif classes == 1 and offset > 0:
            kinds["offset"] += 1
    assert set(kinds) == {"expanded", "transposed", "strided", "offset"}, kinds
