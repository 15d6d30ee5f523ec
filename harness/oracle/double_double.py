"""Double-double arithmetic on NumPy arrays, with proved error bounds: the certified
float64 tier's primitives (harness.oracle.dd_tier), reusable for softmax elements.

A double-double (dd) is an unevaluated sum hi + lo of two float64 numbers. Everything here
is built from error-free transformations in round-to-nearest IEEE float64:

- ``two_sum(a, b)`` (Knuth): s + e == a + b exactly, s = fl(a + b); any a, b without overflow.
- ``fast_two_sum(a, b)`` (Dekker): the same in 3 operations when exponent(a) >= exponent(b)
  (in particular |a| >= |b|).
- ``two_prod(a, b)`` (Dekker, with Veltkamp's split into 26 + 27 bits): p + e == a * b
  exactly, p = fl(a * b), when no intermediate overflows (|a|, |b| < 2**995) and the
  product's error term is representable (exponent(a) + exponent(b) >= -969).
  NumPy has no fused multiply-add (numpy.fma does not exist), torch has none that is
  guaranteed fused, and Python 3.11's math has none (math.fma is 3.13+), so the exact
  product uses Dekker's splitting, not an FMA.

On top of those: ``exp_dd`` (relative error below ``EXP_REL`` = 2**-84), ``log1p_dd``
(a bound computed per element: at most 2**-84 relative, 2**-100 relative for arguments
below 2**-20, 2**-96 absolute above 2**-10), and ``sum_rows`` (row sums of non-negative dd terms with a bound
about 2**-100 relative for rows up to 2**18 terms). Each function's comment proves its bound.
Every function works elementwise on arrays of any shape (and on scalars); the functions
marked ``compilable`` are also compiled into numba kernels when numba is installed
(harness.oracle.dd_kernels), so both paths run the same IEEE operations in the same order.

For softmax elements (gradients): p_j = exp((x_j - m) - log S) is ``exp_dd`` of a
double-double argument (two_sum of x_j - m's parts and -log S's), within EXP_REL plus
the argument's own error; the target entry -(1 - p_t) is (S - e_t) / S with S - e_t
summed directly over j != t (``sum_rows`` on the terms with the target's set to 0: the
maximum's 1 included when t != k), so it never cancels.

Libraries considered: xprec (double-double NumPy dtype) and torch-dd give dd arithmetic
but no proved error bounds for exp/log; python-flint (Arb) gives rigorous balls but one
Python call per element, no faster than the MPFR tier; accupy gives accurate sums only.
None gives vectorized exp/log1p with proofs, hence this module.
"""

from __future__ import annotations

from collections.abc import Callable

import mpmath
import numpy as np


def compilable(fn: Callable) -> Callable:
    """Marks the functions harness.oracle.dd_kernels compiles with numba (numba is imported there)."""
    return fn


__all__ = [
    "EXP_ABS",
    "EXP_MIN",
    "EXP_REL",
    "U",
    "combine_sums",
    "exp_dd",
    "fast_two_sum",
    "log1p_dd",
    "sum_rows",
    "two_prod",
    "two_sum",
    "upper",
]

U = 2.0**-53  # unit roundoff of float64
_SPLITTER = 134217729.0  # 2**27 + 1 (Veltkamp)


