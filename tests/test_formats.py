import math
import random

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.formats import FORMATS, bit_pattern, format_of, ordinals, parse_dtype, round_scaled, ulp_distance

FP16, BF16, FP32, FP64 = (FORMATS[n] for n in ("float16", "bfloat16", "float32", "float64"))


def _round(value: float, fmt) -> float:
    man, exp = math.frexp(value)
    return round_scaled(int(man * 2**53), exp - 53, fmt)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (65519.0, 65504.0),  # below the overflow boundary: rounds down to max finite
        (65520.0, math.inf),  # the boundary itself is a tie with 2**16: even is inf
        (2.0**-25, 0.0),  # half the smallest subnormal: tie to even zero
        (3 * 2.0**-25, 2 * 2.0**-24),  # 1.5 subnormal quanta: tie to the even quantum 2
        (2.0**-24, 2.0**-24),  # smallest subnormal is exact
        (2.0**-25 + 2.0**-40, 2.0**-24),  # just above half rounds up
        (1 + 2.0**-11, 1.0),  # tie between 1 and 1 + 2**-10: even is 1
        (1 + 3 * 2.0**-11, 1 + 2 * 2.0**-10),  # tie: even mantissa upward
        (2.0**-14 - 2.0**-25, 2.0**-14),  # largest subnormal + half a quantum rounds to smallest normal
    ],
)
def test_float16_boundaries(value, expected):
    assert _round(value, FP16) == expected


def test_constants_match_torch_finfo():
    for fmt in FORMATS.values():
        info = torch.finfo(fmt.dtype)
        assert fmt.max_finite == info.max
        assert fmt.smallest_normal == info.smallest_normal
        assert fmt.unit_roundoff == info.eps / 2


@pytest.mark.parametrize(
    ("name", "overflow", "underflow"),
    [("float16", 11.09011, -17.3287), ("bfloat16", 88.72088, -92.8817),
     ("float32", 88.72284, -103.9721), ("float64", 709.78271, -745.1332)],
)  # fmt: skip
def test_exp_thresholds(name, overflow, underflow):
    fmt = FORMATS[name]
    assert fmt.exp_overflow == pytest.approx(overflow, abs=1e-5)
    assert fmt.exp_underflow == pytest.approx(underflow, abs=1e-4)
    with mpmath.workprec(200):
        # exp at the threshold is the overflow boundary: max finite plus half an ulp
        boundary = mpmath.mpf(fmt.max_finite) + mpmath.mpf(2) ** (fmt.emax - fmt.precision)
        # the float64 threshold is itself rounded: |x| * 2**-53 of relative error in exp(x)
        assert abs(mpmath.exp(mpmath.mpf(fmt.exp_overflow)) / boundary - 1) < 2 * fmt.exp_overflow * 2.0**-53
        half_subnormal = mpmath.mpf(2) ** (fmt.quantum_exponent - 1)
        assert abs(mpmath.exp(mpmath.mpf(fmt.exp_underflow)) / half_subnormal - 1) < 2 * -fmt.exp_underflow * 2.0**-53


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_rounding_agrees_with_torch_from_float32(value):
    # float32 inputs avoid any double rounding inside torch's conversions
    for fmt in (FP16, BF16, FP32):
        expected = torch.tensor(value, dtype=torch.float32).to(fmt.dtype).to(torch.float64).item()
        assert _round(abs(value), fmt) == abs(expected)


@given(st.integers(1, 2**80), st.integers(-1200, 1100))
def test_rounding_to_float64_agrees_with_python(man, exp):
    # Python's int/float conversions round correctly to nearest, ties to even
    try:
        expected = math.ldexp(float(man), exp) if man < 2**53 else float(man * 2**exp if exp >= 0 else None or 0)
    except (OverflowError, TypeError):
        return
    if man >= 2**53 or not math.isfinite(expected) or expected == 0 or abs(expected) < 2**-1022:
        return
    assert round_scaled(man, exp, FP64) == expected


def test_sticky_breaks_ties_upward_only():
    assert round_scaled(1, -25, FP16, sticky=True) == 2.0**-24
    assert round_scaled(1, 0, FP16, sticky=True) == 1.0  # exact values stay
    assert round_scaled(65520, 0, FP16, sticky=False) == math.inf


def test_ulp_distance_across_zero_and_subnormals():
    t = lambda *v: torch.tensor(v, dtype=torch.float16)  # noqa: E731
    tiny = 2.0**-24
    assert ulp_distance(t(0.0), t(-0.0)).tolist() == [0.0]
    assert ulp_distance(t(tiny), t(-tiny)).tolist() == [2.0]
    assert ulp_distance(t(2 * tiny), t(0.0)).tolist() == [2.0]
    assert ulp_distance(t(2.0**-14), t(2.0**-14 - tiny)).tolist() == [1.0]  # subnormal to normal
    assert ulp_distance(t(65504.0), t(math.inf)).tolist() == [1.0]
    assert ulp_distance(t(math.nan), t(1.0)).tolist() == [2.0**16]
    assert ulp_distance(t(math.nan), t(math.nan)).tolist() == [0.0]


