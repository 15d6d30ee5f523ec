"""MPFR enclosures of cross entropy with options (harness.oracle.options), per sample and reduced.

For one sample, with A_j = lse − x'_j = (m − x'_j) + log S, S = Σ_k exp(x'_k − m) and m the
largest (capped) logit, the loss is a sum of non-negative terms

    L = Σ_j coef_j · A_j + z · lse²  =  D + K · log S + z · (m + log S)²
    D = Σ_j coef_j · (m − x'_j),   K = Σ_j coef_j

(coef_j from the options: see ``_coefficients``), so no cancellation occurs. Without
soft-capping the logits are exact floats: D and K are computed exactly (MPFR at enough
precision that nothing rounds) but for the factor ε / C, and log S comes from the same
directed-rounding MPFR exps as the plain tier (harness.oracle.mpfr_tier). With soft-capping,
x'_j = c · tanh(x_j / c) is enclosed by MPFR's tanh rounded down and up at the ends of
x_j / c rounded down and up (tanh is increasing), and everything after is interval
arithmetic (harness.oracle.intervals). The working precision doubles until both ends of
the enclosure round to the same value of the output format, up to MAX_PRECISION.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import gmpy2
import numpy as np

from harness.formats import FORMATS, Format
from harness.oracle.intervals import (
    Interval,
    exact,
    fsum_exact,
    iadd,
    imul,
    iscale,
    isquare,
    isum,
    round_mpfr,
    rounds_to,
)
from harness.oracle.mpfr_tier import START_GUARD_BITS, _exp_sum_bounds
from harness.oracle.options import LossOptions
from harness.oracle.value import MAX_PRECISION, OracleValue

__all__ = ["Sample", "reduced_loss", "sample_losses"]

_DOWN, _UP = gmpy2.RoundDown, gmpy2.RoundUp
_F64 = FORMATS["float64"]  # every OracleValue also carries the exact value rounded to float64
_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class Sample:
    """One sample: its logits (exact floats), and a class index or a probability row (exact floats)."""

    logits: np.ndarray  # (C,) float64
    target: int | None = None
    probs: np.ndarray | None = None  # (C,) float64, for probability targets

    def ignored(self, options: LossOptions) -> bool:
        return self.probs is None and self.target == options.ignore_index


def _coefficient_signs(sample: Sample, options: LossOptions) -> np.ndarray:
    """The sign (−1, 0, 1) of each class's coefficient coef_j, exactly."""
    n = len(sample.logits)
    eps = options.label_smoothing
    w = np.asarray(options.class_weights(n), dtype=np.float64)
    if sample.probs is not None:
        # coef_j = w_j ((1 − ε) y_j + ε / C): the sign of (1 − ε) y_j + ε / C, unless w_j = 0
        y = sample.probs
        inner = np.where(eps == 1.0, 1.0, np.where(eps == 0.0, np.sign(y), np.sign((1 - eps) * y + eps / n)))
        # (1 − ε) y + ε / C may round to the wrong sign only when y < 0; decide those exactly
        for j in np.flatnonzero((y < 0) & (eps > 0) & (eps < 1)):
            with gmpy2.context(precision=4200):
                inner[j] = np.sign(float((1 - gmpy2.mpfr(eps)) * gmpy2.mpfr(y[j]) * n + gmpy2.mpfr(eps)))
        return np.sign(w) * inner
    signs = np.full(n, 1.0 if eps > 0 else 0.0) * np.sign(w)
    if eps < 1.0:
        signs[sample.target] = np.sign(w[sample.target])
    return signs


def _special(sample: Sample, options: LossOptions) -> float | None:
    """The loss when infinities or NaN decide it (see harness.oracle.options), else None."""
    x = sample.logits
    if np.isnan(x).any() or (sample.probs is not None and not np.isfinite(sample.probs).all()):
        return math.nan
    if options.softcap is not None or np.isfinite(x).all():
        return None  # soft-capping maps ±inf to ±c
    signs = _coefficient_signs(sample, options)
    top = x.max()
    if top == -math.inf:
        return math.nan  # every logit −inf: no distribution at all
    if top == math.inf:
        # lse = +inf: A_j is undefined (inf − inf) at +inf logits, +inf elsewhere
        if (signs[x == math.inf] != 0).any():
            return math.nan
        infinite = signs[x != math.inf]
        with_z = [1.0] if options.z_loss > 0 else []
    else:
        infinite = signs[x == -math.inf]  # A_j = +inf at masked classes
        with_z = []
    present = {float(s) for s in [*infinite, *with_z] if s != 0}
    if not present:
        return None if top != math.inf else 0.0
    return math.nan if len(present) == 2 else math.copysign(math.inf, present.pop())


