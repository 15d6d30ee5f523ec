"""Float64 tier for cross entropy with options: vectorized, with a rigorous error bound.

It decides float16, bfloat16 and float32 outputs as harness.oracle.fast_tier does for the
plain loss: evaluate in float64, bound the error, and accept the rounded value when the
enclosure lies strictly between its rounding midpoints. Samples it cannot decide (close
calls, special values, negative coefficients) go to the MPFR tier
(harness.oracle.options_tier). Notation as in harness.oracle.options; u = 2**-53.

Error bounds (first order, each total inflated by 1% for second-order terms):
- soft-capping x' = c tanh(x / c): the division moves tanh's argument by u |x / c|, which
  moves tanh by at most u · max_t t sech²(t) < 0.45 u; tanh is within LIBM_ULPS ulps; the
  product adds u |x'| ≤ u c. So |Δx'_j| ≤ δ = 4 u c. The loss then moves by at most
  δ · Σ_j |∂L/∂x'_j| ≤ δ (2K + 2z |lse|) (K = Σ_j coef_j), plus δ² C (K + z) for curvature.
- log1p(s) and its error dl: as in harness.oracle.fast_tier (exp, any-order summation,
  the shifted differences, subnormal terms).
- g_j = m − x'_j rounds once: u g_j. A_j = g_j + log1p(s): u g_j + dl + u A_j.
- G = Σ_j coef_j g_j with coef_j carrying r_c relative error: (r_c + 2u + (C − 1) u) G;
  K = Σ_j coef_j: (r_c + (C − 1) u) K; the body G + K log1p(s) adds K dl + log1p(s) ΔK
  + u K log1p(s) + u (G + K log1p(s)).
- lse = m + log1p(s): dl + u |m| + u |lse|; z lse²: z (2 |lse| Δlse + Δlse²) + 2u z lse².
- class-index targets: coef_t gets (1 − ε) w_t (2u relative), the smoothing share ε / C
  times w_j (2u relative); probability targets: w_j ((1 − ε) y_j + ε / C) (4u relative)
  for y_j ≥ 0 (a negative y_j sends the sample to MPFR: cancellation).
- reductions: Σ_i L_i adds (N − 1) u Σ_i L_i; the mean divides by W, computed with
  (N − 1) u W error, and rounds once more.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from harness.formats import Format
from harness.oracle.fast_tier import LIBM_ULPS, TINY, U, certify
from harness.oracle.options import LossOptions

__all__ = ["FastLosses", "fast_losses", "fast_reduction"]


class FastLosses:
    """Per-sample float64 losses with error bounds: ``loss``, ``error`` and ``ordinary`` (bounded)."""

    def __init__(self, loss: torch.Tensor, error: torch.Tensor, ordinary: torch.Tensor) -> None:
        self.loss, self.error, self.ordinary = loss, error, ordinary


def _log1p_s(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: (m, log1p(s), bound on its error) — harness.oracle.fast_tier's bound."""
    n = x.shape[1]
    m, k = x.max(dim=1)
    d = x - m.unsqueeze(1)
    e = torch.exp(d)
    e[torch.arange(len(x)), k] = 0.0
    s = e.sum(dim=1)
    log1p_s = torch.log1p(s)
    weighted = -torch.linalg.vecdot(e, d.clamp(min=-torch.finfo(torch.float64).max))
    ds = (U * weighted + (2 * LIBM_ULPS + n - 1) * U * s + n * TINY) * 1.01
    dl = (ds / (1.0 + (s - ds).clamp(min=0.0)) + LIBM_ULPS * 2 * U * log1p_s) * 1.01 + 2 * TINY
    return m, log1p_s, dl