@compilable
def two_sum(a, b):
    """(s, e) with s = fl(a + b) and s + e = a + b exactly (Knuth, 6 operations)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


@compilable
def fast_two_sum(a, b):
    """(s, e) with s + e = a + b exactly, when exponent(a) >= exponent(b) (Dekker, 3 operations)."""
    s = a + b
    return s, b - (s - a)


@compilable
def split(a):
    """(hi, lo) with hi + lo = a, hi of at most 26 significant bits, lo of at most 26 (Veltkamp)."""
    c = _SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi


@compilable
def two_prod(a, b):
    """(p, e) with p = fl(a b) and p + e = a b exactly (Dekker), under the conditions above."""
    p = a * b
    ah, al = split(a)
    bh, bl = split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


@compilable
def upper(x):
    """A float64 at least x (x >= 0 computed with at most 15 roundings): x (1 + 2**-48).

    Bounds below are sums and products of non-negative terms, each rounded to nearest;
    k roundings shrink the result by at most (1 - u)**k, which 2**-48 covers for k <= 15.
    """
    return x * (1.0 + 2.0**-48)


# --- exp -------------------------------------------------------------------------------
#
# exp(d), d = dh + dl (dl may be 0), for d <= 708. Reduction (Tang's table method):
#   k = round(d * 1024 / ln 2), k = 1024 K + i with 0 <= i < 1024,
#   r = d - k C with C = ln(2) / 1024, |r| <= C/2 (1 + 2**-30) + |dl| < R = 2**-11.5,
#   exp(d) = 2**K * E_i * exp(r), E_i = 2**(i / 1024).
# The table holds E_i = E1 + E2 + E3: E1 rounded to 26 bits (E1 times a 27-bit number is
# exact), E2 and E3 the next 53-bit pieces; |E_i - E1 - E2 - E3| <= 2**-131.
# C = C1 + C2 + C3 with C1, C2 of 32 bits each, so k C1 and k C2 are exact for
# |k| < 2**21 (|d| <= 708 gives |k| <= 1045944); |C - C1 - C2 - C3| <= 2**-127.
#
# Steps and their rounding errors (absolute, in units of E_i exp(r), which is in
# [0.999, 2.001]; u = 2**-53; magnitudes from |r| < R):
#   t1 = dh - k C1 is exact (Sterbenz: k C1 is within a factor 2 of dh when k != 0).
#   (rh, e) = two_sum(t1, -k C2) exact; rl = e + (dl - k C3): three roundings of terms
#     below 2**-43.3 (|dl| <= u |dh| <= 2**-43.4), and k |C - C1 - C2 - C3| <= 2**-106:
#     r - (rh + rl) <= 2**-95.3, which moves exp(r) by at most that (relative)   0.03
#   r1 = rh rounded to the grid 2**-37 (magic-number addition; 26 bits), r2 = rh - r1,
#     both exact; q = r1**2 is exact (52 bits).
#   sq = r2 (r1 + rh) + rl (2 rh + rl) = r**2 - q up to roundings of a 2**-48.4 term 0.002
#   p = rho**3 (1/6 + rho (1/24 + rho (1/120 + rho / 720))) with rho = fl(rh + rl):
#     truncation of the Taylor series after r**6/720: R**7/5040 e**R <= 2**-92.8   0.14
#     p(rho) - p(r): |p'| <= R**2/2 (1 + R) = 2**-24 times |rho - r| <= 2**-64.5   2.83
#     rounding: at most 6u relative to |p| <= 2**-37.08, so 2**-87.5               5.66
#   zc = (rl + sq/2) + p: two roundings, |zc| <= 2**-36.98 -> 2**-89.9               1.07
#   (wh, wl) = fast_two_sum(rh, q/2) exact (|q/2| <= |rh|); w1 = wh on the grid 2**-38
#     (27 bits), w2 = wh - w1, both exact; so exp(r) - 1 = w1 + (w2 + wl + zc) + errors.
#   t = (w2 + wl) + zc: two roundings, |t| <= 2**-36.65 -> 2**-89.3                 1.62
#   E1 w1 is exact (26 + 27 bits); (h1, e1) = fast_two_sum(E1, E1 w1), (h2, e2) =
#     fast_two_sum(h1, E2) exact.
#   E1 t: one rounding of a 2**-35.65 term                                          2.55
#   E2 (w1 + t): two roundings, 2**-90.45 each; E3 (1 + z) taken as E3: 2**-90.45    2.19
#   lo = (e1 + e2) + (E1 t + (E2 (w1 + t) + E3)): roundings of partial sums below
#     2**-37.4, 2**-35.3 and 2**-35.3                                               7.23
#   (h, l) = fast_two_sum(h2, lo) exact; times 2**K exact unless the result is
#     subnormal (then each part loses at most 2**-1075: the absolute EXP_ABS).
# Total, in units of 2**-90: 23.3, so |h + l - exp(d)| <= 2**-85.4 (h + l) + EXP_ABS.
# EXP_REL allows twice that. Arguments below EXP_MIN give (0, 0): exp(d) < 2**-1021.
# tests/test_double_double.py checks the bound against 600-bit mpmath values.
EXP_REL = 2.0**-84
EXP_ABS = 2.0**-1074
EXP_MIN = -708.0
_T = 10
_INV_C = 1024.0 / 0.6931471805599453  # any approximation: it only places k
_MAGIC = 1.5 * 2.0**52  # (y + M) - M rounds y to an integer for |y| < 2**51
_GRID37 = 1.5 * 2.0**15  # (x + G) - G rounds |x| < 2**13 to a multiple of 2**-37
_GRID38 = 1.5 * 2.0**14  # ... of 2**-38
_MAGIC_BITS = int(np.array(_MAGIC).view(np.int64))  # low 51 bits are zero
_P3, _P4, _P5, _P6 = 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0


def _pieces(value: mpmath.mpf, bits: tuple[int, ...]) -> list[float]:
    """value split into floats of the given significant bits, each the rest rounded to nearest."""
    out = []
    with mpmath.workprec(400):
        rest = value
        for b in bits:
            with mpmath.workprec(b):
                piece = +rest  # rounds to b bits, to nearest
            out.append(float(piece))
            rest = rest - mpmath.mpf(out[-1])
    return out


def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float, float]:
    with mpmath.workprec(400):
        entries = [_pieces(mpmath.mpf(2) ** (mpmath.mpf(i) / 1024), (26, 53, 53)) for i in range(1 << _T)]
        c1, c2, c3 = _pieces(mpmath.log(2) / 1024, (32, 32, 53))
    e1, e2, e3 = (np.array(column) for column in zip(*entries))
    return e1, e2, e3, c1, c2, c3


_E1, _E2, _E3, _C1, _C2, _C3 = _tables()


@compilable
def _exp_reduced(dh, dl, kf, e1, e2, e3):
    """(h, l) ~ E_i exp(d - k C) for table entry (e1, e2, e3) = E_i, before scaling by 2**K."""
    t1 = dh - kf * _C1
    rh, e = two_sum(t1, -(kf * _C2))
    rl = e + (dl - kf * _C3)
    r1 = (rh + _GRID37) - _GRID37
    r2 = rh - r1
    q = r1 * r1
    sq = r2 * (r1 + rh) + rl * (rh + rh + rl)
    rho = rh + rl
    p = rho * rho * rho * (_P3 + rho * (_P4 + rho * (_P5 + rho * _P6)))
    zc = (rl + 0.5 * sq) + p
    wh, wl = fast_two_sum(rh, 0.5 * q)
    w1 = (wh + _GRID38) - _GRID38
    w2 = wh - w1
    t = (w2 + wl) + zc
    h1, x1 = fast_two_sum(e1, e1 * w1)
    h2, x2 = fast_two_sum(h1, e2)
    lo = (x1 + x2) + (e1 * t + (e2 * (w1 + t) + e3))
    return fast_two_sum(h2, lo)


def exp_dd(dh: np.ndarray, dl: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """exp(dh + dl) as a double-double (hi, lo), elementwise, for dh <= 708 (or -inf).

    ``|hi + lo - exp(dh + dl)| <= EXP_REL * (hi + lo) + EXP_ABS``, where |dl| <= 2**-53 |dh|
    (a TwoSum error, or 0); dh < EXP_MIN gives (0, 0), within 2**-1021 of exp(d).
    dh may be any float64 array; the result has its shape.
    """
    dh = np.asarray(dh, dtype=np.float64)
    dl = np.broadcast_to(np.asarray(dl, dtype=np.float64), dh.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        under = ~(dh >= EXP_MIN)  # NaN-free input assumed; -inf is under
        if under.any():
            dh = np.where(under, EXP_MIN, dh)
            dl = np.where(under, 0.0, dl)
        shifted = dh * _INV_C + _MAGIC
        kf = shifted - _MAGIC
        kbits = shifted.view(np.int64)  # under bits: k + 2**51 (M's own bits end in zeros)
        index = kbits & ((1 << _T) - 1)
        scale = (((kbits >> _T) + (1023 - (_MAGIC_BITS >> _T))) << 52).view(np.float64)  # 2**K
        hi, lo = _exp_reduced(
            dh, dl, kf, _E1.take(index, mode="clip"), _E2.take(index, mode="clip"), _E3.take(index, mode="clip")
        )
        hi, lo = hi * scale, lo * scale
    if under.any():
        hi[under] = 0.0
        lo[under] = 0.0
    return hi, lo


# --- row sums --------------------------------------------------------------------------
#
# sum_rows adds the non-negative terms h[i, :] (with small corrections l[i, :]) of each row
# exactly up to a bound of about n**3 2**-155 of the row sum, by extraction (Rump, Ogita,
# Oishi, "Accurate floating-point summation part I", SIAM J. Sci. Comput. 31 (2008), 189;
# ExtractVector):
#   F = fl(sum_j h_j) in any order, so B = F (1 + 2 n u) >= sum_j h_j (Higham, eq. 4.4).
#   sigma1 = 2**e >= B. For 0 <= h <= sigma1, fl(sigma1 + h) lies on the grid g1 =
#   ulp(sigma1) = 2**-52 sigma1 of [sigma1, 2 sigma1], so q_j = fl(sigma1 + h_j) - sigma1 is
#   h_j rounded to that grid, exactly, and r_j = h_j - q_j is exact with |r_j| <= g1 / 2.
#   Every q_j is a multiple of g1 and sum |q_j| <= B + n g1 / 2 <= 2 sigma1 = 2**53 g1, so
#   the float64 sum of the q_j is exact in any order.
#   sigma2 = 2**e >= n g1: the same extraction of the r_j (|r_j| <= sigma2 / 2, so
#   fl(sigma2 + r_j) - sigma2 is exact by Sterbenz and a multiple of g2 / 2, g2 =
#   ulp(sigma2)); the q2_j sum exactly; the residuals |r2_j| <= g2 / 2 sum in float64
#   with error <= (n - 1) u n g2 / 2 <= n**3 2**-155 B; the l_j (|l_j| <= u h_j) sum
#   with error <= (n - 1) u sum_j |l_j| <= n u**2 B.
# The pieces (two exact sums and two rounded ones) are added by two_sum, so the result
# (s, e) carries a bound on |s + e - sum_j (h_j + l_j)|.


_TINY_SUM = 2.0**-1000  # keeps the grids inside the float64 range for all-zero rows


def _pow2_at_least(x: np.ndarray) -> np.ndarray:
    """Powers of two >= x, elementwise, for 0 < x < 2**1023."""
    _, exponent = np.frexp(x)  # x = mantissa 2**exponent, 0.5 <= mantissa < 1
    return np.ldexp(1.0, exponent)


@compilable
def combine_sums(s1, s2, s3, s4, n, bound_h, sigma2):
    """(s, e, bound) from the exact sums s1, s2 and the rounded sums s3 (residuals), s4 (l)."""
    hi, lo = two_sum(s1, s2)
    lo2 = (lo + s3) + s4
    s, e = two_sum(hi, lo2)
    g2 = sigma2 * 2.0**-52
    error = upper((n * U) * (n * g2 / 2 + U * bound_h) + 2 * U * (abs(lo) + abs(s3) + abs(s4)))
    return s, e, error


def sum_rows(h: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of (N, n) arrays: (s, e, bound) with |s + e - sum_j (h_ij + lo_ij)| <= bound.

    h must be non-negative and |lo| <= 2**-53 h (normalized terms, as exp_dd gives). The
    bound is about (n**3 2**-155 + n 2**-106) times the row sum.
    """
    n = h.shape[1]
    with np.errstate(over="ignore", invalid="ignore"):
        total = h.sum(axis=1)
        bound_h = upper(np.maximum(total * (1.0 + 2.0 * n * U), _TINY_SUM))
        sigma1 = _pow2_at_least(bound_h)[:, None]
        q1 = (sigma1 + h) - sigma1
        r1 = h - q1
        sigma2 = _pow2_at_least(n * sigma1 * 2.0**-52)
        q2 = (sigma2 + r1) - sigma2
        r2 = r1 - q2
        s1 = q1.sum(axis=1)  # exact
        s2 = q2.sum(axis=1)  # exact
        return combine_sums(s1, s2, r2.sum(axis=1), lo.sum(axis=1), n, bound_h, sigma2[:, 0])


