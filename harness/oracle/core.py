"""The oracle's entry points: per-sample and mean cross entropy, correctly rounded, certified.

Each entry point runs under ``harness.numerics.harness_numerics``: IEEE subnormals and
torch's own functions, whatever the calling script has set.

Each value is decided by the cheapest tier that can prove it: the vectorized float64
tier (harness.oracle.fast_tier) for float16/bfloat16/float32 outputs, then the
double-double tier (harness.oracle.dd_tier) for any output, else the MPFR tier
(harness.oracle.mpfr_tier), which never gives up silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import mpmath.libmp as mp
import numpy as np
import torch

from harness.formats import format_of
from harness.numerics import guarded
from harness.oracle import dd_tier
from harness.oracle.fast_tier import certify_mean, certify_rows
from harness.oracle.mpfr_tier import _enclose, _round_mpf, _special, _start_precision, row_loss
from harness.oracle.value import MAX_PRECISION, TIERS, OracleValue

__all__ = ["cross_entropy", "evaluate", "mean_loss"]


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


@guarded
def evaluate(
    logits: torch.Tensor,
    targets: torch.Tensor,
    dtype: torch.dtype | None = None,
    start_precision: int | None = None,
    tiers: Sequence[str] = TIERS,
) -> list[OracleValue]:
    """Per-sample oracle values with their certification, rounded to dtype (default: the logits').

    ``tiers``: the float64 tier decides what it can prove for float16/bfloat16/float32
    outputs, the double-double tier what it can prove of the rest (any output dtype);
    the mpmath tier decides the rest. ``tiers=("mpmath",)`` skips both.
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
    if "double-double" in tiers and start_precision is None and len(decided) < len(rows):
        decided.update(dd_tier.decide_rows(rows, target_list, fmt, skip=decided))
    return [
        decided.get(i) or row_loss(rows[i].to(torch.float64).numpy(), t, fmt, start_precision)
        for i, t in enumerate(target_list)
    ]


@guarded
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


@guarded
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
    if "double-double" in tiers and start_precision is None:
        decided = dd_tier.decide_mean(table, target_list, fmt)
        if decided is not None:
            return decided
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