def fast_losses(
    logits: torch.Tensor, targets: torch.Tensor | None, probs: torch.Tensor | None, options: LossOptions
) -> FastLosses:
    """Per-sample losses of (N, C) rows with options, in float64, each with a rigorous error bound.

    ``targets``: (N,) class indices (ignored samples get exactly 0), or ``probs``: (N, C).
    Samples whose bound could not be formed (special values, a negative probability,
    a positive coefficient on a −inf logit) have ``ordinary`` False.
    """
    x = logits.detach().to(device="cpu", dtype=torch.float64)
    n_rows, n = x.shape
    eps, z, cap = options.label_smoothing, options.z_loss, options.softcap
    weights = torch.tensor(options.class_weights(n), dtype=torch.float64)
    ordinary = ~torch.isnan(x).any(dim=1)
    if cap is not None:
        x = cap * torch.tanh(x / cap)  # ±inf become ±c
        delta = 4 * U * cap
    else:
        ordinary &= ~torch.isposinf(x).any(dim=1)
        delta = 0.0
    m, log1p_s, dl = _log1p_s(x)
    ordinary &= torch.isfinite(m) & torch.isfinite(log1p_s)
    gaps = m.unsqueeze(1) - x  # +inf at masked classes
    share = eps / n  # ε / C, one rounding
    keep = 1.0 - eps  # one rounding
    if probs is None:
        t = targets.to(torch.int64)
        ignored = t == options.ignore_index
        safe_t = torch.where(ignored, 0, t)
        coef = (share * weights).expand(n_rows, n).clone()  # 2u relative
        coef[torch.arange(n_rows), safe_t] += keep * weights[safe_t]  # 2u relative each, one more for the sum
        rel = 4 * U
    else:
        y = probs.detach().to(device="cpu", dtype=torch.float64)
        ignored = torch.zeros(n_rows, dtype=torch.bool)
        ordinary &= (y >= 0).all(dim=1) & torch.isfinite(y).all(dim=1)
        coef = weights * (keep * y + share)  # 4u relative for y >= 0
        rel = 5 * U
    masked_positive = (torch.isinf(gaps) & (coef > 0)).any(dim=1)
    ordinary &= ~masked_positive
    terms = torch.where(coef == 0, 0.0, coef * gaps)  # 0 · inf is 0: a zero coefficient excludes the class
    g_sum = terms.sum(dim=1)
    k_sum = coef.sum(dim=1)
    g_err = (rel + 2 * U + (n - 1) * U) * g_sum
    k_err = (rel + (n - 1) * U) * k_sum
    body = g_sum + k_sum * log1p_s
    body_err = g_err + k_sum * dl + log1p_s * k_err + U * k_sum * log1p_s + U * body.abs()
    lse = m + log1p_s
    lse_err = dl + U * m.abs() + U * lse.abs()
    loss, err = body, body_err
    if z:
        z_term = z * lse * lse
        z_err = z * (2 * lse.abs() * lse_err + lse_err * lse_err) + 2 * U * z_term
        loss = loss + z_term
        err = err + z_err + U * loss
    if cap is not None:
        err = err + delta * (2 * k_sum + 2 * z * lse.abs()) + delta * delta * n * (k_sum + z)
    err = err * 1.01 + 2 * TINY
    loss = torch.where(ignored, 0.0, loss)
    err = torch.where(ignored, 0.0, err)
    ordinary = (ordinary | ignored) & torch.isfinite(loss) & torch.isfinite(err)
    return FastLosses(loss, err, ordinary)


def certify_samples(fast: FastLosses, fmt: Format) -> tuple[np.ndarray, np.ndarray]:
    """(certified?, correctly rounded value where certified) per sample."""
    certified, candidate = certify(fast.loss, fast.error, fmt)
    return (certified & fast.ordinary).numpy(), candidate.numpy()


def fast_reduction(fast: FastLosses, denominator: float | None, fmt: Format) -> tuple[bool, float, float]:
    """(certified?, correctly rounded value, float64 estimate) of Σ L_i, or of Σ L_i / W.

    ``denominator``: W for a mean (exactly representable or not: its float64 rounding
    is bounded), None for a sum.
    """
    if not bool(fast.ordinary.all()):
        return False, math.nan, math.nan
    n = fast.loss.numel()
    total = fast.loss.sum()
    error = fast.error.sum() + (n + 1) * U * fast.loss.abs().sum()
    if denominator is not None:
        if denominator == 0:
            return False, math.nan, math.nan
        total = total / denominator
        error = error / denominator + (n + 2) * U * total.abs()
    error = error * 1.01
    certified, candidate = certify(total.reshape(1), error.reshape(1), fmt)
    return bool(certified[0]), float(candidate[0]), float(total)
