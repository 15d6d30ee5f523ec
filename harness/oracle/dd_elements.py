"""Double-double tier per element: the softmax family and the plain gradient, for any output format.

Built on harness.oracle.dd_tier's row quantities: for a row with maximum m (at k) and
s = Σ_{j≠k} exp(x_j − m), log1p(s) is known as a double-double y + yl within a proved
bound (exact extraction sums of exp_dd terms, then log1p_dd). Then, per element:

- A_j = (m − x_j) + log1p(s): m − x_j is exact as a two_sum, and the addition keeps a
  triple-double vh + vm + vt whose only rounding is bounded (as dd_tier does for the loss);
  log_softmax_j = −A_j.
- softmax_j = exp(−A_j) = exp_dd of the double-double −(vh + vm): relative error at most
  EXP_REL plus expm1 of A's bound (|vt| included in it).
- logsumexp = m + log1p(s), the same triple-double addition.
- the gradient of plain cross entropy, g (p_j − δ_jt): p_j as above for j ≠ t, and the
  target entry −g (1 − p_t) = −g (Σ_{j≠t} e_j) / (1 + s) with the numerator summed directly
  (no cancellation), divided in double-double.

Certification is dd_tier.certify's exact midpoint comparison; values below 2**-900, special
values and anything whose bound is too wide are left to the MPFR tier.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.formats import Format
from harness.oracle import double_double as dd
from harness.oracle.dd_kernels import shifted_exp_sums
from harness.oracle.dd_tier import _CLAMPED, _SAFE, _TINY_LOSS, certify

__all__ = ["family_dd", "gradient_dd"]


def _rows_log1p(x: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per row: (ordinary?, m, argmax, y, yl, bound) with |y + yl − log1p(s)| <= bound for ordinary rows."""
    n_rows, n = x.shape
    rows = np.arange(n_rows)
    argmax = x.argmax(axis=1)
    m = x[rows, argmax]
    ordinary = np.isfinite(m) & ~np.isnan(x).any(axis=1)
    y, yl, bound = (np.full(n_rows, v) for v in (np.nan, np.nan, np.inf))
    if ordinary.any():
        pick = np.flatnonzero(ordinary)
        s, e, sum_error = shifted_exp_sums(x[pick], m[pick], argmax[pick])
        s_error = dd.upper(sum_error + dd.EXP_REL * (s + np.abs(e) + sum_error) + n * _CLAMPED)
        yy, yyl, y_error = dd.log1p_dd(s, e)
        with np.errstate(invalid="ignore", over="ignore"):
            low_s = np.maximum((s - s_error) * _SAFE, 0.0)
            y_error = dd.upper(y_error + s_error / ((1.0 + low_s) * _SAFE))
        y[pick], yl[pick], bound[pick] = yy, yyl, y_error
    return ordinary, m, argmax, y, yl, bound


def _plus_log1p(a: np.ndarray, al: np.ndarray, y, yl, y_error) -> tuple[np.ndarray, ...]:
    """(vh, vm, vt, bound) of (a + al) + log1p(s), al an exact tail: only one addition rounds."""
    with np.errstate(invalid="ignore", over="ignore"):
        s1, f = dd.two_sum(a, y)
        g, gl = dd.two_sum(f, al)
        h_out, m_out = dd.two_sum(s1, g)
        rest = gl + yl
        m_out, t_out = dd.two_sum(m_out, rest)
        h_out, m_out = dd.two_sum(h_out, m_out)
        m_out, t_out = dd.two_sum(m_out, t_out)
        total = dd.upper(y_error + dd.U * np.abs(rest))
    return h_out, m_out, t_out, total


def _certify_signed(vh, vm, vt, bound, fmt: Format) -> tuple[np.ndarray, np.ndarray]:
    """certify for values of either sign: on the magnitude, where the enclosure keeps one sign."""
    negative = vh < 0
    sign = np.where(negative, -1.0, 1.0)
    ok, value = certify(sign * vh, sign * vm, sign * vt, bound, fmt)
    keeps = np.abs(vh) * _SAFE > dd.upper(bound + np.abs(vm) + np.abs(vt))
    return ok & keeps & (np.abs(vh) >= _TINY_LOSS), sign * value


def _exp_neg(vh, vm, vt, bound) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """exp(−A) for A = vh + vm + vt within bound: (hi, lo, bound of the result)."""
    hi, lo = dd.exp_dd(-vh, -vm)
    with np.errstate(invalid="ignore", over="ignore"):
        arg_error = bound + np.abs(vt)
        p_bound = dd.upper((hi + np.abs(lo)) * (dd.EXP_REL + np.expm1(arg_error) * (1 + dd.EXP_REL) + 4 * dd.U * dd.U))
    return hi, lo, dd.upper(p_bound + dd.EXP_ABS)