def _coefficients(sample: Sample, options: LossOptions, prec: int) -> list[Interval]:
    """coef_j per class: (ε/C) w_j + [j = t] (1 − ε) w_t, or w_j ((1 − ε) y_j + ε / C)."""
    n = len(sample.logits)
    eps = options.label_smoothing
    weights = options.class_weights(n)
    with gmpy2.context(precision=prec, round=_DOWN):
        share_lo = gmpy2.mpfr(eps) / n
    with gmpy2.context(precision=prec, round=_UP):
        share_hi = gmpy2.mpfr(eps) / n
    share = (share_lo, share_hi)
    with gmpy2.context(precision=1100):
        keep = gmpy2.mpfr(1) - gmpy2.mpfr(eps)  # exact: ε is a double in [0, 1]
    if sample.probs is None:
        coefs = [iscale(share, w, prec) for w in weights]
        t = sample.target
        coefs[t] = iadd(coefs[t], exact_product(keep, weights[t]), prec)
        return coefs
    coefs = []
    for w, y in zip(weights, sample.probs.tolist()):
        target_share = exact_product(keep, y)
        coefs.append(iscale(iadd(target_share, share, prec), w, prec))
    return coefs


def exact_product(a: gmpy2.mpfr, b: float) -> Interval:
    """a · b for an MPFR a and a double b, exactly (a point interval)."""
    with gmpy2.context(precision=a.precision + 64):
        point = a * gmpy2.mpfr(b)
    return point, point


def _capped(values: np.ndarray, cap: float, prec: int) -> tuple[list, list]:
    """Lower and upper ends of c · tanh(v / c) for each value (±inf give ±c exactly)."""
    lows, highs = [], []
    for v in values.tolist():
        if math.isinf(v):
            point = gmpy2.mpfr(math.copysign(cap, v))
            lows.append(point)
            highs.append(point)
            continue
        with gmpy2.context(precision=prec, round=_DOWN):
            lo = cap * gmpy2.tanh(gmpy2.mpfr(v) / cap)
        with gmpy2.context(precision=prec, round=_UP):
            hi = cap * gmpy2.tanh(gmpy2.mpfr(v) / cap)
        lows.append(lo)
        highs.append(hi)
    return lows, highs


def _double(value: float) -> gmpy2.mpfr:
    with gmpy2.context(precision=53):
        return gmpy2.mpfr(value)  # exact: a double


def _exact_mul(a: gmpy2.mpfr, b: gmpy2.mpfr) -> gmpy2.mpfr:
    with gmpy2.context(precision=a.precision + b.precision):  # a p-bit times a q-bit number has p + q bits
        return a * b


def _exact_sub(a: gmpy2.mpfr, b: gmpy2.mpfr) -> gmpy2.mpfr:
    if a == 0 or b == 0:
        return a - b if b != 0 else a
    span = max(gmpy2.get_exp(a), gmpy2.get_exp(b)) - min(gmpy2.get_exp(a) - a.precision, gmpy2.get_exp(b) - b.precision)
    with gmpy2.context(precision=span + 2):
        return a - b


def _exact_sum(values: list[gmpy2.mpfr]) -> gmpy2.mpfr:
    """The exact sum of MPFR values (precision from their exponent span, so nothing rounds)."""
    nonzero = [v for v in values if v != 0]
    if not nonzero:
        return gmpy2.mpfr(0)
    top = max(gmpy2.get_exp(v) for v in nonzero)
    bottom = min(gmpy2.get_exp(v) - v.precision for v in nonzero)
    with gmpy2.context(precision=top - bottom + len(nonzero).bit_length() + 2):
        return gmpy2.fsum(nonzero)


