"""Verdicts: is an error a stability bug, a precision shortfall, or fine?

The stability allowance follows the first-order error analysis of the shifted
log-sum-exp algorithm (Blanchard, Higham & Higham 2021, section 4), written for
loss = (m - x_t) + log S with S = sum_j exp(x_j - m), the dtype's unit roundoff u, and
the accumulator's unit roundoff u_acc (float32 for float16/bfloat16 inputs, as every
sound kernel accumulates at least there; the dtype's own otherwise):

  rounding x_t - m, log S and the final subtraction     u * loss each, at most 3 u * loss
  exp of each shifted term (relative u on S)            u
  shifted differences, weighted by their softmax mass   u * sum_j p_j |x_j - m| <= u * ln n
  summing n terms recursively (the paper's n term)      n * u_acc (relative on S)

so |computed - exact| <= u * (3 * loss + ln n + 2) + n * u_acc to first order. The
allowance is SAFETY times that. It depends only on the loss and the class count, both
shift-invariant, so a large common offset cannot widen it (pytorch#11752 then fails by
~log 2 against an allowance of ~1e-6). Summing in float16/bfloat16 is not allowed for:
a 16-bit accumulator stalls (256 + 1 = 256 in bfloat16) or overflows past 65,504.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.formats import Format

__all__ = ["FAILED_CALLS", "GRADED", "SAFETY", "VERDICTS", "Policy", "allowance", "judge"]

SAFETY = 2.0  # libm's exp/log are within 1 ulp (not 0.5), plus second-order terms
ACCUMULATOR_ROUNDOFF = 2.0**-24  # float32: the coarsest accumulator a sound kernel uses
VERDICTS = ("ok", "ungraded", "inaccurate", "unstable")
GRADED = ("ok", "inaccurate", "unstable")  # a run with no record among these graded nothing
# Outcomes where the implementation gave no value to grade: each is a failure (unstable).
FAILED_CALLS = ("raised", "bad_output", "timeout", "crashed", "killed_memory", "mutated_input", "nondeterministic")


@dataclass(frozen=True)
class Policy:
    """How strict a check is: ULPs beyond ``max_ulps`` are *inaccurate*; ``strict`` fails on them."""

    max_ulps: float = 4.0
    strict: bool = False

    def fails(self, verdict: str) -> bool:
        return verdict == "unstable" or (self.strict and verdict == "inaccurate")


def allowance(exact_loss: np.ndarray | float, n_classes: int, fmt: Format) -> np.ndarray:
    """Largest absolute error a stable shifted algorithm may make, per sample."""
    loss = np.abs(np.asarray(exact_loss, dtype=np.float64))
    u = fmt.unit_roundoff
    u_acc = min(u, ACCUMULATOR_ROUNDOFF)
    n = max(n_classes, 1)
    with np.errstate(over="ignore"):  # float64 losses near its max: the allowance is inf
        return SAFETY * (u * (3.0 * loss + math.log(n) + 2.0) + n * u_acc)


def judge(
    outcomes: np.ndarray,
    ulps: np.ndarray,
    abs_error: np.ndarray,
    allowed: np.ndarray,
    outputs: np.ndarray,
    special_input: np.ndarray,
    policy: Policy,
    accept_nonfinite: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(verdict, error / allowance) per sample.

    Rows with a +inf or NaN logit have no finite answer; NaN and inf are both accepted
    there (torch returns NaN where the limit is +inf), and a finite output is unstable.
    ``accept_nonfinite`` marks samples where inf or NaN is acceptable but a finite,
    accurate value is too: a mean over rows one of which overflows the dtype.
    """
    accept_nonfinite = special_input if accept_nonfinite is None else accept_nonfinite | special_input
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # tiny allowances: ratio inf
        ratio = np.where(abs_error == 0, 0.0, abs_error / allowed)
    nonfinite_out = ~np.isfinite(outputs)
    verdict = np.select(
        [
            np.isin(outcomes, FAILED_CALLS),
            outcomes == "uncertified",
            accept_nonfinite & nonfinite_out,
            special_input,
            np.isin(outcomes, ["spurious_inf", "spurious_nan", "missing_nonfinite"]),
            outcomes == "exact",
            ratio > 1.0,
            ulps > policy.max_ulps,
        ],
        ["unstable", "ungraded", "ok", "unstable", "unstable", "ok", "unstable", "inaccurate"],
        default="ok",
    )
    ratio = np.where(np.isin(verdict, ["ok", "inaccurate"]) & ~np.isfinite(ratio), 0.0, ratio)
    return verdict, ratio