def test_ulp_distance_float64_extremes_do_not_overflow():
    big = torch.tensor([FP64.max_finite], dtype=torch.float64)
    assert ulp_distance(big, -big)[0] == pytest.approx(2.0 * FP64.max_ordinal - 2)
    one = torch.tensor([1.0], dtype=torch.float64)
    assert ulp_distance(one, torch.nextafter(one, torch.tensor([2.0], dtype=torch.float64))).tolist() == [1.0]


def test_bit_pattern_and_parsing():
    assert bit_pattern(torch.tensor(math.inf, dtype=torch.float16)) == "0x7c00"
    assert bit_pattern(torch.tensor(-0.0, dtype=torch.bfloat16)) == "0x8000"
    assert parse_dtype("bf16") is BF16 and parse_dtype("torch.float64") is FP64
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("fp8")
    with pytest.raises(ValueError, match="unsupported dtype"):
        format_of(torch.int32)
    assert np.isfinite(FP16.exp_overflow)


@pytest.mark.parametrize("name", list(FORMATS))
def test_round_scaled_with_astronomical_exponents_is_instant(name):
    """e**-1e9 (an MPFR enclosure of a far-off softmax term) rounds to 0, e**1e9 to inf, without
    building a 2**(10**9) integer (it once took a gigabyte and seconds per element)."""
    fmt = FORMATS[name]
    assert round_scaled(3, -(10**9), fmt) == 0.0 and round_scaled(3, -(10**9), fmt, sticky=True) == 0.0
    assert round_scaled(3, 10**9, fmt) == math.inf
    tiny = fmt.smallest_subnormal
    assert round_scaled(1, int(math.log2(tiny)) - 1, fmt) == 0.0  # half the smallest subnormal: ties to even
    assert round_scaled(1, int(math.log2(tiny)) - 1, fmt, sticky=True) == tiny


def test_round_rational_matches_exact_rounding_and_breaks_ties_to_even():
    from fractions import Fraction

    from harness.formats import round_rational

    rng = random.Random(5)
    for _ in range(3000):
        q = Fraction(rng.randint(1, 10**9), rng.randint(1, 10**9)) * Fraction(2) ** rng.randint(-160, 40)
        q = -q if rng.random() < 0.5 else q
        for fmt in FORMATS.values():
            if abs(q) > fmt.max_finite:  # overflow: the explicit cases below
                continue
            got = round_rational(q, fmt)
            # the nearest of the two neighbours (exact comparisons in rationals)
            down = float(torch.tensor(float(q), dtype=torch.float64).to(fmt.dtype).to(torch.float64))
            candidates = {down, *(float(v) for v in _neighbours_of(down, fmt))}
            best = min(candidates, key=lambda v: abs(Fraction(v) - q) if math.isfinite(v) else math.inf)
            assert abs(Fraction(got) - q) == abs(Fraction(best) - q), (q, fmt.name, got, best)
    f16 = FORMATS["float16"]
    assert round_rational(Fraction(-4095, 16384), f16) == -0.25  # a midpoint: ties to even
    assert round_rational(Fraction(4093, 16384), f16) == 4092 / 16384  # 2046.5 / 8192 → 2046 (even)
    assert round_rational(Fraction(1, 2**25), f16) == 0.0  # half the smallest subnormal: to even 0
    assert round_rational(Fraction(3, 2**26), f16) == 2.0**-24  # above half the smallest subnormal
    assert round_rational(Fraction(65520), f16) == math.inf  # the overflow boundary rounds to inf
    assert round_rational(Fraction(65519), f16) == 65504.0


def _neighbours_of(value: float, fmt):
    """The two values one ULP ordinal away (harness.formats.ordinals orders every float of fmt)."""
    ordinal = int(ordinals(torch.tensor([value], dtype=fmt.dtype))[0])
    everything = [math.nan]
    for step in (-1, 1):
        target = ordinal + step
        if abs(target) <= fmt.max_ordinal:
            everything.append(_from_ordinal(target, fmt))
    return everything


def _from_ordinal(ordinal: int, fmt) -> float:
    magnitude = torch.tensor([abs(ordinal)], dtype=torch.int64).to(fmt.int_dtype).view(fmt.dtype).to(torch.float64)
    return -float(magnitude) if ordinal < 0 else float(magnitude)
