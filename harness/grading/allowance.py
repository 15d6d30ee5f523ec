"""Stability allowances: the largest error a stable implementation may make, per graded value.

Every allowance follows one principle (Blanchard, Higham & Higham, "Accurately computing
the log-sum-exp and softmax functions", IMA J. Numer. Anal. 41(4), 2021, §3–4): a stable
implementation evaluates the shifted formulas in a working precision at least as fine as
the wider of the input and output dtypes (u_w, its unit roundoff), sums in an
accumulator at least as fine as float32 (u_acc = min(u_w, 2**-24)), and rounds once to
the output dtype (u_out). With n classes, the first-order error of the shifted forms is

    −log softmax_j = A_j:  e(A_j)  = u_w (3 A_j + ln n + 2) + n u_acc      (as the plain loss)
    logsumexp:             e(lse)  = u_w (|lse| + ln n + 2) + n u_acc
    softmax_j = p_j:       e(p_j)  = p_j (u_w (A_j + 3) + n u_acc)          (BHH Thm 4.3, per element)

and an option adds the rounding of what it computes (README "Verdicts" derives each):
class weights scale e(A) and add u_w per product; label smoothing sums C terms
(C u_acc on the sum); z-loss adds z (2 |lse| e(lse) + u_w lse²); soft-capping moves each
capped logit by at most 4 u_w c, which moves the loss by at most 4 u_w c (2K + 2 z |lse|)
with K the sum of the coefficients. An output coarser than the working precision adds
its own rounding, (u_out − u_w) |value|. Reductions sum N values recursively:
(N − 1) u_acc Σ|L_i|, and a mean rounds once more. The allowance is SAFETY times the
first-order bound (libm's exp and log are within 1 ulp, not 0.5, and second-order terms).

The allowance depends only on shift-invariant quantities (the loss, A_j, n) except
through lse for logsumexp and z-loss, so a large common offset cannot widen it for the
loss (pytorch#11752 fails by about log 2 against an allowance of about 1e-6).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from harness.formats import Format
from harness.oracle.options import LossOptions

__all__ = [
    "ACCUMULATOR_ROUNDOFF",
    "SAFETY",
    "family_allowance",
    "gradient_allowance",
    "loss_allowance",
    "reduction_allowance",
    "working_roundoff",
]

SAFETY = 2.0
ACCUMULATOR_ROUNDOFF = 2.0**-24  # float32: the coarsest accumulator a sound kernel uses


def working_roundoff(fmt_in: Format, fmt_out: Format) -> tuple[float, float, float]:
    """(u_w, u_acc, extra output rounding factor u_out − u_w, at least 0)."""
    u_w = min(fmt_in.unit_roundoff, fmt_out.unit_roundoff)
    return u_w, min(u_w, ACCUMULATOR_ROUNDOFF), max(0.0, fmt_out.unit_roundoff - u_w)


def _shifted(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A = lse − x per element, lse per row, m per row) in float64; masked classes have A = +inf."""
    x = rows.detach().to(device="cpu", dtype=torch.float64)
    m = x.max(dim=1).values
    finite = torch.isfinite(m)
    # shifted: A = (m − x) + log Σ exp(x − m), so a large common offset cannot absorb log n
    d = torch.where(finite.unsqueeze(1), m.unsqueeze(1) - x, 0.0)
    log_s = torch.log(torch.exp(-d).sum(dim=1))
    lse = torch.where(finite, m + log_s, torch.logsumexp(x, dim=1))
    a = torch.where(finite.unsqueeze(1), d + log_s.unsqueeze(1), lse.unsqueeze(1) - x)
    return a, lse, m


def _e(a: torch.Tensor, n: int, u_w: float, u_acc: float) -> torch.Tensor:
    return u_w * (3 * a + math.log(n) + 2) + n * u_acc


