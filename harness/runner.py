"""Run implementations on a case and turn each result into one record (a flat dict).

Records are the only thing reports read. A misbehaving implementation becomes an
outcome in its record; it never stops the run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import numpy as np
import torch

from harness import oracle
from harness.calling.caller import Caller
from harness.calling.registry import Implementation
from harness.grading.metrics import measure
from harness.grading.verdicts import Policy, allowance
from harness.numerics import harness_numerics
from strategies import Case

__all__ = ["RECORD_COLUMNS", "TIMING_COLUMNS", "run_case"]

RECORD_COLUMNS = (
    "case_id", "regime", "dtype", "n_samples", "n_classes", "max_abs_logit", "spread",
    "impl", "reduction", "sample", "output", "output_bits", "oracle", "exact", "abs_error", "rel_error",
    "ulps", "bits", "outcome", "verdict", "allowance", "allowance_ratio",
    "oracle_certified", "oracle_precision", "oracle_method", "message", "impl_seconds", "compile_seconds",
    "oracle_seconds",
)  # fmt: skip
# Wall-clock columns: the only ones that differ between two runs of the same command.
TIMING_COLUMNS = ("impl_seconds", "compile_seconds", "oracle_seconds")


def _logit_stats(case: Case) -> dict:
    """Largest finite |logit| and the finite spread (max - min) of the whole case."""
    x = case.logits
    finite = torch.isfinite(x)
    if not bool(finite.any()):
        return {"max_abs_logit": math.nan, "spread": math.nan}
    top = torch.where(finite, x, torch.tensor(-math.inf, dtype=x.dtype)).max().item()
    bottom = torch.where(finite, x, torch.tensor(math.inf, dtype=x.dtype)).min().item()
    return {"max_abs_logit": max(abs(top), abs(bottom)), "spread": top - bottom}


class _LazyOracle:
    """Per-sample and mean oracle values for a case, each computed once, on first use."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.seconds = 0.0
        self._per_sample: list[oracle.OracleValue] | None = None
        self._mean: oracle.OracleValue | None = None

    def _timed(self, compute):
        start = time.perf_counter()
        try:
            return compute()
        finally:
            self.seconds += time.perf_counter() - start

    def per_sample(self) -> list[oracle.OracleValue]:
        if self._per_sample is None:
            self._per_sample = self._timed(lambda: oracle.evaluate(self.case.row_logits, self.case.row_targets))
        return self._per_sample

    def mean(self) -> oracle.OracleValue:
        if self._mean is None:
            self._mean = self._timed(lambda: oracle.mean_loss(self.case.row_logits, self.case.row_targets))
        return self._mean


def _failure(outcome: str, message: str) -> dict:
    nan = math.nan
    return {
        "sample": -1, "output": nan, "output_bits": "", "oracle": nan, "exact": nan, "abs_error": math.inf,
        "rel_error": math.inf, "ulps": nan, "bits": nan, "outcome": outcome, "message": message,
        "verdict": "unstable", "allowance": nan, "allowance_ratio": math.inf,
    }  # fmt: skip


def _special_rows(case: Case) -> np.ndarray:
    """Rows holding +inf or NaN: no finite answer exists there."""
    rows = case.row_logits
    return (torch.isnan(rows) | torch.isposinf(rows)).any(dim=1).numpy()


def _allowances(values: list[oracle.OracleValue], case: Case, mean: bool) -> np.ndarray:
    exact = np.array([v.exact for v in values])
    if not mean:
        return allowance(exact, case.n_classes, case.format)
    # the mean: the rows' allowances averaged, plus the rounding of an N-term sum
    n = len(values)
    with np.errstate(over="ignore"):
        per_row = allowance(exact, case.n_classes, case.format).mean()
        return np.array([per_row + case.format.unit_roundoff * math.log2(max(n, 1) * 2) * np.abs(exact).mean()])


def run_case(
    case: Case,
    implementations: Iterable[Implementation],
    policy: Policy = Policy(),
    caller: Caller | None = None,
) -> list[dict]:
    """One record per implementation that supports the case (its dtype, and its layout).

    Samples are numbered in the row-major order of the targets (see Case.row_logits).
    Implementations run in their sandbox processes (``caller``, default a fresh Caller
    whose workers go back to the pool afterwards); the oracle and the grading run here,
    under ``harness_numerics`` (IEEE arithmetic whatever the calling script set).
    """
    if caller is None:
        with Caller() as own:
            return run_case(case, implementations, policy, own)
    with harness_numerics():
        return _run_case(case, implementations, policy, caller)


def _run_case(case: Case, implementations: Iterable[Implementation], policy: Policy, caller: Caller) -> list[dict]:
    lazy = _LazyOracle(case)
    special = _special_rows(case)
    shared = {
        "case_id": case.case_id, "regime": case.regime, "dtype": case.format.name,
        "n_samples": case.n_samples, "n_classes": case.n_classes, **_logit_stats(case),
    }  # fmt: skip
    records = []
    for impl in implementations:
        if not impl.supports_case(case):
            continue
        called = caller.call(impl, case)
        output, seconds = called.output, called.seconds
        reduction = "none"
        if called.failure:
            metrics = _failure(called.failure, called.message)
        elif output.shape != case.targets.shape:  # a scalar or (1,): the mean (the caller checked)
            reduction = "mean"
            values = lazy.per_sample()
            # inf is an acceptable mean when a row's loss, or the sum of the rows' losses
            # taken before dividing, overflows the dtype
            with np.errstate(over="ignore"):
                total = float(np.abs([v.exact for v in values]).sum())
            overflowing_row = np.array([any(math.isinf(v.value) for v in values) or total > case.format.max_finite])
            metrics = measure(
                output, [lazy.mean()], case.dtype, allowed=_allowances(values, case, mean=True),
                special_input=special.any(keepdims=True), accept_nonfinite=overflowing_row, policy=policy,
            )  # fmt: skip
        else:
            values = lazy.per_sample()
            allowed = _allowances(values, case, mean=False)
            metrics = measure(
                output.reshape(-1), values, case.dtype, allowed=allowed, special_input=special, policy=policy
            )
        used = lazy.per_sample() if reduction == "none" else [lazy.mean()]
        worst = used[max(metrics["sample"], 0)]
        records.append(
            {
                **shared,
                "impl": impl.name,
                "reduction": reduction,
                "message": called.message,  # a failure's, or how an odd output was read
                **metrics,
                "oracle_certified": all(v.certified for v in used),
                "oracle_precision": worst.precision,
                "oracle_method": worst.method,
                "impl_seconds": seconds,
                "compile_seconds": called.compile_seconds,
                "oracle_seconds": lazy.seconds,
            }
        )
    return records