# --- log1p -----------------------------------------------------------------------------
#
# log1p(s) for a dd s = sh + sl >= 0 (|sl| <= u sh), elementwise:
#   k = round(fl(log1p(sh)) / C), C = ln(2)/1024 (k = 0 for small s). Any k is correct;
#   a good one makes |t| <= 2**-10.4 below. With -k = 1024 K + i,
#   t = (1 + s) 2**(-k/1024) - 1 = (1 + s) 2**K E_i - 1, and
#   log1p(s) = k C + log1p(t).
#   For k = 0, t = s exactly. Otherwise (A, B) = two_sum(1, sh), B2 = fl(B + sl):
#   A + B2 = 1 + s within u |B2| <= 2**-104 (1 + s). The product with E1 + E2 + E3 is
#   two_prod(A, E1) + two_prod(A, E2) (exact) plus A E3 + B2 E1 + B2 E2 (each rounded, below
#   2**-51 A together; four roundings <= 2**-102 A); times 2**K (exact: A 2**K is near 1),
#   minus 1 by two_sum, exact; two more roundings of parts below 2**-50. So
#   |t_computed - t| <= 2**-100.3 (1 + |t|) <= 2**-98 (1 + |t|) =: Et.
#   log1p(t) = t - t**2/2 + t**3/3 - t**4 R(t), R = 1/4 - t/5 + ... - t**5/9, |t| < 1:
#     t**2 and t**3 as dd from two_prod (errors <= 6 u**2 |t|**2), t**3/3 as dd with
#     1/3 = THIRD1 + THIRD2; t**4 R in float64 (<= 8 u relative: <= 2 u |t|**4);
#     truncation <= |t|**10 / (10 (1 - |t|)); the final sum of the small parts has 7
#     roundings of partial sums below 4 u |t| + 0.3 |t|**4. Together
#     E_L <= 40 u**2 |t| + 5 u |t|**4 + |t|**10 / (10 (1 - |t|)) + Et / (1 - |t| - Et).
#   y = k C1 + k C2 (exact products) + fl(k C3) + L: two two_sums and three roundings of
#   parts below 2 u |y| + |k C3|: <= 8 u**2 |y| + |k| 2**-126. Products that underflow
#   (|t| < 2**-480) lose at most 2**-1070 in all: 2**-1060 is added.
_THIRD1 = 1.0 / 3.0
with mpmath.workprec(200):
    _THIRD2 = float(mpmath.mpf(1) / 3 - mpmath.mpf(_THIRD1))  # 1/3 = _THIRD1 + _THIRD2 + O(2**-107)