def loss_allowance(
    rows: torch.Tensor,
    targets: torch.Tensor | None,
    probs: torch.Tensor | None,
    options: LossOptions,
    exact: np.ndarray,
    fmt_in: Format,
    fmt_out: Format,
) -> np.ndarray:
    """Per-sample allowance (nats) for (N, C) rows: class-index ``targets`` or ``probs`` targets.

    ``exact``: the exact per-sample losses (float64 approximations). Ignored samples: 0.
    With no option this is exactly the plain loss's allowance.
    """
    n_rows, n = rows.shape
    u_w, u_acc, u_extra = working_roundoff(fmt_in, fmt_out)
    with np.errstate(over="ignore", invalid="ignore"):
        loss = np.abs(np.asarray(exact, dtype=np.float64))
        if options.plain and probs is None:
            plain = SAFETY * (u_w * (3.0 * loss + math.log(max(n, 1)) + 2.0) + n * u_acc) + u_extra * loss
            ignored = (targets == options.ignore_index).numpy()
            return np.where(ignored, 0.0, plain)
    x = rows.detach().to(device="cpu", dtype=torch.float64)
    if options.softcap is not None:
        x = options.softcap * torch.tanh(x / options.softcap)
    a, lse, _ = _shifted(x)
    w = torch.tensor(options.class_weights(n), dtype=torch.float64)
    eps = options.label_smoothing
    finite_a = torch.where(torch.isfinite(a), a, 0.0)  # zero-coefficient masked classes contribute nothing
    if probs is None:
        t = targets.to(torch.int64)
        ignored = t == options.ignore_index
        safe_t = torch.where(ignored, 0, t)
        rows_idx = torch.arange(n_rows)
        alpha = (1 - eps) * w[safe_t]
        a_t = finite_a[rows_idx, safe_t]
        smooth = (w * finite_a).sum(dim=1)  # T = Σ w_j A_j
        w_sum = w.sum()
        beta = eps / n
        err = alpha * _e(a_t, n, u_w, u_acc) + beta * (
            u_w * (3 * smooth + (math.log(n) + 2) * w_sum) + n * u_acc * w_sum
        )
        err = err + n * u_acc * beta * smooth + u_w * (alpha * a_t + beta * smooth)
        k = alpha + beta * w_sum
    else:
        y = probs.detach().to(device="cpu", dtype=torch.float64)
        ignored = torch.zeros(n_rows, dtype=torch.bool)
        c = w * ((1 - eps) * y + eps / n)
        body = (c * finite_a).sum(dim=1)
        k = c.sum(dim=1)
        err = u_w * (3 * body + (math.log(n) + 2) * k) + n * u_acc * k + n * u_acc * body
    if options.z_loss:
        z = options.z_loss
        e_lse = u_w * (lse.abs() + math.log(n) + 2) + n * u_acc
        err = err + z * 2 * lse.abs() * e_lse + u_w * z * lse * lse
    if options.softcap is not None:
        err = err + 4 * u_w * options.softcap * (2 * k + 2 * options.z_loss * lse.abs())
    with np.errstate(over="ignore", invalid="ignore"):
        total = SAFETY * err.numpy() + (u_extra * loss if u_extra else 0.0)
    return np.where(ignored.numpy(), 0.0, np.nan_to_num(total, nan=math.inf))


def reduction_allowance(
    per_sample: np.ndarray, exact: np.ndarray, value: float, denominator: float | None, fmt_in: Format, fmt_out: Format
) -> float:
    """Allowance of a sum (``denominator`` None) or mean of samples with the given allowances.

    ``exact``: the samples' exact losses; ``value``: the exact reduced value.
    """
    u_w, u_acc, u_extra = working_roundoff(fmt_in, fmt_out)
    count = len(per_sample)
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.sum(per_sample)) + SAFETY * max(count - 1, 0) * u_acc * float(np.sum(np.abs(exact)))
        if denominator is not None:
            total = total / denominator if denominator else math.inf
        return total + SAFETY * u_w * abs(value) + u_extra * abs(value)


