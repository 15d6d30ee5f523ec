"""The certified gradient of cross entropy (with options) with respect to the logits, per element.

For one sample with per-sample loss L (harness.oracle.options), p = softmax(x') and
coef_j its coefficients (K = Σ_j coef_j), the derivative is

    ∂L/∂x_j = s_j · ((K + 2 z lse) p_j − coef_j),   s_j = sech²(x_j / c) with soft-capping, else 1,

since ∂A_k/∂x'_j = p_j − δ_jk and ∂(z lse²)/∂x'_j = 2 z lse p_j. For class-index targets it
is computed as (1 − ε) w_t (p_j − δ_jt) + (ε/C)(W p_j − w_j) + 2 z lse p_j (W = Σ_j w_j),
where the target entry p_t − 1 = expm1(−A_t) has no cancellation (A_t = −log p_t), so a
confident prediction's gradient −(1 − p_t) keeps all its digits.

The graded gradient is that of the scalar the harness back-propagates: Σ_i g_i L_i for
per-sample outputs with drawn upstream gradients g_i, g · Σ_i L_i for "sum" and
g · Σ_i L_i / W for "mean" (W as in harness.oracle.options), so each row is scaled by its
upstream factor g'_i = g_i, g or g / W.

Special values: an ignored sample's row is exactly 0, and so is every row of a mean whose
denominator W is 0 (all samples ignored, or zero weight at every target: the loss is
0/0 = NaN, and harness.grading.expected accepts NaN there too); a row holding NaN, +inf (without
soft-capping) or only −inf is NaN; a −inf logit (without soft-capping) has p_j = 0, so its
entry is −g' coef_j: exactly 0 where its coefficient is 0 ("0 at masked logits"; torch's
autograd gives NaN there in some ops: pytorch#31829, #49724). Where a positive
coefficient sits on a −inf logit the loss is +inf and the gradient is this finite formula.

Two tiers: a float64 evaluation with a rigorous bound decides 16/32-bit outputs
(``fast_gradient``); MPFR interval enclosures with precision doubling decide the rest.
"""

from __future__ import annotations

import math
from fractions import Fraction

import gmpy2
import numpy as np
import torch

from harness.formats import FORMATS, Format, round_rational
from harness.oracle.dd_elements import gradient_dd
from harness.oracle.dd_tier import METHOD, PRECISION
from harness.oracle.family import OracleArray
from harness.oracle.fast_tier import LIBM_ULPS, TINY, U, _neighbours
from harness.oracle.intervals import Interval, exact, iadd, imul, iscale, round_mpfr
from harness.oracle.mpfr_tier import START_GUARD_BITS, _exp_sum_bounds
from harness.oracle.options import LossOptions
from harness.oracle.options_fast import _log1p_s
from harness.oracle.options_tier import Sample, _capped, _double, _exact_sub
from harness.oracle.value import MAX_PRECISION

__all__ = ["gradient"]

_DOWN, _UP = gmpy2.RoundDown, gmpy2.RoundUp
_F64 = FORMATS["float64"]
_LOG2E = 1.4426950408889634


def _special_row(sample: Sample, options: LossOptions) -> float | None:
    x = sample.logits
    if np.isnan(x).any() or (sample.probs is not None and not np.isfinite(sample.probs).all()):
        return math.nan
    if options.softcap is None and (np.isposinf(x).any() or np.isneginf(x).all()):
        return math.nan
    return None


