"""Certified high-precision oracle for softmax cross entropy.

For one row x with target t, loss = (m - x_t) + log1p(s), where m = max x (taken at
one index k) and s = sum over j != k of exp(x_j - m). The oracle computes a rigorous
enclosure [lo, hi] of the exact loss at working precision P, rounds both
ends to the requested format, and accepts the result only when they agree. Otherwise
P doubles, up to a cap; a row still undecided there is returned as *uncertified*
(with a best estimate), never dropped.

Why the enclosure is rigorous:
- inputs are exact (every graded format embeds in float64, and mpmath and MPFR take
  floats exactly); m - x_t and x_j - m are computed exactly (a float64 difference
  whose TwoSum error is 0, else exact mpmath subtraction);
- each exp is evaluated by MPFR (through gmpy2, mpmath's own backend library), which is
  correctly rounded in the requested direction: rounded down at P bits it gives r with
  r <= exp(d) < r + ulp(r) <= r (1 + 2**(1-P)), so no error model is assumed;
- the weighted terms are summed by MPFR's exact-then-rounded sum, down and up;
- terms with x_j - m < -0.71 K (so exp < 2**-K) are not evaluated but bounded by
  2**-K each and added to the upper end;
- log1p(s) is bracketed by MPFR's log1p rounded down at s_lo and up at s_hi, and
  m - x_t is added exactly by mpmath with directed rounding.

Special values (documented in README.md):
- NaN anywhere in the row, or +inf at the target: NaN;
- +inf at a non-target position: +inf (the limit of the loss);
- -inf at non-target positions: masked, they contribute nothing;
- target at -inf with some logit finite: +inf; every logit -inf: NaN.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import gmpy2
import mpmath.libmp as mp
import numpy as np
import torch

from harness.fast_tier import certify_mean, certify_rows
from harness.formats import Format, format_of, round_scaled

__all__ = ["OracleValue", "cross_entropy", "evaluate", "row_loss"]

START_GUARD_BITS = 11  # float64 outputs start at 64 bits, one limb; a close call doubles it
TIERS = ("float64", "mpmath")  # cheapest first
MAX_PRECISION = 4096
_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class OracleValue:
    """The exact loss rounded to a format, plus how it was decided."""

    value: float  # correctly rounded to the format (nan/inf allowed); a best estimate if not certified
    exact: float  # the exact loss rounded to float64 (nan/inf allowed)
    certified: bool
    precision: int  # working bits that decided it (0 for special values)
    method: str  # "special", "exact" or "mpmath"


@dataclass(frozen=True)
class _Enclosure:
    lo: tuple  # mpf
    hi: tuple  # mpf
    sticky_lo: bool  # the exact value is strictly above lo


def _special(row: np.ndarray, target: int) -> float | None:
    """The loss when the row has NaN or infinities that decide it, else None."""
    top = row.max()  # NaN when any entry is NaN: one pass decides every case below
    xt = row[target]
    if top != top or xt == math.inf:
        return math.nan
    if top == math.inf:
        return math.inf
    if xt == -math.inf:
        return math.nan if top == -math.inf else math.inf
    return None


def _distinct(row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The row's distinct values other than -inf, ascending, and how often each occurs.

    Rows repeat values (flat backgrounds; a 16-bit format has at most 65,536 values), so
    each distinct value is exponentiated once and weighted by its count.
    """
    if len(row) > SHORT_ROW:
        return np.unique(row[row != -np.inf], return_counts=True)
    counts = Counter(row.tolist())  # np.unique's fixed cost dominates short rows
    counts.pop(-math.inf, None)
    values = sorted(counts)
    return np.array(values, dtype=np.float64), np.array([counts[v] for v in values], dtype=np.int64)


def _round_mpf(x: tuple, fmt: Format, *, sticky: bool = False) -> float:
    sign, man, exp, _ = x
    if sign:
        raise AssertionError("cross entropy enclosures are non-negative")
    return round_scaled(man, exp, fmt, sticky=sticky)


def _log1p_bounds(s_lo: gmpy2.mpfr, s_hi: gmpy2.mpfr, prec: int) -> tuple[tuple, tuple]:
    """[log1p(s_lo) rounded down, log1p(s_hi) rounded up], by MPFR (correctly rounded), as mpf."""
    with gmpy2.context(precision=prec, round=gmpy2.RoundDown):
        lo = gmpy2.log1p(s_lo)
    with gmpy2.context(precision=prec, round=gmpy2.RoundUp):
        hi = gmpy2.log1p(s_hi)
    return _to_mpf(lo), _to_mpf(hi)