def _exact_parts(sample: Sample, options: LossOptions, prec: int) -> tuple:
    """(m, log S, D, K) for exact logits: log S = log1p(s) from directed exps; D and K exact but for ε / C.

    D = (1 − ε) Σ_j w_j y_j g_j + (ε / C) Σ_j w_j g_j with g_j = m − x_j (the one-hot y for
    class-index targets), K likewise without g; each sum is exact (MPFR at enough precision).
    """
    x = sample.logits
    n = len(x)
    live = np.flatnonzero(x != -math.inf)  # masked classes: zero coefficient here (else the loss was special)
    m_value = float(x[live].max())
    m = exact(m_value)[0]
    values, counts = np.unique(x[live], return_counts=True)
    counts[-1] -= 1  # the maximum's own term is the 1 in log1p
    if not counts[-1]:
        values, counts = values[:-1], counts[:-1]
    if len(values):
        second = float(values[-1]) - m_value
        k_bits = int(prec + math.log2(n) + 8 + min(-second, 2.0**32) * _LOG2E)
        with np.errstate(over="ignore"):
            evaluated = values - m_value >= -0.71 * k_bits  # exp(d) < 2**-k_bits below
        s_lo, s_hi = _exp_sum_bounds(values[evaluated], counts[evaluated], m_value, prec)
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
    eps = options.label_smoothing
    weights = [_double(w) for w in options.class_weights(n)]
    gaps = {j: _exact_sub(m, _double(float(x[j]))) for j in live.tolist()}
    keep = _exact_sub(_double(1.0), _double(eps))  # 1 − ε
    if sample.probs is None:
        t = sample.target  # not masked with a non-zero coefficient: the loss was special then
        target_weight = _exact_mul(keep, weights[t])
        one_hot_d = _exact_mul(target_weight, gaps[t]) if t in gaps else gmpy2.mpfr(0)
        one_hot_k = target_weight
    else:
        wy = {j: _exact_mul(weights[j], _double(float(sample.probs[j]))) for j in live.tolist()}
        one_hot_d = _exact_mul(keep, _exact_sum([_exact_mul(wy[j], gaps[j]) for j in wy]))
        one_hot_k = _exact_mul(keep, _exact_sum(list(wy.values())))
    d, k = (one_hot_d, one_hot_d), (one_hot_k, one_hot_k)
    if eps:
        with gmpy2.context(precision=prec, round=_DOWN):
            share_lo = gmpy2.mpfr(eps) / n
        with gmpy2.context(precision=prec, round=_UP):
            share_hi = gmpy2.mpfr(eps) / n
        share = (share_lo, share_hi)
        smooth_d = _exact_sum([_exact_mul(weights[j], gaps[j]) for j in gaps])
        smooth_k = _exact_sum([weights[j] for j in gaps])
        d = iadd(d, imul(share, (smooth_d, smooth_d), prec), prec)
        k = iadd(k, imul(share, (smooth_k, smooth_k), prec), prec)
    return m, (l_lo, l_hi), d, k


def _capped_parts(sample: Sample, coefs: list[Interval], cap: float, prec: int) -> tuple:
    """(m, log S, D, K) with soft-capped logits, in interval arithmetic; m = the largest upper end."""
    values, inverse, counts = np.unique(sample.logits, return_inverse=True, return_counts=True)
    lows, highs = _capped(values, cap, prec)
    m = max(highs)
    with gmpy2.context(precision=prec, round=_DOWN):
        s_lo = gmpy2.fsum([c * gmpy2.exp(lo - m) for lo, c in zip(lows, counts.tolist())])
    with gmpy2.context(precision=prec, round=_UP):
        s_hi = gmpy2.fsum([c * gmpy2.exp(hi - m) for hi, c in zip(highs, counts.tolist())])
        l_hi = gmpy2.log(s_hi)
    with gmpy2.context(precision=prec, round=_DOWN):
        l_lo = gmpy2.log(s_lo)
        gaps_lo = [m - hi for hi in highs]  # m − x'_j, its lower end
    with gmpy2.context(precision=prec, round=_UP):
        gaps_hi = [m - lo for lo in lows]
    terms = [imul(coefs[j], (gaps_lo[i], gaps_hi[i]), prec) for j, i in enumerate(inverse.tolist())]
    return m, (l_lo, l_hi), isum(terms, prec), isum(coefs, prec)


