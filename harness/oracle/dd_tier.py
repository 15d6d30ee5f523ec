"""Double-double oracle tier: each loss in about 85 bits with a rigorous bound, for any output format.

For a row x with target t, loss = a + log1p(s), a = m - x_t (m the maximum, at index k),
s = sum over j != k of exp(x_j - m). Here:
- a is exact as a double-double (two_sum of m and -x_t);
- each x_j - m is exact as a double-double (two_sum), each exp within EXP_REL relative
  (harness.oracle.double_double.exp_dd; terms below exp(-708) are 0, within 2**-1021);
- s is summed by exact extraction (double_double.sum_rows), and the terms' own errors add
  at most EXP_REL (s + bound) + n 2**-1021;
- log1p is evaluated in double-double (double_double.log1p_dd) with its own bound, and an
  error ds in s moves it by at most ds / (1 + s - ds);
- a + log1p(s) is added by two_sums into a triple-double vh + vm + vt, rounding only the
  smallest part (so a tail far below an ulp, beside an a that is itself a midpoint, is kept).
So the exact loss lies within ``bound`` of vh + vm + vt. ``certify`` proves the rounding to a
format when that interval lies strictly between the two rounding midpoints around the
candidate, comparing exactly in double-double (midpoints of float64 are not float64
numbers, but their distance to the candidate is). Otherwise, and for special values
(NaN, ±inf, a -inf target, losses below 2**-900), the mpmath tier decides.
The mean is the exact sum of the per-row double-doubles with their bounds, divided by N.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.formats import Format
from harness.oracle import double_double as dd
from harness.oracle.dd_kernels import shifted_exp_sums
from harness.oracle.value import OracleValue

__all__ = ["METHOD", "PRECISION", "certify", "decide_mean", "decide_rows", "enclose_rows"]

METHOD = "double-double"
PRECISION = 106  # working bits of a double-double
_TINY_LOSS = 2.0**-900  # below this, absolute error terms (n 2**-1021) could matter: decline
_CLAMPED = 2.0**-1021  # bound on each term exp_dd sets to 0, and on its subnormal rounding
_SAFE = 1.0 - 2.0**-50  # lower-bounds a positive float64 result after one rounding


def enclose_rows(logits: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, ...]:
    """Per row of (N, C) logits (any graded dtype) and (N,) int targets:
    (ordinary?, vh, vm, vt, bound) with |loss - (vh + vm + vt)| <= bound for ordinary rows
    (vh the loss rounded to float64, |vm| <= ulp(vh) / 2, |vt| <= 2**-52 |vm|).

    Rows with NaN, +inf, a -inf target or every logit -inf are not ordinary (no claim).
    """
    x = logits.detach().to(device="cpu", dtype=torch.float64).contiguous().numpy()
    n_rows, n = x.shape
    rows = np.arange(n_rows)
    argmax = x.argmax(axis=1)  # the first NaN where there is one, so top is NaN there
    top = x[rows, argmax]
    xt = x[rows, np.asarray(targets, dtype=np.int64)]
    ordinary = np.isfinite(top) & np.isfinite(xt)
    vh, vm, vt, bound = (np.full(n_rows, fill) for fill in (np.nan, np.nan, np.nan, np.inf))
    if not ordinary.any():
        return ordinary, vh, vm, vt, bound
    pick = np.flatnonzero(ordinary)
    xs = x if ordinary.all() else x[pick]
    m, k, target_value = top[pick], argmax[pick], xt[pick]

    s, e, sum_error = shifted_exp_sums(xs, m, k)
    s_error = dd.upper(sum_error + dd.EXP_REL * (s + np.abs(e) + sum_error) + n * _CLAMPED)
    y, yl, y_error = dd.log1p_dd(s, e)
    with np.errstate(invalid="ignore", over="ignore"):
        # log1p moves by at most ds / (1 + xi) for xi between s and the computed value
        low_s = np.maximum((s - s_error) * _SAFE, 0.0)
        y_error = dd.upper(y_error + s_error / ((1.0 + low_s) * _SAFE))
        a, al = dd.two_sum(m, -target_value)  # exact: a + al = m - x_t
        s1, f = dd.two_sum(a, y)  # exact, and below: only the last addition rounds
        g, gl = dd.two_sum(f, al)
        h_out, m_out = dd.two_sum(s1, g)
        rest = gl + yl  # the one rounding
        m_out, t_out = dd.two_sum(m_out, rest)
        h_out, m_out = dd.two_sum(h_out, m_out)  # renormalized: h_out is the nearest double
        m_out, t_out = dd.two_sum(m_out, t_out)
        total = dd.upper(y_error + dd.U * np.abs(rest))
    good = np.isfinite(h_out) & np.isfinite(total) & (h_out >= _TINY_LOSS)
    vh[pick], vm[pick], vt[pick], bound[pick] = h_out, m_out, t_out, np.where(good, total, np.inf)
    return ordinary, vh, vm, vt, bound


def _half_gaps(c: np.ndarray, fmt: Format) -> tuple[np.ndarray, np.ndarray]:
    """(half the gap above c, half the gap below c) for finite values c >= 0 of fmt, as float64."""
    mantissa, exponent = np.frexp(c)  # c = mantissa 2**exponent, mantissa in [0.5, 1) (0 for c = 0)
    top = np.where(c == 0, fmt.emin, np.maximum(exponent - 1, fmt.emin))  # c's binade; subnormals share emin's
    up = np.ldexp(1.0, top - fmt.precision)  # half an ulp of c
    down = np.where((mantissa == 0.5) & (exponent - 1 > fmt.emin), up / 2, up)  # c a power of two
    return up, down


def _round_to(v: np.ndarray, side: np.ndarray, fmt: Format) -> np.ndarray:
    """v >= 0 rounded to fmt (precision below 53) once, to nearest; where v is a midpoint
    of fmt, to the side given (sign of the rest of the exact value), else to even.

    (torch converts float64 to float16 and bfloat16 through float32: a double rounding.)
    """
    _, exponent = np.frexp(v)
    quantum = np.ldexp(1.0, np.maximum(exponent - 1, fmt.emin) - fmt.precision + 1)  # ulp of fmt at v
    scaled = v / quantum  # exact: a power-of-two scaling, an integer below 2**53
    below = np.floor(scaled)
    frac = scaled - below
    odd = np.fmod(below, 2.0) == 1.0
    up = (frac > 0.5) | ((frac == 0.5) & ((side > 0) | ((side == 0) & odd)))
    c = (below + up) * quantum
    return np.where(c > fmt.max_finite, np.inf, c)


def _exceeds(a, b, c, d, bound):
    """Whether a + b + c + d > bound is proved: the float64 sum r has three roundings, each
    below u times the sum of |terms|, so r > bound + 3u sum|terms| (with margins) suffices."""
    r = ((a + b) + c) + d
    err = 3 * dd.U * (((np.abs(a) + np.abs(b)) + np.abs(c)) + np.abs(d))
    return (r * _SAFE > dd.upper(bound + err)) & (r > 0)


def _inside(
    c: np.ndarray, vh: np.ndarray, vm: np.ndarray, vt: np.ndarray, bound: np.ndarray, fmt: Format
) -> np.ndarray:
    """Whether [v - bound, v + bound], v = vh + vm + vt, lies strictly inside the rounding
    interval (c - down, c + up) of the candidate c (finite, >= 0, within one ulp of vh).

    With (s, t) = two_sum(vh - c, vm) (vh - c is exact: Sterbenz, or c = 0),
    v - c = s + t + vt exactly; the tests are (up - s) - t - vt > bound and
    (s + down) + t + vt > bound, with up - s and s + down exact two_sums: no midpoint is
    ever rounded before the comparison.
    """
    up, down = _half_gaps(c, fmt)
    s, t = dd.two_sum(vh - c, vm)
    above = _exceeds(*dd.two_sum(up, -s), -t, -vt, bound)
    below = _exceeds(*dd.two_sum(s, down), t, vt, bound) | (c == 0)  # the loss is never negative
    return above & below


def certify(
    vh: np.ndarray, vm: np.ndarray, vt: np.ndarray, bound: np.ndarray, fmt: Format
) -> tuple[np.ndarray, np.ndarray]:
    """(certified?, value): whether every real within ``bound`` of v = vh + vm + vt rounds
    (to nearest, ties to even) to the same value of fmt, and that value (as float64).

    The candidate is vh rounded to fmt, to the side of vm + vt where vh is a midpoint of
    fmt; for float64, vh itself, or its neighbour on the side of vt where vm is half an
    ulp. ``_inside`` proves or rejects it.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        vh, vm = dd.two_sum(vh, vm)  # vh the double nearest to vh + vm
        side = np.where(vm != 0, np.sign(vm), np.sign(vt))
        finite_bound = np.isfinite(vh) & np.isfinite(bound)
        if fmt.precision < 53:
            c = _round_to(np.where(finite_bound, vh, 0.0), side, fmt)
            ok = finite_bound & np.isfinite(c) & _inside(np.where(np.isfinite(c), c, 0.0), vh, vm, vt, bound, fmt)
            # +inf when the loss is at least the overflow boundary
            boundary = fmt.max_finite + 2.0 ** (fmt.emax - fmt.precision)
            ok_inf = finite_bound & np.isinf(c) & _exceeds(*dd.two_sum(vh, -boundary), vm, vt, bound)
            return ok | ok_inf, c
        c1 = np.where(finite_bound, vh, 0.0)
        c2 = np.nextafter(c1, c1 + np.where(side >= 0, np.inf, -np.inf))
        ok1 = finite_bound & _inside(c1, vh, vm, vt, bound, fmt)
        ok2 = (
            finite_bound
            & np.isfinite(c2)
            & (c2 >= 0)
            & _inside(np.where(np.isfinite(c2), c2, 0.0), vh, vm, vt, bound, fmt)
        )
        return ok1 | ok2, np.where(ok1, vh, c2)