# |x| up to this keeps exp(x) far inside MPFR's exponent range (about 2**30 bits).
DIRECT_LIMIT = 2.0**16
SHORT_ROW = 256  # rows up to this long are deduplicated in plain Python


def _weighted_sum_bounds(exps: list, counts: list[int], prec: int) -> tuple:
    """[lo, hi] of sum_j counts_j * e_j, where e_j <= true term < e_j (1 + 2**(1 - prec))."""
    # prec + 64 bits hold each count * e exactly, so only the two sums round.
    with gmpy2.context(precision=prec + 64, round=gmpy2.RoundDown):
        weighted = [e * c if c != 1 else e for e, c in zip(exps, counts)]
        s_lo = gmpy2.fsum(weighted)
    with gmpy2.context(precision=prec + 64, round=gmpy2.RoundUp):
        s_hi = gmpy2.fsum(weighted) * (1 + gmpy2.mul_2exp(gmpy2.mpfr(1), 1 - prec))
    return s_lo, s_hi


def _exps_rounded_down(arguments: list, prec: int) -> list:
    """exp of each argument rounded down by MPFR, so r <= exp(t) < r + ulp(r) <= r (1 + 2**(1 - prec)).

    prec >= 53, so MPFR reads every double exactly.
    """
    with gmpy2.context(precision=prec, round=gmpy2.RoundDown):
        return list(map(gmpy2.exp, arguments))


def _scaled_exp_sum(values: np.ndarray, counts: np.ndarray, top: float, prec: int) -> tuple:
    """[lo, hi] of sum_j counts_j exp(values_j - top), as exp(-top) * sum_j counts_j exp(values_j).

    For moderate values (|x| <= DIRECT_LIMIT): no difference needs to be exact.
    """
    s_lo, s_hi = _weighted_sum_bounds(_exps_rounded_down(values.tolist(), prec), counts.tolist(), prec)
    with gmpy2.context(precision=prec, round=gmpy2.RoundDown):
        lo = s_lo * gmpy2.exp(-top)
    with gmpy2.context(precision=prec, round=gmpy2.RoundUp):
        hi = s_hi * gmpy2.exp(-top)
    return lo, hi