def _enclose(sample: Sample, options: LossOptions, prec: int) -> Interval:
    if options.softcap is None:
        m, log_s, d, k = _exact_parts(sample, options, prec)
    else:
        coefs = _coefficients(sample, options, prec)
        m, log_s, d, k = _capped_parts(sample, coefs, options.softcap, prec)
    body = iadd(d, imul(k, log_s, prec), prec)
    if options.z_loss:
        lse = iadd((m, m), log_s, prec)
        body = iadd(body, iscale(isquare(lse, prec), options.z_loss, prec), prec)
    return body


def _start(fmt: Format) -> int:
    return max(fmt.precision, 53) + START_GUARD_BITS


def sample_losses(samples: Sequence[Sample], options: LossOptions, fmt: Format) -> list[OracleValue]:
    """Per-sample losses with options, each correctly rounded to fmt (ignored samples: exactly 0)."""
    return [_sample_loss(s, options, fmt) for s in samples]


def _sample_loss(sample: Sample, options: LossOptions, fmt: Format) -> OracleValue:
    if sample.ignored(options):
        return OracleValue(0.0, 0.0, True, 0, "special")
    special = _special(sample, options)
    if special is not None:
        return OracleValue(special, special, True, 0, "special")
    prec = _start(fmt)
    while True:
        enclosure = _enclose(sample, options, prec)
        value = rounds_to(enclosure, fmt)
        exact64 = round_mpfr(enclosure[0], _F64)
        if value is not None:
            return OracleValue(value, exact64, True, prec, "mpmath")
        if prec >= MAX_PRECISION:
            return OracleValue(round_mpfr(enclosure[0], fmt), exact64, False, prec, "mpmath")
        prec *= 2


def reduced_loss(samples: Sequence[Sample], options: LossOptions, fmt: Format) -> OracleValue:
    """The sum or mean over samples (options.reduction), the exact value rounded once to fmt.

    mean = Σ L_i / W, with W the sum of the target classes' weights over non-ignored samples
    (class-index targets) or the number of samples (probability targets); 0 / 0 is NaN.
    """
    if options.reduction not in ("sum", "mean"):
        raise ValueError(f"reduced_loss takes reduction 'sum' or 'mean', got {options.reduction!r}")
    live = [s for s in samples if not s.ignored(options)]
    denominator = _denominator(samples, live, options)
    specials = [_special(s, options) for s in live]
    if any(v is not None for v in specials):
        total = math.fsum(v for v in specials if v is not None)  # nan beats inf; inf + (−inf) is nan
        if math.isnan(total) or math.isinf(total):
            value = total if options.reduction == "sum" or denominator != 0 else math.nan
            if options.reduction == "mean" and denominator != 0:
                value = total  # inf / positive W
            return OracleValue(value, value, True, 0, "special")
    regular = [s for s, v in zip(live, specials) if v is None]
    prec = _start(fmt)
    while True:
        parts = [_enclose(s, options, prec) for s in regular]
        total = isum(parts, prec) if parts else (gmpy2.mpfr(0), gmpy2.mpfr(0))
        if options.reduction == "mean":
            if denominator == 0:
                value = math.nan if total[1] == 0 else math.inf  # 0 / 0; a z-loss over zero weight
                return OracleValue(value, value, True, 0, "special")
            with gmpy2.context(precision=prec, round=_DOWN):
                lo = total[0] / denominator
            with gmpy2.context(precision=prec, round=_UP):
                hi = total[1] / denominator
            total = (lo, hi)
        value = rounds_to(total, fmt)
        exact64 = round_mpfr(total[0], _F64)
        method = "exact" if total[0] == total[1] else "mpmath"
        if value is not None:
            return OracleValue(value, exact64, True, prec, method)
        if prec >= MAX_PRECISION:
            return OracleValue(round_mpfr(total[0], fmt), exact64, False, prec, method)
        prec *= 2


def _denominator(samples: Sequence[Sample], live: Sequence[Sample], options: LossOptions) -> gmpy2.mpfr:
    if options.reduction != "mean":
        return gmpy2.mpfr(1)
    if samples and samples[0].probs is not None:
        return gmpy2.mpfr(len(samples))
    if options.weight is None:
        return gmpy2.mpfr(len(live))
    return fsum_exact(options.weight[s.target] for s in live)