def _lse_parts(x: np.ndarray, options: LossOptions, prec: int):
    """(m, l = [lo, hi] of log Σ exp(x'_k − m), per distinct value: x' interval) — exact or capped logits."""
    values = np.unique(x)
    if options.softcap is not None:
        lows, highs = _capped(values, options.softcap, prec)
        m = max(highs)
        with gmpy2.context(precision=prec, round=_DOWN):
            s_lo = gmpy2.fsum([c * gmpy2.exp(lo - m) for lo, c in zip(lows, _counts(x, values))])
            l_lo = gmpy2.log(s_lo)
        with gmpy2.context(precision=prec, round=_UP):
            s_hi = gmpy2.fsum([c * gmpy2.exp(hi - m) for hi, c in zip(highs, _counts(x, values))])
            l_hi = gmpy2.log(s_hi)
        return m, (l_lo, l_hi), {float(v): (lo, hi) for v, lo, hi in zip(values, lows, highs)}
    live = x[x != -math.inf]
    m_value = float(live.max())
    vals, counts = np.unique(live, return_counts=True)
    counts[-1] -= 1
    if not counts[-1]:
        vals, counts = vals[:-1], counts[:-1]
    if len(vals):
        second = float(vals[-1]) - m_value
        k_bits = int(prec + math.log2(len(x)) + 8 + min(-second, 2.0**32) * _LOG2E)
        with np.errstate(over="ignore"):
            evaluated = vals - m_value >= -0.71 * k_bits
        s_lo, s_hi = _exp_sum_bounds(vals[evaluated], counts[evaluated], m_value, prec)
        n_cut = int(counts[~evaluated].sum())
        if n_cut:
            with gmpy2.context(precision=prec + 64, round=_UP):
                s_hi += gmpy2.mul_2exp(gmpy2.mpfr(n_cut), -k_bits)
        with gmpy2.context(precision=prec, round=_DOWN):
            l_lo = gmpy2.log1p(s_lo)
        with gmpy2.context(precision=prec, round=_UP):
            l_hi = gmpy2.log1p(s_hi)
    else:
        l_lo = l_hi = gmpy2.mpfr(0)
    m = exact(m_value)[0]
    return m, (l_lo, l_hi), _ExactPoints()


class _ExactPoints(dict):
    """x' = x for exact logits: each value's point interval, made when first asked for."""

    def __missing__(self, value: float) -> Interval:
        point = _double(value)
        self[value] = (point, point)
        return point, point


def _counts(x: np.ndarray, values: np.ndarray) -> list[int]:
    return np.unique(x, return_counts=True)[1].tolist()


def _a_interval(m, log_s: Interval, xv: Interval, prec: int) -> Interval:
    """A = (m − x') + l with directed rounding (m − x' exact for exact logits)."""
    if xv[0] == xv[1]:
        gap = _exact_sub(m, xv[0])
        gap_lo = gap_hi = gap
    else:
        with gmpy2.context(precision=prec, round=_DOWN):
            gap_lo = m - xv[1]
        with gmpy2.context(precision=prec, round=_UP):
            gap_hi = m - xv[0]
    with gmpy2.context(precision=prec, round=_DOWN):
        lo = gap_lo + log_s[0]
    with gmpy2.context(precision=prec, round=_UP):
        hi = gap_hi + log_s[1]
    return lo, hi


def _exp_neg(a: Interval, prec: int) -> Interval:
    """p = exp(−A), decreasing in A."""
    with gmpy2.context(precision=prec, round=_DOWN):
        lo = gmpy2.exp(-a[1])
    with gmpy2.context(precision=prec, round=_UP):
        hi = gmpy2.exp(-a[0])
    return lo, hi


def _expm1_neg(a: Interval, prec: int) -> Interval:
    """expm1(−A) = p − 1, increasing in −A."""
    with gmpy2.context(precision=prec, round=_DOWN):
        lo = gmpy2.expm1(-a[1])
    with gmpy2.context(precision=prec, round=_UP):
        hi = gmpy2.expm1(-a[0])
    return lo, hi


def _sech2(v: float, cap: float, prec: int) -> Interval:
    """sech²(v / c) = 1 / cosh²(v / c), decreasing in |v / c|; 0 at ±inf."""
    if math.isinf(v):
        return gmpy2.mpfr(0), gmpy2.mpfr(0)
    with gmpy2.context(precision=prec, round=_UP):
        q_hi = abs(gmpy2.mpfr(v)) / cap
        big = gmpy2.cosh(q_hi)
        big2 = big * big
    with gmpy2.context(precision=prec, round=_DOWN):
        q_lo = abs(gmpy2.mpfr(v)) / cap
        small = gmpy2.cosh(q_lo)
        small2 = small * small
        lo = 1 / big2  # an upper bound of cosh², inverted downward
    with gmpy2.context(precision=prec, round=_UP):
        hi = 1 / small2
    return lo, hi