def family_allowance(op: str, rows: torch.Tensor, fmt_in: Format, fmt_out: Format) -> np.ndarray:
    """Per-output-element allowance of logsumexp (N,), log_softmax or softmax (N, C)."""
    n = rows.shape[1]
    u_w, u_acc, u_extra = working_roundoff(fmt_in, fmt_out)
    a, lse, _ = _shifted(rows)
    with np.errstate(over="ignore", invalid="ignore"):
        if op == "logsumexp":
            err = u_w * (lse.abs() + math.log(n) + 2) + n * u_acc
            return (SAFETY * err + u_extra * lse.abs()).numpy()
        if op == "log_softmax":
            return (SAFETY * _e(a, n, u_w, u_acc) + u_extra * a.abs()).numpy()
        p = torch.exp(-a)
        tiny = fmt_out.smallest_subnormal  # an underflowing element may flush to its nearest neighbour
        return (SAFETY * p * (u_w * (a + 3) + n * u_acc) + u_extra * p + tiny).numpy()


def gradient_allowance(
    rows: torch.Tensor,
    targets: torch.Tensor | None,
    probs: torch.Tensor | None,
    options: LossOptions,
    factors: np.ndarray,
    fmt_in: Format,
    fmt_out: Format,
) -> np.ndarray:
    """Per-element allowance (in the gradient's units) of the gradient with respect to (N, C) logits.

    The oracle is harness.oracle.gradient. A stable backward computes in at least float32
    (float64 for float64 logits) and rounds once to the gradient's dtype:
    u_w = min(u_in, 2**-24). Each element g' s_j ((K + 2 z lse) p_j − coef_j) then errs by
    at most g' times:

    - the softmax element's error Δp_j = p_j (u_w (A_j + 3) + n u_acc) (Blanchard, Higham
      & Higham 2021, Thm 4.3) times its coefficient, the subtraction of coef_j (u_w of both
      terms), z-loss's 2 z e(lse) p_j and 2 z |lse| e(lse) p_j (autograd of the
      log-sum-exp forms p_j = exp(x_j − lse) from the rounded lse), and the products'
      roundings;
    - a p_j that underflows the working precision: its smallest subnormal sub_w (absolute)
      times |K| + |2 z lse|;
    - soft-capping: the capped logits' 4 u_w c moves p_j by 8 u_w c relatively and lse by
      4 u_w c; s_j = sech²(x_j / c) errs by (2 |x_j / c| + 1) s_j u_w from rounding x_j / c,
      plus 5 u_w absolutely when computed as 1 − tanh² (torch's tanh backward), which is
      all of s_j where tanh rounds to 1 (README "Gradients: the backward pass");

    - at the row's maximum: n u_acc Σ_k |G_k| + Σ_k of the errors above, the gradient of a
      max shift that autograd differentiates (x − max x not detached: −Σ_k G_k, 0 exactly);

    plus sub_w |s_j G_j| for a factor g' (g / W) that underflows the working precision,
    u_out |grad| for the rounding to the output, and its smallest subnormal for an
    element that flushes. ``factors``: each row's upstream factor g'_i (0 for ignored
    samples). Returns an (N, C) float64 array (inf where a bound overflows).
    """
    n_rows, n = rows.shape
    u_w = min(fmt_in.unit_roundoff, ACCUMULATOR_ROUNDOFF)
    u_acc = u_w
    u_out = fmt_out.unit_roundoff
    x = rows.detach().to(device="cpu", dtype=torch.float64)
    raw = x
    if options.softcap is not None:
        x = options.softcap * torch.tanh(x / options.softcap)
    a, lse, _ = _shifted(x)
    p = torch.where(torch.isfinite(a), torch.exp(-a), 0.0)
    finite_a = torch.where(torch.isfinite(a), a, 0.0)
    dp = p * (u_w * (finite_a + 3) + n * u_acc)
    w = torch.tensor(options.class_weights(n), dtype=torch.float64)
    eps, z = options.label_smoothing, options.z_loss
    e_lse = (u_w * (lse.abs() + math.log(n) + 2) + n * u_acc).unsqueeze(1)
    zl = (2 * z * lse).unsqueeze(1)
    if probs is None:
        t = targets.to(torch.int64)
        safe_t = torch.where(t == options.ignore_index, 0, t)
        one_hot = torch.zeros_like(p)
        one_hot[torch.arange(n_rows), safe_t] = 1.0
        alpha = ((1 - eps) * w[safe_t]).unsqueeze(1)
        pm = p - one_hot
        w_sum = w.sum()
        share = eps / n
        grad = alpha * pm + share * (w_sum * p - w) + zl * p
        err = alpha * (dp + u_w * pm.abs()) + 2 * u_w * (alpha * pm).abs()
        err = err + share * (w_sum * dp + n * u_acc * w_sum * p + u_w * (w_sum * p + w))
        k = alpha + share * w_sum
        magnitude = (alpha * pm).abs() + share * (w_sum * p + w)
    else:
        y = probs.detach().to(device="cpu", dtype=torch.float64)
        coef = w * ((1 - eps) * y + eps / n)
        k = coef.sum(dim=1, keepdim=True)
        grad = (k + zl) * p - coef
        err = k * dp + p * n * u_acc * k + 3 * u_w * coef + u_w * (k * p + coef)
        magnitude = k * p + coef
    if z:
        # autograd of lse (torch.logsumexp's backward) forms p_j = exp(x_j − lse) from the
        # rounded lse: p_j then errs by e(lse) relatively, not by u_w (A_j + 3)
        err = err + zl.abs() * (dp + p * e_lse) + 2 * z * p * e_lse + 2 * u_w * (zl * p).abs()
        magnitude = magnitude + (zl * p).abs()
    err = err + u_w * magnitude
    # an underflowing p_j is off by up to the working precision's smallest subnormal (absolute),
    # float32's 2**-149 or float64's 2**-1074, times its coefficient K + 2 z lse
    sub_w = 2.0**-1074 if u_w < ACCUMULATOR_ROUNDOFF else 2.0**-149
    err = err + sub_w * (k.abs() + zl.abs())
    # autograd through a max shift that is not detached (the seed notebook's x − max x):
    # the gradient of the shift, −Σ_k G_k, is 0 exactly but sums n rounded terms, and lands
    # on the row's maximum: an absolute n u_acc Σ_k |G_k| + Σ_k err_k there
    with np.errstate(invalid="ignore"):
        at_max = (x == x.max(dim=1, keepdim=True).values) & torch.isfinite(x)
    shift_err = n * u_acc * grad.abs().sum(dim=1, keepdim=True) + err.sum(dim=1, keepdim=True)
    err = err + torch.where(at_max, shift_err, 0.0)
    if options.softcap is not None:
        cap = options.softcap
        q = torch.where(torch.isinf(raw), 0.0, raw / cap)
        s = torch.where(torch.isinf(raw), 0.0, 1.0 / torch.cosh(q) ** 2)
        # x' = c tanh(x/c) is within 4 u_w c: p_j moves by 2 × that relatively, lse by that
        err = s * (err + 8 * u_w * cap * p * (k + zl.abs() + z))
        # s_j = sech²(q): from rounding q it moves by 2|q| s u_w; computed as 1 − tanh²
        # (torch's tanh backward) it is only absolutely accurate: 1 − t² with t within
        # 2 u_w of tanh q is off by about 5 u_w, which is all of s where tanh q rounds to 1
        s_err = s * (2 * q.abs() + 1) * u_w + 5 * u_w
        err = err + s_err * grad.abs() + u_w * (s * grad).abs()
        grad = s * grad
    up = torch.as_tensor(np.abs(factors), dtype=torch.float64).unsqueeze(1)
    # the factor g' itself (g / W for a mean) underflows the working precision where it is
    # tiny: off by up to sub_w absolutely, which scales the whole row
    total = SAFETY * (up * err * (1 + 2 * u_w) + sub_w * grad.abs()) + u_out * (up * grad).abs()
    return (total + fmt_out.smallest_subnormal).numpy()
