"""Certified high-precision oracle for softmax cross entropy.

For one row x with target t, loss = (m - x_t) + log1p(s), where m = max x (taken at
one index k) and s = sum over j != k of exp(x_j - m). The oracle computes a rigorous
enclosure [lo, hi] of the exact loss at working precision P, rounds both
ends to the requested format, and accepts the result only when they agree. Otherwise
P doubles, up to a cap; a row still undecided there is returned as *uncertified*
(with a best estimate), never dropped.

Why the enclosure is rigorous:
- inputs are exact (every graded format embeds in float64, and mpmath and MPFR take
  floats exactly); m - x_t and x_j - m are computed exactly (a float64 difference
  whose TwoSum error is 0, else exact mpmath subtraction);
- each exp is evaluated by MPFR (through gmpy2, mpmath's own backend library), which is
  correctly rounded in the requested direction: rounded down at P bits it gives r with
  r <= exp(d) < r + ulp(r) <= r (1 + 2**(1-P)), so no error model is assumed;
- the weighted terms are summed by MPFR's exact-then-rounded sum, down and up;
- terms with x_j - m < -0.71 K (so exp < 2**-K) are not evaluated but bounded by
  2**-K each and added to the upper end;
- log1p(s) is bracketed by MPFR's log1p rounded down at s_lo and up at s_hi, and
  m - x_t is added exactly by mpmath with directed rounding.

Special values (documented in README.md):
- NaN anywhere in the row, or +inf at the target: NaN;
- +inf at a non-target position: +inf (the limit of the loss);
- -inf at non-target positions: masked, they contribute nothing;
- target at -inf with some logit finite: +inf; every logit -inf: NaN.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import gmpy2
import mpmath.libmp as mp
import numpy as np
import torch

from harness.formats import Format, format_of, round_scaled
from harness.oracle.value import MAX_PRECISION, OracleValue

__all__ = ["row_loss"]

START_GUARD_BITS = 11  # float64 outputs start at 64 bits, one limb; a close call doubles it
_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class _Enclosure:
    lo: tuple  # mpf
    hi: tuple  # mpf
    sticky_lo: bool  # the exact value is strictly above lo


def _special(row: np.ndarray, target: int) -> float | None:
    """The loss when the row has NaN or infinities that decide it, else None."""
    top = row.max()  # NaN when any entry is NaN: one pass decides every case below
    xt = row[target]
    if top != top or xt == math.inf:
        return math.nan
    if top == math.inf:
        return math.inf
    if xt == -math.inf:
        return math.nan if top == -math.inf else math.inf
    return None


def _distinct(row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The row's distinct values other than -inf, ascending, and how often each occurs.

    Rows repeat values (flat backgrounds; a 16-bit format has at most 65,536 values), so
    each distinct value is exponentiated once and weighted by its count.
    """
    if len(row) > SHORT_ROW:
        return np.unique(row[row != -np.inf], return_counts=True)
    counts = Counter(row.tolist())  # np.unique's fixed cost dominates short rows
    counts.pop(-math.inf, None)
    values = sorted(counts)
    return np.array(values, dtype=np.float64), np.array([counts[v] for v in values], dtype=np.int64)


def _round_mpf(x: tuple, fmt: Format, *, sticky: bool = False) -> float:
    sign, man, exp, _ = x
    if sign:
        raise AssertionError("cross entropy enclosures are non-negative")
    return round_scaled(man, exp, fmt, sticky=sticky)


def _log1p_bounds(s_lo: gmpy2.mpfr, s_hi: gmpy2.mpfr, prec: int) -> tuple[tuple, tuple]:
    """[log1p(s_lo) rounded down, log1p(s_hi) rounded up], by MPFR (correctly rounded), as mpf."""
    with gmpy2.context(precision=prec, round=gmpy2.RoundDown):
        lo = gmpy2.log1p(s_lo)
    with gmpy2.context(precision=prec, round=gmpy2.RoundUp):
        hi = gmpy2.log1p(s_hi)
    return _to_mpf(lo), _to_mpf(hi)