def decide_rows(
    rows: torch.Tensor, targets: list[int], fmt: Format, skip: dict | None = None
) -> dict[int, OracleValue]:
    """Oracle values of the rows this tier proves, by row index; rows in ``skip`` are left out."""
    pending = [i for i in range(len(targets)) if not skip or i not in skip]
    if not pending:
        return {}
    subset = rows if len(pending) == len(targets) else rows[pending]
    ordinary, vh, vm, vt, bound = enclose_rows(subset, torch.tensor([targets[i] for i in pending]))
    certified, value = certify(vh, vm, vt, bound, fmt)
    certified &= ordinary
    return {
        pending[j]: OracleValue(float(value[j]), float(vh[j]), True, PRECISION, METHOD)
        for j in np.flatnonzero(certified)
    }


def decide_mean(table: torch.Tensor, targets: list[int], fmt: Format) -> OracleValue | None:
    """The mean loss over rows, when this tier proves its rounding to fmt; else None.

    Sum: exact extraction of the per-row double-doubles (losses are >= 0), plus their
    bounds. Division by N (exact in float64): q = fl(s / N), (p, pe) = two_prod(q, N)
    exact, correction ((s - p) - pe + e) / N with three roundings, each below 2 u |q|.
    """
    ordinary, vh, vm, vt, bound = enclose_rows(table, torch.tensor(targets))
    if not (ordinary.all() and np.isfinite(bound).all()):
        return None
    n = float(len(targets))
    s, e, s_error = dd.sum_rows(vh[None, :], vm[None, :])
    with np.errstate(invalid="ignore", over="ignore"):
        # sum_rows's bound takes |vm| <= u vh; n u sum |vm| covers the sum of the vm either way
        spread = bound.sum() + np.abs(vt).sum() + n * dd.U * np.abs(vm).sum()
        total_error = dd.upper(s_error[0] + spread * (1.0 + 2.0 * n * dd.U))
        q = s[0] / n
        p, pe = dd.two_prod(q, n)
        qh, ql = dd.two_sum(q, (((s[0] - p) - pe) + e[0]) / n)
        mean_error = dd.upper(total_error / n + 8 * dd.U * dd.U * abs(qh))
    if not (np.isfinite(qh) and qh >= _TINY_LOSS):
        return None
    certified, value = certify(np.array([qh]), np.array([ql]), np.zeros(1), np.array([mean_error]), fmt)
    if not certified[0]:
        return None
    return OracleValue(float(value[0]), float(qh), True, PRECISION, METHOD)