def _row_terms(sample: Sample, options: LossOptions, prec: int, indices: list[int]) -> dict[int, Interval]:
    """G_j (before s_j and the upstream factor) for each class index j in ``indices``, as intervals.

    Entries other than the target's depend only on (x_j, w_j, y_j): each distinct triple is computed once.
    """
    x = sample.logits
    n = len(x)
    m, log_s, xprime = _lse_parts(x, options, prec)
    eps, z = options.label_smoothing, options.z_loss
    weights = [_double(w) for w in options.class_weights(n)]
    zero = (gmpy2.mpfr(0), gmpy2.mpfr(0))
    needed = {float(x[j]) for j in indices} | ({float(x[sample.target])} if sample.probs is None else set())
    a_of = {v: _a_interval(m, log_s, xprime[v], prec) for v in needed if v != -math.inf or options.softcap}
    p_of = {v: _exp_neg(a, prec) for v, a in a_of.items()}
    with gmpy2.context(precision=prec, round=_DOWN):
        share_lo = gmpy2.mpfr(eps) / n
    with gmpy2.context(precision=prec, round=_UP):
        share_hi = gmpy2.mpfr(eps) / n
    share = (share_lo, share_hi)
    keep = _exact_sub(_double(1.0), _double(eps))
    lse = iadd((m, m), log_s, prec)
    z_factor = iscale(lse, 2 * z, prec) if z else zero  # 2 z lse
    terms: dict[int, Interval] = {}
    if sample.probs is None:
        t = sample.target
        w_t = weights[t]
        alpha = imul((keep, keep), (w_t, w_t), prec)  # (1 − ε) w_t, exact
        w_sum = _exact_total(weights)
        seen: dict[tuple, Interval] = {}
        for j in indices:
            v = float(x[j])
            key = (v, float(weights[j]))
            if j != t and key in seen:
                terms[j] = seen[key]
                continue
            p = p_of.get(v, zero)
            pm = p  # p_j − δ_jt; at the target, expm1(−A_t) (−1 at a masked target)
            if j == t:
                pm = _expm1_neg(a_of[v], prec) if v in a_of else (gmpy2.mpfr(-1), gmpy2.mpfr(-1))
            g = imul(alpha, pm, prec)
            if eps:
                with gmpy2.context(precision=prec, round=_DOWN):
                    inner_lo = w_sum * p[0] - weights[j]
                with gmpy2.context(precision=prec, round=_UP):
                    inner_hi = w_sum * p[1] - weights[j]
                g = iadd(g, imul(share, (inner_lo, inner_hi), prec), prec)
            if z:
                g = iadd(g, imul(z_factor, p, prec), prec)
            terms[j] = g
            if j != t:
                seen[key] = g
        return terms
    y = sample.probs
    coefs = []
    for j in range(n):
        with gmpy2.context(precision=3000):
            target_part = keep * _double(float(y[j]))  # exact: ≤ 1100 + 53 bits
        with gmpy2.context(precision=prec, round=_DOWN):
            c_lo = (target_part + share_lo) * weights[j]
        with gmpy2.context(precision=prec, round=_UP):
            c_hi = (target_part + share_hi) * weights[j]
        coefs.append((c_lo, c_hi))
    with gmpy2.context(precision=prec, round=_DOWN):
        k_lo = gmpy2.fsum([c[0] for c in coefs])
    with gmpy2.context(precision=prec, round=_UP):
        k_hi = gmpy2.fsum([c[1] for c in coefs])
    k = iadd((k_lo, k_hi), z_factor, prec)
    for j in indices:
        p = p_of.get(float(x[j]), zero)
        prod = imul(k, p, prec)
        with gmpy2.context(precision=prec, round=_DOWN):
            lo = prod[0] - coefs[j][1]
        with gmpy2.context(precision=prec, round=_UP):
            hi = prod[1] - coefs[j][0]
        terms[j] = (lo, hi)
    return terms


def _exact_total(values: list) -> gmpy2.mpfr:
    from harness.oracle.options_tier import _exact_sum

    return _exact_sum(list(values))