def _shifted_exp_sum(values: np.ndarray, counts: np.ndarray, top: float, prec: int) -> tuple:
    """[lo, hi] of sum_j counts_j exp(values_j - top), each difference formed exactly.

    For any values: the float64 difference and its TwoSum error are an exact
    double-double (the error is 0 whenever the difference is a double, which is the
    rule for large offsets).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        heads = values - top
        back = heads - values
        tails = (values - (heads - back)) + (-top - back)
    simple = tails == 0
    exps = _exps_rounded_down(heads[simple].tolist(), prec)
    if not simple.all():
        head, tail = heads[~simple], tails[~simple]
        span = int((np.frexp(head)[1] - np.frexp(tail)[1]).max()) + 54  # bits of head + tail
        with gmpy2.context(precision=max(span, prec)):
            exact = [gmpy2.mpfr(h) + t for h, t in zip(head.tolist(), tail.tolist())]
        exps += _exps_rounded_down(exact, prec)
    order = np.concatenate([counts[simple], counts[~simple]])
    return _weighted_sum_bounds(exps, order.tolist(), prec)


def _exp_sum_bounds(values: np.ndarray, counts: np.ndarray, top: float, prec: int) -> tuple:
    """Rigorous [lo, hi] (mpfr) of sum_j counts_j exp(values_j - top), for values <= top."""
    if not len(values):
        return gmpy2.mpfr(0), gmpy2.mpfr(0)
    if max(abs(float(values[0])), abs(top)) <= DIRECT_LIMIT:  # values are sorted
        return _scaled_exp_sum(values, counts, top, prec)
    return _shifted_exp_sum(values, counts, top, prec)


def _to_mpf(x: gmpy2.mpfr) -> tuple:
    man, exp = x.as_mantissa_exp()
    return mp.from_man_exp(int(man), int(exp))


def _enclose(row: np.ndarray, target: int, fmt: Format, prec: int) -> _Enclosure:
    """Rigorous enclosure of the loss of a row with no +inf/NaN and a finite target."""
    values, counts = _distinct(row)
    top = float(values[-1])
    m = mp.from_float(top)
    a = mp.mpf_sub(m, mp.from_float(float(row[target])), 0)  # exact (prec 0)
    n_finite = int(counts.sum())
    counts[-1] -= 1  # the maximum's own term is the 1 in log1p
    if not counts[-1]:
        values, counts = values[:-1], counts[:-1]
    if not len(values):
        return _Enclosure(a, a, False)
    largest = float(values[-1]) - top  # a float estimate is enough here
    # Bits of the sum needed: enough below the loss's own size (or below the format's
    # finest grid, past which nothing changes the rounding). Rigour does not depend
    # on this choice, only whether the enclosure is tight enough to decide.
    a_mag = a[2] + a[3] if a != mp.fzero else -math.inf
    loss_mag = max(a_mag, min(largest * _LOG2E, 0.0) - 1.0, fmt.quantum_exponent - 2)
    k_bits = max(int(prec + math.log2(n_finite) + 4 - loss_mag), 16)
    cutoff = -0.71 * k_bits  # exp(d) < 2**-k_bits below it
    with np.errstate(over="ignore"):
        # d is within a relative 2**-53 of x - m: far inside the cutoff's 2.4% margin.
        evaluated = values - top >= cutoff  # an overflowed -inf difference is far below it too
    n_cut = int(counts[~evaluated].sum())
    s_lo, s_hi = _exp_sum_bounds(values[evaluated], counts[evaluated], top, prec)
    if n_cut:  # each skipped term is below 2**-k_bits
        with gmpy2.context(precision=prec + 64, round=gmpy2.RoundUp):
            s_hi += gmpy2.mul_2exp(gmpy2.mpfr(n_cut), -k_bits)
    l_lo, l_hi = _log1p_bounds(s_lo, s_hi, prec)
    lo = mp.mpf_add(a, l_lo, prec, mp.round_floor)
    hi = mp.mpf_add(a, l_hi, prec, mp.round_ceiling)
    # Some finite term is always present here, so the loss is strictly above a.
    return _Enclosure(lo, hi, sticky_lo=lo == a or l_lo == mp.fzero)


def _start_precision(fmt: Format, start_precision: int | None) -> int:
    # At least 53 bits: `exact` is a float64 approximation too.
    return start_precision or max(fmt.precision, 53) + START_GUARD_BITS


def row_loss(
    row: Sequence[float] | np.ndarray, target: int, fmt: Format, start_precision: int | None = None
) -> OracleValue:
    """Correctly rounded cross entropy of one row of exact float values.

    ``start_precision`` (bits) overrides the first working precision; self-checks use
    it to recompute a value from a much higher starting point.
    """
    row = np.asarray(row, dtype=np.float64)
    special = _special(row, target)
    if special is not None:
        return OracleValue(special, special, True, 0, "special")
    prec = _start_precision(fmt, start_precision)
    f64 = format_of(torch.float64)
    while True:
        enc = _enclose(row, target, fmt, prec)
        lo = _round_mpf(enc.lo, fmt, sticky=enc.sticky_lo)
        hi = _round_mpf(enc.hi, fmt)
        exact_lo = _round_mpf(enc.lo, f64, sticky=enc.sticky_lo)
        if lo == hi:
            method = "exact" if enc.lo == enc.hi else "mpmath"
            return OracleValue(lo, exact_lo, True, prec, method)
        if prec >= MAX_PRECISION:
            return OracleValue(lo, exact_lo, False, prec, "mpmath")
        prec *= 2


def _validated(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The logits (on the CPU, unconverted) and the targets as ints, after checking shapes and types."""
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    if targets.shape != (logits.shape[0],):
        raise ValueError(f"targets must have shape ({logits.shape[0]},), got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integers, got {targets.dtype}")
    n_classes = logits.shape[1]
    target_list = [int(t) for t in targets.tolist()]
    bad = [t for t in target_list if not 0 <= t < n_classes]
    if bad:
        raise ValueError(f"target {bad[0]} out of range for {n_classes} classes")
    format_of(logits.dtype)  # rejects dtypes the harness does not grade
    return logits.detach().cpu(), target_list


