"""The bench command runs (no timing is asserted), and the strategies cover what they promise."""

from __future__ import annotations

import collections
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.formats import FORMATS
from strategies import REGIMES, cases, format_values

DRAWS = 2000


def test_bench_prints_every_ratio(capsys):
    assert main(["bench", "--rows", "2", "--classes", "2048", "--repeats", "1"]) == 0
    shown = capsys.readouterr().out
    needles = ("fast oracle tier", "double-double tier", "by output dtype", "audit of one case", "mpmath tier")
    sandbox = ("sandbox call (3, 32)", "thread call (before #12)", "largest sandbox worker")
    for needle in (*needles, *sandbox, "peak memory", "ratio", "speed-up"):
        assert needle in shown


def _draw(strategy, count: int) -> list:
    seen = []

    @settings(max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value):
        seen.append(value)

    collect()
    return seen


@pytest.mark.parametrize(
    "draws", [600, pytest.param(3000, marks=pytest.mark.slow)], ids=["600-per-dtype", "3000-per-dtype"]
)
@pytest.mark.parametrize("dtype", list(FORMATS))
def test_every_regime_appears(dtype, draws):
    drawn = _draw(cases(dtype=dtype, regimes=list(REGIMES), max_classes=1024, max_samples=1), draws)
    counts = collections.Counter(case.regime for case in drawn)
    assert set(counts) == set(REGIMES), counts
    assert min(counts.values()) >= draws / len(REGIMES) / 10  # none starved


@pytest.mark.parametrize("dtype", list(FORMATS))
def test_every_binade_band_appears(dtype):
    """Values over the whole range: each eighth of the exponent range, subnormals and zero all appear."""
    fmt = FORMATS[dtype]
    values = _draw(format_values(fmt, subnormals=True), DRAWS)
    exponents = [math.frexp(abs(v))[1] - 1 for v in values if v != 0]
    span = fmt.emax - fmt.emin + 1
    bands = collections.Counter(min(7, max(0, (e - fmt.emin) * 8 // span)) for e in exponents if e >= fmt.emin)
    assert set(bands) == set(range(8)), bands
    assert any(0 < abs(v) < fmt.smallest_normal for v in values)  # subnormals
    assert any(v < 0 for v in values) and any(v > 0 for v in values)
    as_tensor = torch.tensor(values, dtype=torch.float64)
    assert torch.equal(as_tensor.to(fmt.dtype).to(torch.float64), as_tensor)  # all exactly in the format


def test_large_vocabulary_sizes_are_reached():
    drawn = _draw(cases(dtype="bfloat16", regimes=["large_vocab"], max_classes=256_000), 300)
    sizes = {case.n_classes for case in drawn}
    assert {1_024, 4_096} <= sizes and sizes & {128_256, 256_000}


@given(st.data())
def test_targets_always_in_range(data):
    case = data.draw(cases(max_classes=128))
    assert ((case.targets >= 0) & (case.targets < case.n_classes)).all()