def _rational_row(sample: Sample, options: LossOptions, factor: tuple) -> list[Fraction | None] | None:
    """The exact gradient of a row whose live logits all tie, where it is rational; else None.

    Tied live logits give p_j = 1/n exactly, so the entries are rationals that may sit
    exactly on a rounding midpoint (−(1 − 1/4096)/4 in float16), which no enclosure
    decides. z-loss adds 2 z lse p_j, rational only for one live logit without capping
    (lse = x; with two or more, lse = x + log n is transcendental); soft-capping multiplies
    by sech²(x_j / c), rational only at x_j = 0. An entry that is irrational is None (the
    enclosures decide it: it is no midpoint), except that an exact zero is 0.
    """
    x = sample.logits
    cap, z, eps = options.softcap, options.z_loss, options.label_smoothing
    live = np.ones(len(x), dtype=bool) if cap is not None else x != -math.inf
    if len(np.unique(x[live])) != 1:
        return None
    n_live = int(live.sum())
    tie = float(x[live][0])
    if z and (n_live > 1 or (cap is not None and tie != 0)):
        return None  # 2 z lse p_j is transcendental
    n = len(x)
    p = [Fraction(1, n_live) if k else Fraction(0) for k in live]
    weights = [Fraction(w) for w in options.class_weights(n)]
    lse = Fraction(tie) if cap is None else Fraction(0)  # used with one live logit only
    numerator, denominator = factor
    if denominator is not None and not (gmpy2.is_finite(denominator) and denominator != 0):
        return None
    up = Fraction(numerator) / (Fraction(1) if denominator is None else Fraction(gmpy2.mpq(denominator)))
    if sample.probs is None:
        t = sample.target
        coef = [Fraction(0)] * n
        for j in range(n):
            coef[j] = Fraction(eps) / n * weights[j]
        coef[t] += (1 - Fraction(eps)) * weights[t]
    else:
        coef = [
            w * ((1 - Fraction(eps)) * Fraction(float(y)) + Fraction(eps) / n) for w, y in zip(weights, sample.probs)
        ]
    k = sum(coef) + 2 * Fraction(z) * lse
    entries: list[Fraction | None] = []
    for j in range(n):
        g = up * (k * p[j] - coef[j])
        rational = cap is None or x[j] == 0 or g == 0  # sech²(0) = 1; else transcendental
        entries.append(g if rational else None)
    return entries


def _mpfr_row(sample: Sample, options: LossOptions, factor: tuple, fmt: Format, out: OracleArray, i: int,
              pending: np.ndarray) -> None:  # fmt: skip
    """Decide the pending elements of row i; ``factor`` = (numerator g, denominator W or None)."""
    if sample.ignored(options) or factor[0] == 0:
        out.set((i, slice(None)), 0.0, 0.0, True, 0, "special")
        return
    special = _special_row(sample, options)
    if special is not None:
        out.set((i, slice(None)), special, special, True, 0, "special")
        return
    todo = np.flatnonzero(pending)
    rational = _rational_row(sample, options, factor)
    if rational is not None:
        decided = [j for j in todo.tolist() if rational[j] is not None]
        for j in decided:
            out.set((i, j), round_rational(rational[j], fmt), round_rational(rational[j], _F64), True, 0, "exact")
        todo = np.array([j for j in todo.tolist() if rational[j] is None], dtype=np.int64)
    prec = max(fmt.precision, 53) + START_GUARD_BITS
    numerator, denominator = factor
    while len(todo):
        terms = _row_terms(sample, options, prec, todo.tolist())
        if denominator is None:
            up = exact(numerator)
        else:
            with gmpy2.context(precision=prec, round=_DOWN):
                up_lo = gmpy2.mpfr(numerator) / denominator
            with gmpy2.context(precision=prec, round=_UP):
                up_hi = gmpy2.mpfr(numerator) / denominator
            up = (min(up_lo, up_hi), max(up_lo, up_hi))
        undecided = []
        for j in todo.tolist():
            g = imul(terms[j], up, prec)
            if options.softcap is not None:
                g = imul(g, _sech2(float(sample.logits[j]), options.softcap, prec), prec)
            lo, hi = round_mpfr(g[0], fmt), round_mpfr(g[1], fmt)
            if lo == hi or prec >= MAX_PRECISION:
                method = "exact" if g[0] == g[1] else "mpmath"
                out.set((i, j), lo, round_mpfr(g[0], _F64), lo == hi, prec, method)
            else:
                undecided.append(j)
        todo = np.array(undecided, dtype=np.int64)
        prec *= 2


def _certify_signed(value: torch.Tensor, err: torch.Tensor, fmt: Format) -> tuple[torch.Tensor, torch.Tensor]:
    """(certified?, candidate) for values of either sign known within ±err; tiny enclosures round to 0."""
    magnitude = value.abs()
    lo, hi = (magnitude - err).clamp(min=0.0), magnitude + err
    candidate = magnitude.to(fmt.dtype).to(torch.float64)
    below, above = _neighbours(candidate, fmt)
    boundary = fmt.max_finite + 2.0 ** (fmt.emax - fmt.precision)
    mid_lo = torch.where(candidate > 0, (candidate + below) / 2, torch.full_like(candidate, -torch.inf))
    mid_hi = torch.where(candidate < fmt.max_finite, (candidate + above) / 2, torch.full_like(candidate, boundary))
    inside = torch.isfinite(candidate) & (mid_lo < lo) & (hi < mid_hi) & torch.isfinite(hi)
    keeps_sign = (value - err > 0) | (value + err < 0)
    to_zero = hi < fmt.smallest_subnormal / 2  # the whole enclosure rounds to ±0
    sign = torch.where(value < 0, -1.0, 1.0)
    return (inside & keeps_sign) | to_zero, torch.where(to_zero, 0.0 * sign, candidate * sign)  # −0 below 0


