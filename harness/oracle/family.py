"""The softmax family, certified per element: logsumexp (per row), log_softmax and softmax (per element).

For a row x with maximum m and s = Σ_{j≠k} exp(x_j − m) (k one index of the maximum),
lse = m + log1p(s), log_softmax_j = −A_j and softmax_j = exp(−A_j) with
A_j = (m − x_j) + log1p(s) ≥ 0 (Blanchard, Higham & Higham 2021, §3: the shifted forms).

Two tiers, as for the loss: a vectorized float64 evaluation with a rigorous error bound
decides 16/32-bit outputs whose enclosure lies strictly inside one rounding interval;
every other element (float64 outputs, close calls) gets an MPFR enclosure whose working
precision doubles until both ends round alike.

Special values (torch 2.13's behaviour, which is also the limit where one exists):
- NaN in the row: every output NaN.
- +inf in the row: logsumexp +inf; log_softmax and softmax NaN (several +inf entries have no limit).
- every logit −inf: logsumexp −inf; log_softmax and softmax NaN (0 / 0).
- a −inf logit among finite ones: log_softmax −inf, softmax exactly 0 there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gmpy2
import numpy as np
import torch

from harness.formats import FORMATS, Format
from harness.oracle.dd_elements import family_dd
from harness.oracle.dd_tier import METHOD, PRECISION
from harness.oracle.fast_tier import LIBM_ULPS, TINY, U, _neighbours
from harness.oracle.intervals import round_mpfr, round_mpfr_inside
from harness.oracle.mpfr_tier import START_GUARD_BITS, _exp_sum_bounds
from harness.oracle.value import MAX_PRECISION

__all__ = ["FAMILY_OPS", "OracleArray", "family"]

FAMILY_OPS = ("logsumexp", "log_softmax", "softmax")
_DOWN, _UP = gmpy2.RoundDown, gmpy2.RoundUp
_F64 = FORMATS["float64"]
_LOG2E = 1.4426950408889634


@dataclass
class OracleArray:
    """Oracle values for many elements at once (any shape), with how each was decided.

    ``value``: correctly rounded to the format (a best estimate where not certified);
    ``exact``: the exact value rounded to float64; ``certified``: bool; ``precision``:
    working bits that decided it (0 special, 53 the float64 tier); ``method``: per element,
    "special", "float64", "exact" or "mpmath".
    """

    value: np.ndarray
    exact: np.ndarray
    certified: np.ndarray
    precision: np.ndarray
    method: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> OracleArray:
        return cls(np.full(shape, math.nan), np.full(shape, math.nan), np.zeros(shape, dtype=bool),
                   np.zeros(shape, dtype=np.int64), np.full(shape, "", dtype=object))  # fmt: skip

    def set(self, index, value, exact, certified, precision, method) -> None:
        self.value[index], self.exact[index], self.certified[index] = value, exact, certified
        self.precision[index], self.method[index] = precision, method


def _certify(lo: torch.Tensor, hi: torch.Tensor, estimate: torch.Tensor, fmt: Format) -> tuple:
    """(certified?, candidate) for non-negative quantities known to lie in [lo, hi] (lo clamped at 0)."""
    lo = lo.clamp(min=0.0)
    candidate = estimate.clamp(min=0.0).to(fmt.dtype).to(torch.float64)
    below, above = _neighbours(candidate, fmt)
    boundary = fmt.max_finite + 2.0 ** (fmt.emax - fmt.precision)
    mid_lo = torch.where(candidate > 0, (candidate + below) / 2, torch.full_like(candidate, -torch.inf))
    mid_hi = torch.where(candidate < fmt.max_finite, (candidate + above) / 2, torch.full_like(candidate, boundary))
    ok = torch.isfinite(candidate) & (mid_lo < lo) & (hi < mid_hi) & torch.isfinite(hi)
    return ok, candidate


def _log1p_s_fast(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: (m, log1p(s) in float64, a rigorous bound on its error), as harness.oracle.fast_tier derives it."""
    n = x.shape[1]
    m, k = x.max(dim=1)
    d = x - m.unsqueeze(1)
    e = torch.exp(d)
    e[torch.arange(len(x)), k] = 0.0  # the maximum's own term is the 1 in log1p
    s = e.sum(dim=1)
    log1p_s = torch.log1p(s)
    weighted = -torch.linalg.vecdot(e, d.clamp(min=-torch.finfo(torch.float64).max))  # Σ e_j |d_j|
    ds = (U * weighted + (2 * LIBM_ULPS + n - 1) * U * s + n * TINY) * 1.01
    dl = (ds / (1.0 + (s - ds).clamp(min=0.0)) + LIBM_ULPS * 2 * U * log1p_s) * 1.01 + 2 * TINY
    return m, log1p_s, dl


