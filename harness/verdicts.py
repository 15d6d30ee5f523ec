"""Verdicts: is an error a stability bug, a precision shortfall, or fine?

The stability allowance follows the first-order error analysis of the shifted
log-sum-exp algorithm (Blanchard, Higham & Higham 2021, section 4), written for
loss = (m - x_t) + log S with S = sum_j exp(x_j - m) and working unit roundoff u:

  rounding x_t - m, log S and the final subtraction     u * loss each, at most 3 u * loss
  exp of each shifted term (relative u on S)            u
  shifted differences, weighted by their softmax mass   u * sum_j p_j |x_j - m| <= u * ln n
  the sum S, accumulated in at least working precision  u (relative, absorbed in the constant)

so |computed - exact| <= u * (3 * loss + ln n + 2) to first order. The allowance is
SAFETY times that, with u the unit roundoff of the case's dtype. It depends only on
the loss and the class count, both shift-invariant, so a large common offset cannot
widen it (pytorch#11752 then fails by ~log 2 against an allowance of ~1e-6). The
recursive-summation term n*u of the paper is deliberately left out: it makes the
bound vacuous at vocabulary sizes (n u > 1 in bfloat16), and every sound
implementation we know (torch, upcasting kernels) accumulates in float32 or better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.formats import Format

__all__ = ["SAFETY", "VERDICTS", "Policy", "allowance", "judge"]

SAFETY = 2.0  # libm's exp/log are within 1 ulp (not 0.5), plus second-order terms
VERDICTS = ("ok", "ungraded", "inaccurate", "unstable")


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
    return SAFETY * fmt.unit_roundoff * (3.0 * loss + math.log(max(n_classes, 1)) + 2.0)


def judge(
    outcomes: np.ndarray,
    ulps: np.ndarray,
    abs_error: np.ndarray,
    allowed: np.ndarray,
    outputs: np.ndarray,
    special_input: np.ndarray,
    policy: Policy,
) -> tuple[np.ndarray, np.ndarray]:
    """(verdict, error / allowance) per sample.

    Rows with a +inf or NaN logit have no finite answer; NaN and inf are both accepted
    there (torch returns NaN where the limit is +inf), and a finite output is unstable.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(abs_error == 0, 0.0, abs_error / allowed)
    nonfinite_out = ~np.isfinite(outputs)
    verdict = np.select(
        [
            np.isin(outcomes, ["raised", "bad_output"]),
            outcomes == "uncertified",
            special_input & nonfinite_out,
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