def fast_gradient(rows, targets, probs, options: LossOptions, upstream: torch.Tensor, fmt: Format,
                  upstream_error: float = 0.0):  # fmt: skip
    """(certified?, value, float64 estimate), each (N, C), from the float64 tier.

    ``upstream``: the per-row factor g'_i in float64, within a relative ``upstream_error``
    of the exact factor (0 for drawn g_i; (N + 1) u for g / W with W summed in float64).
    The bound adds, per operation, the rounding it makes (harness.oracle.options_fast's
    docstring for the shared parts), and is inflated by 1%.
    """
    x = rows.detach().to(device="cpu", dtype=torch.float64)
    n_rows, n = x.shape
    eps, z, cap = options.label_smoothing, options.z_loss, options.softcap
    w = torch.tensor(options.class_weights(n), dtype=torch.float64)
    raw = x
    delta = 0.0
    if cap is not None:
        x = cap * torch.tanh(x / cap)
        delta = 4 * U * cap
    m, log_s, dl = _log1p_s(x)
    lse = m + log_s
    lse_err = dl + U * m.abs() + U * lse.abs()
    gap = m.unsqueeze(1) - x
    a = gap + log_s.unsqueeze(1)
    err_a = (U * gap + dl.unsqueeze(1) + U * a + 2 * delta) * 1.01
    p = torch.exp(-a)
    err_p = p * (torch.expm1(err_a) + 2 * LIBM_ULPS * U) * 1.01 + 2 * TINY
    rows_idx = torch.arange(n_rows)
    zl = 2 * z * lse.unsqueeze(1)  # 2 z lse
    zl_err = 2 * z * lse_err.unsqueeze(1) + U * zl.abs()
    if probs is None:
        t = targets.to(torch.int64)
        ignored = t == options.ignore_index
        safe_t = torch.where(ignored, 0, t)
        alpha = ((1 - eps) * w[safe_t]).unsqueeze(1)
        pm = p.clone()
        pm_err = err_p.clone()
        a_t = a[rows_idx, safe_t]
        em = torch.expm1(-a_t)  # p_t − 1 without cancellation
        em_err = torch.exp(-a_t) * torch.expm1(err_a[rows_idx, safe_t]) * 1.01 + LIBM_ULPS * 2 * U * em.abs()
        pm[rows_idx, safe_t] = em
        pm_err[rows_idx, safe_t] = em_err
        base = alpha * pm
        base_err = alpha * pm_err + 3 * U * base.abs()
        share = eps / n
        w_sum = w.sum()
        inner = w_sum * p - w
        smooth = share * inner
        smooth_err = share * (w_sum * err_p + (n + 1) * U * w_sum * p + U * (w_sum * p + w)) + 2 * U * smooth.abs()
        g = base + smooth
        g_err = base_err + smooth_err + U * (base.abs() + smooth.abs())
        k_bound = alpha.squeeze(1) + share * w_sum
    else:
        y = probs.detach().to(device="cpu", dtype=torch.float64)
        ignored = torch.zeros(n_rows, dtype=torch.bool)
        coef = w * ((1 - eps) * y + eps / n)
        coef_err = 5 * U * coef.abs()
        k = coef.sum(dim=1, keepdim=True)
        k_err = (n + 5) * U * coef.abs().sum(dim=1, keepdim=True)
        g = k * p - coef
        g_err = k.abs() * err_p + p * k_err + coef_err + U * (k.abs() * p + coef.abs())
        k_bound = coef.abs().sum(dim=1)
    if z:
        zt = zl * p
        g_err = g_err + zl.abs() * err_p + p * zl_err + U * zt.abs() + U * (g.abs() + zt.abs())
        g = g + zt
    if cap is not None:
        # capped logits move p by at most 2 p δ each: G moves by |K + 2 z lse| 2 p δ (+ the coefficient-free part)
        g_err = g_err + 2 * delta * p * (k_bound.unsqueeze(1) + 2 * z * lse.abs().unsqueeze(1)) * 1.01
        q = raw / cap
        s = torch.where(torch.isinf(raw), 0.0, 1.0 / torch.cosh(q) ** 2)
        s_err = s * ((2 * LIBM_ULPS + 4) * U + 2 * U * q.abs() * torch.tanh(q).abs()) * 1.01 + 2 * TINY
        g_err = s * g_err + g.abs() * s_err + U * (s * g).abs()
        g = s * g
    up = upstream.unsqueeze(1)
    grad = up * g
    err = (up.abs() * g_err + (2 * U + upstream_error) * grad.abs()) * 1.01 + 2 * TINY
    masked_zero = torch.isneginf(raw) & (g == 0) if cap is None else torch.zeros_like(raw, dtype=torch.bool)
    finite_row = torch.isfinite(lse) & ~torch.isnan(raw).any(dim=1)
    if cap is None:
        finite_row &= ~torch.isposinf(raw).any(dim=1)
    ok, value = _certify_signed(grad, err, fmt)
    ok = ok & finite_row.unsqueeze(1) & torch.isfinite(err)
    zero_rows = (ignored | (upstream == 0)).unsqueeze(1).expand_as(ok)
    value = torch.where(zero_rows | masked_zero, 0.0, value)
    ok = ok | zero_rows | (masked_zero & finite_row.unsqueeze(1))
    return ok.numpy(), value.numpy(), torch.where(zero_rows, 0.0, grad).numpy()