def _fast(rows: torch.Tensor, op: str, fmt: Format) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(certified?, value, float64 estimate) per output element, from the float64 tier.

    Errors: m − x_j rounds once (u |gap|), log1p(s) as the loss's fast tier bounds it,
    the addition once (u A); exp adds LIBM_ULPS ulps and moves by at most
    p (exp(|ΔA|) − 1); the total is inflated by 1% for second-order terms.
    """
    x = rows.to(torch.float64)
    m, log1p_s, dl = _log1p_s_fast(x)
    finite = torch.isfinite(log1p_s) & torch.isfinite(m) & torch.isfinite(x).logical_or(torch.isneginf(x)).all(dim=1)
    if op == "logsumexp":
        lse = m + log1p_s
        err = (dl + U * m.abs() + U * lse.abs()) * 1.01
        ok, candidate = _signed_certify(lse, err, fmt)
        return (ok & finite).numpy(), candidate.numpy(), lse.numpy()
    gap = m.unsqueeze(1) - x  # +inf at masked classes
    a = gap + log1p_s.unsqueeze(1)
    err_a = ((U * gap + dl.unsqueeze(1)) + U * a) * 1.01
    masked = torch.isneginf(x) & finite.unsqueeze(1)
    live = torch.isfinite(a) & finite.unsqueeze(1)
    if op == "log_softmax":
        ok, candidate = _certify(a - err_a, a + err_a, a, fmt)
        value = torch.where(masked, -torch.inf, -candidate)
        return ((ok & live) | masked).numpy(), value.numpy(), (-a).numpy()
    p = torch.exp(-a)
    err_p = p * (torch.expm1(err_a) + LIBM_ULPS * 2 * U) * 1.01 + 2 * TINY
    ok, candidate = _certify(p - err_p, p + err_p, p, fmt)
    # exp(−A) below half the smallest subnormal rounds to 0, however loose A's bound is (huge logits)
    underflows = live & ((a - err_a) > 1.0 - math.log(fmt.smallest_subnormal) + math.log(2.0))
    ok = ok | underflows
    value = torch.where(masked | underflows, 0.0, candidate)
    return ((ok & live) | masked).numpy(), value.numpy(), p.numpy()


def _underflowing(rows: torch.Tensor, fmt: Format) -> np.ndarray:
    """Softmax elements proved below half the smallest subnormal of fmt (they round to 0), from the float64 tier.

    A = (m − x_j) + log1p(s) is bounded as in ``_fast``; exp(−A) < smallest / 2 once the
    lower end of A exceeds −log(smallest / 2), with a margin of 1 for exp's own error.
    """
    x = rows.to(torch.float64)
    m, log1p_s, dl = _log1p_s_fast(x)
    finite = torch.isfinite(log1p_s) & torch.isfinite(m) & torch.isfinite(x).logical_or(torch.isneginf(x)).all(dim=1)
    gap = m.unsqueeze(1) - x
    a = gap + log1p_s.unsqueeze(1)
    err_a = ((U * gap + dl.unsqueeze(1)) + U * a) * 1.01
    live = torch.isfinite(a) & finite.unsqueeze(1)
    return (live & ((a - err_a) > 1.0 - math.log(fmt.smallest_subnormal) + math.log(2.0))).numpy()


def _signed_certify(value: torch.Tensor, err: torch.Tensor, fmt: Format) -> tuple:
    """Certification of values of either sign: on the magnitude, when the interval keeps one sign."""
    sign = torch.where(value < 0, -1.0, 1.0)
    magnitude = value.abs()
    keeps_sign = (value - err > 0) | (value + err < 0)
    ok, candidate = _certify(magnitude - err, magnitude + err, magnitude, fmt)
    return ok & keeps_sign, candidate * sign


def _special(row: np.ndarray, op: str) -> float | None:
    """The value of every element (or of the row, for logsumexp) when specials decide it."""
    if np.isnan(row).any():
        return math.nan
    top = row.max()
    if top == math.inf:
        return math.inf if op == "logsumexp" else math.nan
    if top == -math.inf:
        return -math.inf if op == "logsumexp" else math.nan
    return None


def _log1p_s(row: np.ndarray, prec: int) -> tuple[float, gmpy2.mpfr, gmpy2.mpfr]:
    """(m, lower and upper ends of log1p(s)) for a row with a finite maximum."""
    live = row[row != -math.inf]
    m = float(live.max())
    values, counts = np.unique(live, return_counts=True)
    counts[-1] -= 1
    if not counts[-1]:
        values, counts = values[:-1], counts[:-1]
    if not len(values):
        return m, gmpy2.mpfr(0), gmpy2.mpfr(0)
    second = float(values[-1]) - m
    k_bits = int(prec + math.log2(len(row)) + 8 + min(-second, 2.0**32) * _LOG2E)
    with np.errstate(over="ignore"):
        evaluated = values - m >= -0.71 * k_bits
    s_lo, s_hi = _exp_sum_bounds(values[evaluated], counts[evaluated], m, prec)
    n_cut = int(counts[~evaluated].sum())
    if n_cut:
        with gmpy2.context(precision=prec + 64, round=_UP):
            s_hi += gmpy2.mul_2exp(gmpy2.mpfr(n_cut), -k_bits)
    with gmpy2.context(precision=prec, round=_DOWN):
        l_lo = gmpy2.log1p(s_lo)
    with gmpy2.context(precision=prec, round=_UP):
        l_hi = gmpy2.log1p(s_hi)
    return m, l_lo, l_hi


def _exact_gap(m: float, v: float) -> gmpy2.mpfr:
    with gmpy2.context(precision=2200):  # m − v of two doubles is exact at this precision
        return gmpy2.mpfr(m) - gmpy2.mpfr(v)


def _mpfr_row(row: np.ndarray, op: str, fmt: Format, out: OracleArray, index: int, pending: np.ndarray) -> None:
    """Decide the pending elements of one row (all of it for logsumexp) by MPFR enclosures."""
    special = _special(row, op)
    if special is not None:
        mask = slice(None) if op != "logsumexp" else ()
        target = (index, mask) if op != "logsumexp" else index
        out.set(target, special, special, True, 0, "special")
        return
    prec = max(fmt.precision, 53) + START_GUARD_BITS
    todo = np.flatnonzero(pending) if op != "logsumexp" else np.array([0])
    while len(todo):
        m, l_lo, l_hi = _log1p_s(row, prec)
        if op == "logsumexp":
            with gmpy2.context(precision=prec, round=_DOWN):
                lo = gmpy2.mpfr(m) + l_lo
            with gmpy2.context(precision=prec, round=_UP):
                hi = gmpy2.mpfr(m) + l_hi
            ends = {0: (lo, hi)}
        else:
            ends = {}
            values = row[todo]
            for value in np.unique(values).tolist():
                if value == -math.inf:
                    ends[value] = None
                    continue
                gap = _exact_gap(m, value)
                with gmpy2.context(precision=prec, round=_DOWN):
                    a_lo = gap + l_lo
                with gmpy2.context(precision=prec, round=_UP):
                    a_hi = gap + l_hi
                if op == "log_softmax":
                    ends[value] = (a_lo, a_hi)  # of A = −log_softmax: gmpy2 negation would round
                else:
                    with gmpy2.context(precision=prec, round=_DOWN):
                        p_lo = gmpy2.exp(-a_hi)
                    with gmpy2.context(precision=prec, round=_UP):
                        p_hi = gmpy2.exp(-a_lo)
                    ends[value] = (p_lo, p_hi)
        decided, undecided = [], []
        for j in todo.tolist():
            key = 0 if op == "logsumexp" else float(row[j])
            bounds = ends[key]
            target = index if op == "logsumexp" else (index, j)
            if bounds is None:  # a masked class
                value = -math.inf if op == "log_softmax" else 0.0
                out.set(target, value, value, True, 0, "special")
                continue
            sign = -1.0 if op == "log_softmax" else 1.0
            if bounds[0] == bounds[1]:
                lo = hi = round_mpfr(bounds[0], fmt)
            else:  # the value is irrational, so strictly inside: a tie at an end breaks its way
                lo, hi = round_mpfr_inside(bounds[0], fmt, +1), round_mpfr_inside(bounds[1], fmt, -1)
            if lo == hi or prec >= MAX_PRECISION:
                method = "exact" if bounds[0] == bounds[1] else "mpmath"
                out.set(target, sign * lo, sign * round_mpfr(bounds[0], _F64), lo == hi, prec, method)
                decided.append(j)
            else:
                undecided.append(j)
        todo = np.array(undecided, dtype=np.int64)
        prec *= 2


def family(op: str, rows: torch.Tensor, fmt: Format) -> OracleArray:
    """Oracle values of op over (N, C) rows of exact values: shape (N,) for logsumexp, else (N, C).

    Raises ValueError for an unknown op or rows that are not 2-D.
    """
    if op not in FAMILY_OPS:
        raise ValueError(f"op must be one of {', '.join(FAMILY_OPS)}, got {op!r}")
    if rows.ndim != 2 or rows.shape[1] < 1:
        raise ValueError(f"rows must have shape (N, C) with C >= 1, got {tuple(rows.shape)}")
    rows = rows.detach().cpu()
    shape = (rows.shape[0],) if op == "logsumexp" else tuple(rows.shape)
    out = OracleArray.empty(shape)
    pending = np.ones(shape, dtype=bool)
    if fmt.precision < 53 and rows.numel():
        ok, value, estimate = _fast(rows, op, fmt)
        out.value[ok], out.exact[ok], out.certified[ok] = value[ok], estimate[ok], True
        out.precision[ok], out.method[ok] = 53, "float64"
        pending = ~ok
    if op == "softmax" and pending.any() and rows.numel():
        zero = _underflowing(rows, fmt) & pending  # every tier but this one would take them one by one
        out.value[zero], out.exact[zero], out.certified[zero] = 0.0, 0.0, True
        out.precision[zero], out.method[zero] = 53, "float64"
        pending &= ~zero
    if pending.any() and rows.numel():
        ok, value, estimate = family_dd(op, rows, fmt)
        ok &= pending
        out.value[ok], out.exact[ok], out.certified[ok] = value[ok], estimate[ok], True
        out.precision[ok], out.method[ok] = PRECISION, METHOD
        pending &= ~ok
    table = rows.to(torch.float64).numpy()
    for i in range(shape[0]):
        row_pending = pending[i]
        if np.any(row_pending):
            _mpfr_row(table[i], op, fmt, out, i, np.atleast_1d(row_pending))
    return out