# |x| up to this keeps exp(x) far inside MPFR's exponent range (about 2**30 bits).
DIRECT_LIMIT = 2.0**16
SHORT_ROW = 256  # rows up to this long are deduplicated in plain Python


def _weighted_sum_bounds(exps: list, counts: list[int], prec: int) -> tuple:
    """[lo, hi] of sum_j counts_j * e_j, where e_j <= true term < e_j (1 + 2**(1 - prec))."""
    # prec + 64 bits hold each count * e exactly, so only the two sums round.
    with gmpy2.context(precision=prec + 64, round=gmpy2.RoundDown):
        weighted = [e * c if c != 1 else e for e, c in zip(exps, counts)]
        s_lo = gmpy2.fsum(weighted)
    with gmpy2.context(precision=prec + 64, round=gmpy2.RoundUp):
        s_hi = gmpy2.fsum(weighted) * (1 + gmpy2.mul_2exp(gmpy2.mpfr(1), 1 - prec))
    return s_lo, s_hi


def _exps_rounded_down(arguments: list, prec: int) -> list:
    """exp of each argument rounded down by MPFR, so r <= exp(t) < r + ulp(r) <= r (1 + 2**(1 - prec)).

    prec >= 53, so MPFR reads every double exactly.
    """
    with gmpy2.context(precision=prec, round=gmpy2.RoundDown):
        return list(map(gmpy2.exp, arguments))


def _scaled_exp_sum(values: np.ndarray, counts: np.ndarray, top: float, prec: int) -> tuple:
    """[lo, hi] of sum_j counts_j exp(values_j - top), as exp(-top) * sum_j counts_j exp(values_j).

    For moderate values (|x| <= DIRECT_LIMIT): no difference needs to be exact.
    """
    s_lo, s_hi = _weighted_sum_bounds(_exps_rounded_down(values.tolist(), prec), counts.tolist(), prec)
    with gmpy2.context(precision=prec, round=gmpy2.RoundDown):
        lo = s_lo * gmpy2.exp(-top)
    with gmpy2.context(precision=prec, round=gmpy2.RoundUp):
        hi = s_hi * gmpy2.exp(-top)
    return lo, hi