def gradient(
    rows: torch.Tensor,
    targets: torch.Tensor | None,
    probs: torch.Tensor | None,
    options: LossOptions,
    upstream: torch.Tensor | float,
    fmt: Format,
) -> OracleArray:
    """The gradient of the back-propagated scalar with respect to (N, C) logits, per element, rounded to fmt.

    ``upstream``: (N,) drawn upstream gradients g_i for reduction "none", or a scalar g for
    "sum" and "mean" (then each row's factor is g, or g / W). Raises ValueError for
    inconsistent shapes.
    """
    from harness.oracle.losses import _samples, _validate
    from harness.oracle.options_tier import _denominator

    _validate(rows, targets, probs, options)
    n_rows, n = rows.shape
    samples = _samples(rows, targets, probs)
    if options.reduction == "none":
        g = torch.as_tensor(upstream, dtype=torch.float64).reshape(-1)
        if g.numel() != n_rows:
            raise ValueError(f"per-sample upstream gradients must have {n_rows} values, got {g.numel()}")
        factors = [(float(v), None) for v in g.tolist()]
        up64 = g
    else:
        g = float(torch.as_tensor(upstream, dtype=torch.float64).reshape(()))
        live = [s for s in samples if not s.ignored(options)]
        denominator = _denominator(samples, live, options) if options.reduction == "mean" else None
        factors = [(g, denominator)] * n_rows
        if denominator == 0:  # a mean over no weight: the loss is 0/0 = NaN; no row contributes
            factors = [(0.0, None)] * n_rows
        if denominator is None:
            up64 = torch.full((n_rows,), g, dtype=torch.float64)
        else:
            weights = options.class_weights(n)
            w = (
                float(len(samples))
                if probs is not None
                else math.fsum(1.0 if options.weight is None else weights[s.target] for s in live)
            )  # within (N − 1) u
            up64 = torch.full((n_rows,), g / w if w else 0.0, dtype=torch.float64)
    out = OracleArray.empty((n_rows, n))
    pending = np.ones((n_rows, n), dtype=bool)
    if fmt.precision < 53 and n_rows and (options.reduction != "mean" or math.isfinite(float(up64[0]))):
        # g / W: W summed in float64 ((N − 1) u) and one division
        up_error = (n_rows + 1) * 2.0**-53 if options.reduction == "mean" else 0.0
        ok, value, estimate = fast_gradient(rows, targets, probs, options, up64, fmt, up_error)
        out.value[ok], out.exact[ok], out.certified[ok] = value[ok], estimate[ok], True
        out.precision[ok], out.method[ok] = 53, "float64"
        pending = ~ok
    exact_factors = options.reduction != "mean"  # g / W is not a double: the MPFR tier takes the mean's rows
    if pending.any() and probs is None and options.plain and exact_factors and options.softcap is None:
        ok, value, estimate = gradient_dd(rows, targets, up64.numpy(), options.ignore_index, fmt)
        ok &= pending
        out.value[ok], out.exact[ok], out.certified[ok] = value[ok], estimate[ok], True
        out.precision[ok], out.method[ok] = PRECISION, METHOD
        pending &= ~ok
    for i in range(n_rows):
        if pending[i].any():
            _mpfr_row(samples[i], options, factors[i], fmt, out, i, pending[i])
    return out