def family_dd(op: str, rows: torch.Tensor, fmt: Format) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(certified?, value, float64 estimate) per output element of op over (N, C) rows."""
    x = rows.detach().to(device="cpu", dtype=torch.float64).contiguous().numpy()
    ordinary, m, _, y, yl, y_error = _rows_log1p(x)
    ordinary &= ~np.isposinf(x).any(axis=1)
    if op == "logsumexp":
        vh, vm, vt, bound = _plus_log1p(m, np.zeros_like(m), y, yl, y_error)
        ok, value = _certify_signed(vh, vm, vt, bound, fmt)
        return ok & ordinary, value, vh
    with np.errstate(invalid="ignore", over="ignore"):  # m − x_j beyond float64: not live, MPFR decides
        a, al = dd.two_sum(m[:, None], -x)  # exact: m − x_j (NaN at masked classes: not live)
    vh, vm, vt, bound = _plus_log1p(a, al, y[:, None], yl[:, None], y_error[:, None])
    live = np.isfinite(vh) & ordinary[:, None]
    masked = np.isneginf(x) & ordinary[:, None]
    if op == "log_softmax":
        ok, value = certify(np.where(live, vh, 0.0), np.where(live, vm, 0.0), np.where(live, vt, 0.0),
                            np.where(live, bound, np.inf), fmt)  # fmt: skip
        ok = (ok & live & (vh >= _TINY_LOSS)) | masked  # A below 2**-900: MPFR decides
        return ok, np.where(masked, -np.inf, -value), -vh
    hi, lo, p_bound = _exp_neg(np.where(live, vh, 0.0), np.where(live, vm, 0.0), np.where(live, vt, 0.0),
                               np.where(live, bound, np.inf))  # fmt: skip
    ok, value = certify(hi, lo, np.zeros_like(hi), p_bound, fmt)
    ok = (ok & live & (hi >= _TINY_LOSS)) | masked
    return ok, np.where(masked, 0.0, value), np.where(live, hi, 0.0)


def gradient_dd(
    rows: torch.Tensor, targets: torch.Tensor, upstream: np.ndarray, ignore_index: int, fmt: Format
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(certified?, value, float64 estimate) per element of g_i (p_ij − δ_jt) for plain cross entropy.

    ``upstream``: each row's factor g'_i, exact (float64). Ignored rows are exactly 0.
    """
    x = rows.detach().to(device="cpu", dtype=torch.float64).contiguous().numpy()
    n_rows, n = x.shape
    t = targets.detach().cpu().numpy().astype(np.int64)
    ignored = t == ignore_index
    safe_t = np.where(ignored, 0, t)
    ordinary, m, argmax, y, yl, y_error = _rows_log1p(x)
    ordinary &= ~np.isposinf(x).any(axis=1) & np.isfinite(x[np.arange(n_rows), safe_t])
    with np.errstate(invalid="ignore", over="ignore"):  # m − x_j beyond float64: not live, MPFR decides
        a, al = dd.two_sum(m[:, None], -x)
    vh, vm, vt, bound = _plus_log1p(a, al, y[:, None], yl[:, None], y_error[:, None])
    live = np.isfinite(vh) & ordinary[:, None]
    hi, lo, p_bound = _exp_neg(np.where(live, vh, 0.0), np.where(live, vm, 0.0), np.where(live, vt, 0.0),
                               np.where(live, bound, np.inf))  # fmt: skip
    hi, lo = np.where(live, hi, 0.0), np.where(live, lo, 0.0)
    # the target entry: −(1 − p_t) = −(Σ_{j≠t} e_j) / (1 + s), the numerator summed without cancellation
    pick = np.flatnonzero(ordinary)
    if len(pick):
        num, num_l, num_error = shifted_exp_sums(x[pick], m[pick], safe_t[pick])
        num_error = dd.upper(num_error + dd.EXP_REL * (num + np.abs(num_l) + num_error) + n * _CLAMPED)
        den, den_l, den_error = shifted_exp_sums(x[pick], m[pick], argmax[pick])
        den_error = dd.upper(den_error + dd.EXP_REL * (den + np.abs(den_l) + den_error) + n * _CLAMPED)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            d1, d2 = dd.two_sum(1.0, den)
            d2 = d2 + den_l  # 1 + s as a dd (one rounding: below u |d2|)
            q = num / d1
            p1, p2 = dd.two_prod(q, d1)
            ql = (((num - p1) - p2) + num_l - q * d2) / d1
            qh, ql = dd.two_sum(q, ql)
            rel = (num_error / np.maximum(num, _TINY_LOSS) + den_error / d1 + 16 * dd.U * dd.U) * (1 + 8 * dd.U)
            q_bound = dd.upper(np.abs(qh) * rel)
        rows_idx = pick
        cols = safe_t[pick]
        hi[rows_idx, cols] = -qh
        lo[rows_idx, cols] = -ql
        p_bound[rows_idx, cols] = q_bound
    g = np.asarray(upstream, dtype=np.float64)[:, None]
    gh, gl = dd.two_prod(hi, np.broadcast_to(g, hi.shape))
    gl = gl + lo * g  # one rounding, below u |lo g|
    with np.errstate(invalid="ignore", over="ignore"):
        g_bound = dd.upper(np.abs(g) * p_bound + dd.U * np.abs(lo * g) + 2 * dd.U * dd.U * np.abs(gh))
    ok, value = _certify_signed(gh, gl, np.zeros_like(gh), g_bound, fmt)
    ok &= ordinary[:, None]
    columns = np.arange(n)[None, :]
    masked = np.isneginf(x) & (columns != safe_t[:, None]) & ordinary[:, None]  # p_j = 0 exactly there
    zero = ignored[:, None] | (g == 0) | masked
    value = np.where(zero, 0.0, value)
    return ok | np.broadcast_to(zero, ok.shape), value, np.where(zero, 0.0, gh)