def _shifted_exp_sum(values: np.ndarray, counts: np.ndarray, top: float, prec: int) -> tuple:
    """[lo, hi] of sum_j counts_j exp(values_j - top), each difference formed exactly.

    For any values: the float64 difference and its TwoSum error are an exact
    double-double (the error is 0 whenever the difference is a double, which is the
    rule for large offsets).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        heads = values - top
        back = heads - values
        tails = (values - (heads - back)) + (-top - back)
    simple = tails == 0
    exps = _exps_rounded_down(heads[simple].tolist(), prec)
    if not simple.all():
        head, tail = heads[~simple], tails[~simple]
        span = int((np.frexp(head)[1] - np.frexp(tail)[1]).max()) + 54  # bits of head + tail
        with gmpy2.context(precision=max(span, prec)):
            exact = [gmpy2.mpfr(h) + t for h, t in zip(head.tolist(), tail.tolist())]
        exps += _exps_rounded_down(exact, prec)
    order = np.concatenate([counts[simple], counts[~simple]])
    return _weighted_sum_bounds(exps, order.tolist(), prec)


def _exp_sum_bounds(values: np.ndarray, counts: np.ndarray, top: float, prec: int) -> tuple:
    """Rigorous [lo, hi] (mpfr) of sum_j counts_j exp(values_j - top), for values <= top."""
    if not len(values):
        return gmpy2.mpfr(0), gmpy2.mpfr(0)
    if max(abs(float(values[0])), abs(top)) <= DIRECT_LIMIT:  # values are sorted
        return _scaled_exp_sum(values, counts, top, prec)
    return _shifted_exp_sum(values, counts, top, prec)


def _to_mpf(x: gmpy2.mpfr) -> tuple:
    man, exp = x.as_mantissa_exp()
    return mp.from_man_exp(int(man), int(exp))


def _enclose(row: np.ndarray, target: int, fmt: Format, prec: int) -> _Enclosure:
    """Rigorous enclosure of the loss of a row with no +inf/NaN and a finite target."""
    values, counts = _distinct(row)
    top = float(values[-1])
    m = mp.from_float(top)
    a = mp.mpf_sub(m, mp.from_float(float(row[target])), 0)  # exact (prec 0)
    n_finite = int(counts.sum())
    counts[-1] -= 1  # the maximum's own term is the 1 in log1p
    if not counts[-1]:
        values, counts = values[:-1], counts[:-1]
    if not len(values):
        return _Enclosure(a, a, False)
    largest = float(values[-1]) - top  # a float estimate is enough here
    # Bits of the sum needed: enough below the loss's own size (or below the format's
    # finest grid, past which nothing changes the rounding). Rigour does not depend
    # on this choice, only whether the enclosure is tight enough to decide.
    a_mag = a[2] + a[3] if a != mp.fzero else -math.inf
    loss_mag = max(a_mag, min(largest * _LOG2E, 0.0) - 1.0, fmt.quantum_exponent - 2)
    k_bits = max(int(prec + math.log2(n_finite) + 4 - loss_mag), 16)
    cutoff = -0.71 * k_bits  # exp(d) < 2**-k_bits below it
    with np.errstate(over="ignore"):
        # d is within a relative 2**-53 of x - m: far inside the cutoff's 2.4% margin.
        evaluated = values - top >= cutoff  # an overflowed -inf difference is far below it too
    n_cut = int(counts[~evaluated].sum())
    s_lo, s_hi = _exp_sum_bounds(values[evaluated], counts[evaluated], top, prec)
    if n_cut:  # each skipped term is below 2**-k_bits
        with gmpy2.context(precision=prec + 64, round=gmpy2.RoundUp):
            s_hi += gmpy2.mul_2exp(gmpy2.mpfr(n_cut), -k_bits)
    l_lo, l_hi = _log1p_bounds(s_lo, s_hi, prec)
    lo = mp.mpf_add(a, l_lo, prec, mp.round_floor)
    hi = mp.mpf_add(a, l_hi, prec, mp.round_ceiling)
    # Some finite term is always present here, so the loss is strictly above a.
    return _Enclosure(lo, hi, sticky_lo=lo == a or l_lo == mp.fzero)


def _start_precision(fmt: Format, start_precision: int | None) -> int:
    # At least 53 bits: `exact` is a float64 approximation too.
    return start_precision or max(fmt.precision, 53) + START_GUARD_BITS


def row_loss(
    row: Sequence[float] | np.ndarray, target: int, fmt: Format, start_precision: int | None = None
) -> OracleValue:
    """Correctly rounded cross entropy of one row of exact float values.

    ``start_precision`` (bits) overrides the first working precision; self-checks use
    it to recompute a value from a much higher starting point.
    """
    row = np.asarray(row, dtype=np.float64)
    special = _special(row, target)
    if special is not None:
        return OracleValue(special, special, True, 0, "special")
    prec = _start_precision(fmt, start_precision)
    f64 = format_of(torch.float64)
    while True:
        enc = _enclose(row, target, fmt, prec)
        lo = _round_mpf(enc.lo, fmt, sticky=enc.sticky_lo)
        hi = _round_mpf(enc.hi, fmt)
        exact_lo = _round_mpf(enc.lo, f64, sticky=enc.sticky_lo)
        if lo == hi:
            method = "exact" if enc.lo == enc.hi else "mpmath"
            return OracleValue(lo, exact_lo, True, prec, method)
        if prec >= MAX_PRECISION:
            return OracleValue(lo, exact_lo, False, prec, "mpmath")
        prec *= 2
