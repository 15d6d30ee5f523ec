"""Closed intervals of MPFR numbers with directed rounding, and their correct rounding to a format.

Every operation returns [lo, hi] with lo rounded down and hi rounded up by MPFR (correctly
rounded in the chosen direction), so the exact result of the same operation on any
points of the operands lies inside. A closed interval whose two ends round to the same
value of a format proves that value is the correctly rounded result (round to nearest,
ties to even, is monotone), so no "sticky" information is needed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import gmpy2

from harness.formats import Format, round_scaled

__all__ = ["Interval", "exact", "fsum_exact", "iadd", "imul", "iscale", "isquare", "isum", "round_mpfr", "rounds_to"]

Interval = tuple[gmpy2.mpfr, gmpy2.mpfr]
_DOWN, _UP = gmpy2.RoundDown, gmpy2.RoundUp


def exact(value: float) -> Interval:
    """A float64 value as a point interval (MPFR reads doubles exactly at 53 bits or more)."""
    with gmpy2.context(precision=64):
        point = gmpy2.mpfr(value)
    return point, point


def iadd(a: Interval, b: Interval, prec: int) -> Interval:
    with gmpy2.context(precision=prec, round=_DOWN):
        lo = a[0] + b[0]
    with gmpy2.context(precision=prec, round=_UP):
        hi = a[1] + b[1]
    return lo, hi


def isum(terms: Sequence[Interval], prec: int) -> Interval:
    """Sum of many intervals: each end is MPFR's exactly rounded sum of that end's terms."""
    if not terms:
        return gmpy2.mpfr(0), gmpy2.mpfr(0)
    with gmpy2.context(precision=prec, round=_DOWN):
        lo = gmpy2.fsum([t[0] for t in terms])
    with gmpy2.context(precision=prec, round=_UP):
        hi = gmpy2.fsum([t[1] for t in terms])
    return lo, hi


def imul(a: Interval, b: Interval, prec: int) -> Interval:
    """Product of two intervals, any signs (the extreme of the four end products)."""
    pairs = [(a[0], b[0]), (a[0], b[1]), (a[1], b[0]), (a[1], b[1])]
    with gmpy2.context(precision=prec, round=_DOWN):
        lo = min(x * y for x, y in pairs)
    with gmpy2.context(precision=prec, round=_UP):
        hi = max(x * y for x, y in pairs)
    return lo, hi


def iscale(a: Interval, factor: gmpy2.mpfr | float, prec: int) -> Interval:
    """An interval times an exact number (a float64 or an MPFR value)."""
    point = factor if isinstance(factor, gmpy2.mpfr().__class__) else exact(factor)[0]
    return imul(a, (point, point), prec)


def isquare(a: Interval, prec: int) -> Interval:
    lo, hi = a
    with gmpy2.context(precision=prec, round=_UP):
        top = max(lo * lo, hi * hi)
    if lo >= 0:
        with gmpy2.context(precision=prec, round=_DOWN):
            return lo * lo, top
    if hi <= 0:
        with gmpy2.context(precision=prec, round=_DOWN):
            return hi * hi, top
    return gmpy2.mpfr(0), top


def round_mpfr(x: gmpy2.mpfr, fmt: Format) -> float:
    """The exact value of an MPFR number rounded to fmt (to nearest, ties to even, subnormals, overflow to inf)."""
    if gmpy2.is_nan(x):
        return math.nan
    if gmpy2.is_infinite(x):
        return math.inf if x > 0 else -math.inf
    if x == 0:
        return 0.0
    man, exp = x.as_mantissa_exp()
    man, exp = int(man), int(exp)
    if man < 0:
        return -round_scaled(-man, exp, fmt)
    return round_scaled(man, exp, fmt)


def round_mpfr_inside(x: gmpy2.mpfr, fmt: Format, side: int) -> float:
    """``round_mpfr`` of a value strictly above (``side`` +1) or below (−1) x, closer to x than any MPFR number.

    For an enclosure [lo, hi] of a value known to be strictly inside (an irrational one,
    such as log1p of a positive sum of exponentials of dyadic numbers, by
    Lindemann–Weierstrass): a tie at an end is then broken the way the value lies, so a
    value an astronomically small amount above a rounding midpoint is still decided.
    """
    if gmpy2.is_nan(x) or gmpy2.is_infinite(x):
        return round_mpfr(x, fmt)
    if x == 0:
        return 0.0 if side > 0 else -0.0  # just above 0 rounds to +0, just below to −0
    man, exp = x.as_mantissa_exp()
    man, exp = 4 * int(man) + side, int(exp) - 2  # x ± a quarter of its last place
    if man < 0:
        return -round_scaled(-man, exp, fmt)
    return round_scaled(man, exp, fmt)


def rounds_to(interval: Interval, fmt: Format) -> float | None:
    """The value both ends of a closed interval round to in fmt, or None when they differ."""
    lo, hi = round_mpfr(interval[0], fmt), round_mpfr(interval[1], fmt)
    return lo if lo == hi else None


def fsum_exact(values: Iterable[float]) -> gmpy2.mpfr:
    """The exact sum of float64 values (MPFR at enough precision that nothing rounds)."""
    values = [v for v in values if v != 0.0]
    if not values:
        return gmpy2.mpfr(0)
    exponents = [math.frexp(v)[1] for v in values]
    span = max(exponents) - min(exponents) + 53 + len(values).bit_length() + 2
    with gmpy2.context(precision=max(span, 64)):
        return gmpy2.fsum([gmpy2.mpfr(v) for v in values])