def log1p_dd(sh: np.ndarray, sl: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log1p(sh + sl) for a dd argument >= 0, elementwise: (y, yl, bound), |y + yl - log1p(s)| <= bound.

    The bound is computed per element: at most 2**-84 |log1p(s)|, 2**-100 |log1p(s)| for
    s < 2**-20, and 2**-96 absolute from s = 2**-10 up to 2**21 (two million classes).
    """
    sh = np.asarray(sh, dtype=np.float64)
    sl = np.asarray(sl, dtype=np.float64)
    c = _C1 + _C2
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        kf = np.rint(np.log1p(sh) / c)
        neg = -kf.astype(np.int64)
        index, big = neg & ((1 << _T) - 1), neg >> _T
        scale = np.ldexp(1.0, big)
        a, b = two_sum(1.0, sh)
        b2 = b + sl
        e1, e2, e3 = _E1[index], _E2[index], _E3[index]
        p1, x1 = two_prod(a, e1)
        p2, x2 = two_prod(a, e2)
        rest = ((x1 + x2) + a * e3) + (b2 * e1 + b2 * e2)
        u1, v1 = two_sum(p1 * scale, -1.0)
        u2, v2 = two_sum(u1, p2 * scale)
        th, tl = fast_two_sum(u2, (v1 + v2) + rest * scale)
        t_error = 2.0**-98 * (1.0 + np.abs(th))
        small = kf == 0
        th, tl, t_error = np.where(small, sh, th), np.where(small, sl, tl), np.where(small, 0.0, t_error)

        q, qe = two_prod(th, th)
        q_lo = qe + 2.0 * th * tl
        cube, ce = two_prod(q, th)
        cube_lo = ce + (q * tl + q_lo * th)
        c3, ce3 = two_prod(cube, _THIRD1)
        t4 = q * q
        r = 0.25 - th * (0.2 - th * (1.0 / 6.0 - th * (1.0 / 7.0 - th * (0.125 - th / 9.0))))
        a1, f1 = two_sum(th, -0.5 * q)
        a2, f2 = two_sum(a1, c3)
        small_parts = (f1 + f2) + ((tl - 0.5 * q_lo) + ((ce3 + cube * _THIRD2 + cube_lo * _THIRD1) - t4 * r))
        lh, ll = fast_two_sum(a2, small_parts)

        kc1, kc2, kc3 = kf * _C1, kf * _C2, kf * _C3
        b1, g1 = two_sum(kc1, lh)
        b3, g2 = two_sum(b1, kc2)
        y, yl = fast_two_sum(b3, ((g1 + g2) + kc3) + ll)

        at = np.abs(th) + np.abs(tl) + t_error
        series = 40 * U * U * at + 5 * U * at**4 + at**10 / (10 * (1 - at)) + t_error / (1 - at - t_error)
        bound = upper(series + 8 * U * U * (np.abs(y) + np.abs(kc1)) + np.abs(kf) * 2.0**-126 + 2.0**-1060)
        bound = np.where(at < 0.01, bound, np.inf)  # a bad first guess: no claim
    return y, yl, bound
