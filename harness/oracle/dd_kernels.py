"""The per-element work of the double-double tier: exp(x_ij - m_i) for every logit, as dd terms.

Two implementations of one computation, bit for bit the same (tests/test_double_double.py
checks it): a numba kernel, one fused loop over the elements (used when numba is
installed: ``pip install 'ce-harness[fast]'``), and NumPy array operations in blocks
(the fallback, about 5x slower on large rows). Both run the same IEEE float64 operations in
the same order (harness.oracle.double_double's functions, compiled by numba without
fast-math, so nothing is fused or reordered).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable

import numpy as np

from harness.oracle import double_double as dd

__all__ = ["BACKEND", "shifted_exp_sums", "shifted_exp_terms"]

_BLOCK = 1 << 15  # elements per NumPy block: a few hundred KiB per temporary, cache-sized

BACKEND = "numba" if importlib.util.find_spec("numba") is not None else "numpy"


def _numpy_terms(x: np.ndarray, m: np.ndarray, skip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_rows, n = x.shape
    hi, lo = np.empty_like(x), np.empty_like(x)
    rows_per = max(1, _BLOCK // max(n, 1))
    for r0 in range(0, n_rows, rows_per):
        top = -m[r0 : r0 + rows_per, None]
        for c0 in range(0, n, _BLOCK):
            block = x[r0 : r0 + rows_per, c0 : c0 + _BLOCK]
            with np.errstate(invalid="ignore", over="ignore"):
                dh, dl = dd.two_sum(block, top)
            hb, lb = dd.exp_dd(dh, dl)
            hi[r0 : r0 + rows_per, c0 : c0 + _BLOCK] = hb
            lo[r0 : r0 + rows_per, c0 : c0 + _BLOCK] = lb
    rows = np.arange(n_rows)
    hi[rows, skip] = 0.0
    lo[rows, skip] = 0.0
    return hi, lo


# The numba kernels, compiled on first use (numba is imported only then: most runs never
# need it). Module-level constants are frozen into the compiled code.
_exp_reduced, _two_sum, _combine_sums, _upper = dd._exp_reduced, dd.two_sum, dd.combine_sums, dd.upper
_E1, _E2, _E3 = dd._E1, dd._E2, dd._E3
_EXP_MIN, _INV_C, _MAGIC, _MASK, _T = dd.EXP_MIN, dd._INV_C, dd._MAGIC, (1 << dd._T) - 1, dd._T
_U, _TINY_SUM = dd.U, dd._TINY_SUM
_POW2 = np.ldexp(1.0, np.arange(-1022, 1024))  # 2**K, looked up: a gather vectorizes, ldexp does not


def _row_terms(x, top, skip, hi, lo):  # pragma: no cover - compiled; checked against _numpy_terms
    # Branch-free (selects, table gathers) so that LLVM vectorizes the loop.
    for j in range(x.shape[0]):
        dh, dl = _two_sum(x[j], top)
        keep = (dh >= _EXP_MIN) & (j != skip)
        dh = dh if keep else _EXP_MIN
        dl = dl if keep else 0.0
        kf = (dh * _INV_C + _MAGIC) - _MAGIC
        k = np.int64(kf)
        index = k & _MASK
        scale = _POW2[(k >> _T) + 1022]
        th, tl = _exp_reduced(dh, dl, kf, _E1[index], _E2[index], _E3[index])
        hi[j] = th * scale if keep else 0.0
        lo[j] = tl * scale if keep else 0.0


def _terms_kernel(x, m, skip, hi, lo):  # pragma: no cover - compiled
    for i in range(x.shape[0]):
        _row_terms(x[i], -m[i], skip[i], hi[i], lo[i])


def _sums_kernel(x, m, skip, out_s, out_e, out_bound):  # pragma: no cover - compiled; checked by tests
    # double_double.sum_rows, row by row, on terms computed into a reused buffer.
    n = x.shape[1]
    hi, lo = np.empty(n), np.empty(n)
    for i in range(x.shape[0]):
        _row_terms(x[i], -m[i], skip[i], hi, lo)
        t0 = t1 = t2 = t3 = 0.0  # four chains: a float sum does not vectorize
        for j in range(0, n - 3, 4):
            t0 += hi[j]
            t1 += hi[j + 1]
            t2 += hi[j + 2]
            t3 += hi[j + 3]
        for j in range(n - n % 4, n):
            t0 += hi[j]
        total = (t0 + t1) + (t2 + t3)
        bound_h = _upper(max(total * (1.0 + 2.0 * n * _U), _TINY_SUM))
        sigma1 = math.ldexp(1.0, math.frexp(bound_h)[1])
        sigma2 = math.ldexp(1.0, math.frexp(n * sigma1 * 2.0**-52)[1])
        s1 = s2 = s3 = s4 = 0.0
        for j in range(n):
            q1 = (sigma1 + hi[j]) - sigma1
            r1 = hi[j] - q1
            q2 = (sigma2 + r1) - sigma2
            s1 += q1
            s2 += q2
            s3 += r1 - q2
            s4 += lo[j]
        out_s[i], out_e[i], out_bound[i] = _combine_sums(s1, s2, s3, s4, n, bound_h, sigma2)


@functools.cache
def _compiled() -> tuple[Callable, Callable]:
    """(terms kernel, sums kernel), compiled by numba without fast-math (cached on disk)."""
    import numba
    from numba.extending import register_jitable

    for fn in (dd.two_sum, dd.fast_two_sum, dd.split, dd.upper, dd._exp_reduced, dd.combine_sums, _row_terms):
        register_jitable(fn)
    jit = numba.njit(cache=True, nogil=True)
    return jit(_terms_kernel), jit(_sums_kernel)


def _prepared(x: np.ndarray, m: np.ndarray, skip: np.ndarray, backend: str) -> tuple[np.ndarray, ...]:
    if backend not in ("numba", "numpy"):
        raise ValueError(f"backend must be 'numba' or 'numpy', got {backend!r}")
    x = np.ascontiguousarray(x, dtype=np.float64)
    return x, np.ascontiguousarray(m, dtype=np.float64), np.ascontiguousarray(skip, dtype=np.int64)


def shifted_exp_terms(
    x: np.ndarray, m: np.ndarray, skip: np.ndarray, backend: str = BACKEND
) -> tuple[np.ndarray, np.ndarray]:
    """exp(x_ij - m_i) as dd terms (hi, lo), each within dd.EXP_REL (hi + lo) + dd.EXP_ABS.

    x: (N, n) float64 with no NaN or +inf (-inf allowed) and x_ij <= m_i; m: (N,) finite;
    skip: (N,) column indices whose terms are set to 0 (the maximum's own term).
    Differences below dd.EXP_MIN give (0, 0): their true terms are below 2**-1021.
    ``backend``: "numba" (when installed; else NumPy is used) or "numpy".
    """
    x, m, skip = _prepared(x, m, skip, backend)
    if backend == "numba" and BACKEND == "numba":
        hi, lo = np.empty_like(x), np.empty_like(x)
        _compiled()[0](x, m, skip, hi, lo)
        return hi, lo
    return _numpy_terms(x, m, skip)


def shifted_exp_sums(
    x: np.ndarray, m: np.ndarray, skip: np.ndarray, backend: str = BACKEND
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: (s, e, bound) with |s + e - sum_j (h_ij + l_ij)| <= bound, for the terms of
    ``shifted_exp_terms`` (same arguments); dd.sum_rows's method, fused with the terms
    under numba. The terms' own errors are not in ``bound``.

    The two backends give the same terms bit for bit; their row sums may differ in the
    last bits (the rounded parts are summed in another order), both within ``bound``.
    """
    x, m, skip = _prepared(x, m, skip, backend)
    if backend == "numba" and BACKEND == "numba":
        out = np.empty((3, x.shape[0]))
        _compiled()[1](x, m, skip, out[0], out[1], out[2])
        return out[0], out[1], out[2]
    return dd.sum_rows(*_numpy_terms(x, m, skip))
