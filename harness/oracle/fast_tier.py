"""Fast oracle tier: a vectorized float64 evaluation with a rigorous error bound.

For float16, bfloat16 and float32 outputs, float64 has 29+ spare bits: evaluating
loss = (m - x_t) + log1p(s) in float64 and bounding its error almost always places the
exact loss strictly inside one rounding interval of the output format, which proves
the correctly rounded value. Rows it cannot decide (near a rounding boundary, special
values) and every float64 output go to the mpmath tier.

Error bound, with u = 2**-53 and d_j = x_j - m computed in float64 (|error| <= u |d_j|,
so exp(d_j) moves by at most u e_j |d_j| <= u e_j spread):
  exp(d_j) is within LIBM_ULPS ulps (torch's CPU float64 exp and log1p, SLEEF u10 or
  glibc, are within 1 ulp; we allow 2);
  the sum of n terms, in any order, is within (n - 1) u sum_j e_j (Higham, eq. 4.4);
  subnormal exps add up to 2**-1074 each;
  log1p(s) moves by at most ds / (1 + s - ds), plus its own LIBM_ULPS ulps;
  m - x_t and the final addition each add one rounding.
The total is inflated by 1% for the second-order terms. Certification never trusts a
conversion: it checks the enclosure against the midpoints around the candidate, which
are exact in float64.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.formats import Format

__all__ = ["certify_rows"]

U = 2.0**-53
LIBM_ULPS = 2.0
TINY = 2.0**-1074


def _neighbours(values: torch.Tensor, fmt: Format) -> tuple[torch.Tensor, torch.Tensor]:
    """(next below, next above) of non-negative values of fmt, as float64."""
    bits = values.to(fmt.dtype).view(fmt.int_dtype).to(torch.int64)
    below = (bits - 1).clamp(min=0).to(fmt.int_dtype).view(fmt.dtype).to(torch.float64)
    above = (bits + 1).to(fmt.int_dtype).view(fmt.dtype).to(torch.float64)
    return below, above


def enclose_rows(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: (ordinary?, float64 loss estimate, rigorous bound on its error).

    Rows with NaN, +inf or a -inf target are not ordinary and get no bound.
    """
    # Two full-size buffers in all, updated in place: fresh pages, not arithmetic, are
    # what a batch of a million elements costs most on these machines.
    x = logits.detach().to(device="cpu", dtype=torch.float64, copy=True)
    n_rows, n_classes = x.shape
    rows = torch.arange(n_rows)
    xt = x[rows, targets]
    # NaN, +inf, a -inf target or an all -inf row make the loss NaN or inf below, so
    # such rows are told apart by their non-finite estimate, with no extra pass.
    m, k = x.max(dim=1)
    spread = m - x.amin(dim=1)  # inf where a row is masked: such rows take the dot product
    d = x.sub_(m.unsqueeze(1))
    e = torch.exp(d)
    e[rows, k] = 0.0  # the maximum's own term is the 1 in log1p
    s = e.sum(dim=1)
    a = m - xt
    log1p_s = torch.log1p(s)
    loss = a + log1p_s

    # sum_j e_j |d_j| <= spread * s. Where spread <= n, that term is below the summation
    # term (n - 1) u s, so the bound loses at most a bit and the dot product is skipped.
    if bool((spread <= n_classes).all()):
        weighted = spread * s
    else:  # masked terms are 0 * (-max finite) = 0, not NaN
        weighted = -torch.linalg.vecdot(e, d.clamp_(min=-torch.finfo(torch.float64).max))
    ds = (U * weighted + (2 * LIBM_ULPS + n_classes - 1) * U * s + n_classes * TINY) * 1.01
    dl = ds / (1.0 + (s - ds).clamp(min=0.0)) + LIBM_ULPS * 2 * U * log1p_s
    error = (U * a + dl + U * loss.abs()) * 1.01 + 2 * TINY
    ordinary = torch.isfinite(loss) & torch.isfinite(error)
    return ordinary, loss, error


def certify(estimate: torch.Tensor, error: torch.Tensor, fmt: Format) -> tuple[torch.Tensor, torch.Tensor]:
    """(certified?, candidate): whether [estimate - error, estimate + error] (non-negative)
    lies strictly inside the rounding interval of the candidate, the estimate rounded to fmt."""
    lo, hi = estimate - error, estimate + error
    candidate = estimate.to(fmt.dtype).to(torch.float64)
    below, above = _neighbours(candidate.clamp(min=0.0), fmt)
    boundary = fmt.max_finite + 2.0 ** (fmt.emax - fmt.precision)  # rounds to inf from here on
    mid_lo = torch.where(candidate > 0, (candidate + below) / 2, torch.full_like(candidate, -torch.inf))
    mid_hi = torch.where(candidate < fmt.max_finite, (candidate + above) / 2, torch.full_like(candidate, boundary))
    finite_ok = torch.isfinite(candidate) & (mid_lo < lo) & (hi < mid_hi)
    inf_ok = torch.isinf(candidate) & (lo >= boundary)
    return (finite_ok | inf_ok) & (lo >= 0), candidate


def certify_rows(logits: torch.Tensor, targets: torch.Tensor, fmt: Format) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: (certified?, correctly rounded value where certified, float64 estimate)."""
    ordinary, loss, error = enclose_rows(logits, targets)
    certified, candidate = certify(loss, error, fmt)
    return (ordinary & certified).numpy(), candidate.numpy(), loss.numpy()


def certify_mean(logits: torch.Tensor, targets: torch.Tensor, fmt: Format) -> tuple[bool, float, float]:
    """(certified?, correctly rounded mean where certified, float64 estimate) of the per-row losses."""
    ordinary, loss, error = enclose_rows(logits, targets)
    if not bool(ordinary.all()):
        return False, float("nan"), float("nan")
    n = loss.numel()
    mean = loss.mean()
    # the float64 sum and division add at most (n + 1) u of the mean of |loss|
    mean_error = (error.mean() + (n + 1) * U * loss.abs().mean()) * 1.01
    certified, candidate = certify(mean.reshape(1), mean_error.reshape(1), fmt)
    return bool(certified[0]), float(candidate[0]), float(mean)