def evaluate(
    logits: torch.Tensor,
    targets: torch.Tensor,
    dtype: torch.dtype | None = None,
    start_precision: int | None = None,
    tiers: Sequence[str] = TIERS,
) -> list[OracleValue]:
    """Per-sample oracle values with their certification, rounded to dtype (default: the logits').

    ``tiers``: the float64 tier decides what it can prove for float16/bfloat16/float32
    outputs; the mpmath tier decides the rest. ``tiers=("mpmath",)`` skips the fast tier.
    """
    unknown = set(tiers) - set(TIERS)
    if unknown or "mpmath" not in tiers:
        raise ValueError(f"tiers must include 'mpmath' and come from {TIERS}, got {tuple(tiers)}")
    rows, target_list = _validated(logits, targets)
    fmt = format_of(dtype or logits.dtype)
    decided: dict[int, OracleValue] = {}
    if "float64" in tiers and fmt.precision < 53 and start_precision is None and len(rows):
        certified, values, estimates = certify_rows(rows, torch.tensor(target_list), fmt)
        for i in np.flatnonzero(certified):
            decided[int(i)] = OracleValue(float(values[i]), float(estimates[i]), True, 53, "float64")
    return [
        decided.get(i) or row_loss(rows[i].to(torch.float64).numpy(), t, fmt, start_precision)
        for i, t in enumerate(target_list)
    ]


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    dtype: torch.dtype = torch.float64,
    reduction: Literal["none", "mean"] = "none",
) -> torch.Tensor:
    """Per-sample cross entropy correctly rounded to ``dtype`` (uncertified rows raise).

    Shapes follow torch: (N, C) logits with (N,) targets, or (N, C, d1, ..., dk) with
    (N, d1, ..., dk). With reduction="mean", the mean of the exact per-sample losses,
    correctly rounded.
    """
    shape = targets.shape
    if logits.ndim > 2 and targets.ndim == logits.ndim - 1:
        logits, targets = logits.movedim(1, -1).reshape(-1, logits.shape[1]), targets.reshape(-1)
    if reduction == "none":
        values = evaluate(logits, targets, dtype)
        uncertified = [i for i, v in enumerate(values) if not v.certified]
        if uncertified:
            raise ArithmeticError(f"oracle could not certify rows {uncertified} within {MAX_PRECISION} bits")
        return torch.tensor([v.value for v in values], dtype=torch.float64).to(dtype).reshape(shape)
    if reduction == "mean":
        value = mean_loss(logits, targets, dtype)
        if not value.certified:
            raise ArithmeticError(f"oracle could not certify the mean within {MAX_PRECISION} bits")
        return torch.tensor(value.value, dtype=torch.float64).to(dtype)
    raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")


def mean_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    dtype: torch.dtype | None = None,
    start_precision: int | None = None,
    tiers: Sequence[str] = TIERS,
) -> OracleValue:
    """Oracle value of the mean over samples, correctly rounded to dtype (default: the logits')."""
    table, target_list = _validated(logits, targets)
    fmt = format_of(dtype or logits.dtype)
    if not len(table):
        return OracleValue(math.nan, math.nan, True, 0, "special")
    if "float64" in tiers and fmt.precision < 53 and start_precision is None:
        certified, value, estimate = certify_mean(table, torch.tensor(target_list), fmt)
        if certified:
            return OracleValue(value, estimate, True, 53, "float64")
    rows = list(table.to(torch.float64).numpy())
    specials = [_special(row, t) for row, t in zip(rows, target_list)]
    if any(s is not None for s in specials):
        value = math.fsum(s for s in specials if s is not None)  # nan beats inf, inf + inf = inf
        return OracleValue(value, value, True, 0, "special")
    n = len(rows)
    prec = _start_precision(fmt, start_precision)
    f64 = format_of(torch.float64)
    while True:
        encs = [_enclose(row, t, fmt, prec) for row, t in zip(rows, target_list)]
        total_lo = total_hi = mp.fzero
        for enc in encs:
            total_lo = mp.mpf_add(total_lo, enc.lo, prec, mp.round_floor)
            total_hi = mp.mpf_add(total_hi, enc.hi, prec, mp.round_ceiling)
        mean_lo = mp.mpf_div(total_lo, mp.from_int(n), prec, mp.round_floor)
        mean_hi = mp.mpf_div(total_hi, mp.from_int(n), prec, mp.round_ceiling)
        lo, hi = _round_mpf(mean_lo, fmt), _round_mpf(mean_hi, fmt)
        exact = _round_mpf(mean_lo, f64)
        if lo == hi:
            return OracleValue(lo, exact, True, prec, "mpmath")
        if prec >= MAX_PRECISION:
            return OracleValue(lo, exact, False, prec, "mpmath")
        prec *= 2
