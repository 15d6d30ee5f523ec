"""Run implementations on a case and turn each result into one record (a flat dict).

Records are the only thing reports read. A misbehaving implementation becomes an
outcome in its record; it never stops the run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from harness.calling.caller import Caller
from harness.calling.registry import Implementation
from harness.formats import format_of
from harness.grading.expected import Expectations
from harness.grading.metrics import measure
from harness.grading.verdicts import Policy
from harness.numerics import harness_numerics
from harness.oracle.family import OracleArray
from harness.oracle.options import LossOptions
from strategies import Case
from strategies.contract import Contract

__all__ = ["RECORD_COLUMNS", "TIMING_COLUMNS", "run_case"]

RECORD_COLUMNS = (
    "case_id", "regime", "dtype", "n_samples", "n_classes", "max_abs_logit", "spread",
    "impl", "op", "reduction", "output_dtype", "options", "weighted", "ignore_index", "n_ignored",
    "label_smoothing", "z_loss", "softcap", "soft_targets",
    "sample", "element", "output", "output_bits", "oracle", "exact", "abs_error", "rel_error",
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


def _failure(outcome: str, message: str) -> dict:
    nan = math.nan
    return {
        "sample": -1, "element": -1, "output": nan, "output_bits": "", "oracle": nan, "exact": nan,
        "abs_error": math.inf, "rel_error": math.inf, "ulps": nan, "bits": nan, "outcome": outcome,
        "message": message, "verdict": "unstable", "allowance": nan, "allowance_ratio": math.inf,
    }  # fmt: skip


def _contract_columns(impl: Implementation, contract: Contract | None) -> dict:
    """The options this implementation was called with, one column each (defaults where not exercised)."""
    options = contract.options if contract is not None else LossOptions()
    described = contract is not None and (contract.names or contract.probs is not None)
    return {
        "op": impl.op,
        "options": contract.describe() if described else "",
        "weighted": options.weight is not None,
        "ignore_index": options.ignore_index if contract is not None and "ignore_index" in contract.names else None,
        "n_ignored": len(contract.ignored) if contract is not None else 0,
        "label_smoothing": options.label_smoothing,
        "z_loss": options.z_loss,
        "softcap": options.softcap,
        "soft_targets": contract is not None and contract.probs is not None,
    }


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
    expectations = Expectations(case)
    shared = {
        "case_id": case.case_id, "regime": case.regime, "dtype": case.format.name,
        "n_samples": case.n_samples, "n_classes": case.n_classes, **_logit_stats(case),
    }  # fmt: skip
    records = []
    for impl in implementations:
        if not impl.supports_case(case):
            continue
        contract = None
        if impl.op == "cross_entropy" and case.contract is not None:
            contract = case.contract.restricted(impl.options)
        called = caller.call(impl, case)
        output = called.output
        columns = {"reduction": "none", "output_dtype": case.format.name, **_contract_columns(impl, contract)}
        if called.failure:
            metrics, used = _failure(called.failure, called.message), None
        else:
            fmt_out = format_of(output.dtype)
            expected = _expected(expectations, impl, case, contract, output)
            expected = expected(fmt_out)
            metrics = measure(
                output, expected.values, output.dtype, allowed=expected.allowed, special_input=expected.special,
                accept_nonfinite=expected.accept_nonfinite, policy=policy,
            )  # fmt: skip
            sample, element = divmod(metrics["sample"], expected.elements)
            metrics.update(sample=sample, element=element if expected.elements > 1 else -1)
            columns.update(reduction=expected.reduction, output_dtype=fmt_out.name)
            used = expected.values
        records.append(
            {
                **shared,
                "impl": impl.name,
                **columns,
                "message": called.message,  # a failure's, or how an odd output was read
                **metrics,
                **_provenance(used, metrics),
                "impl_seconds": called.seconds,
                "compile_seconds": called.compile_seconds,
                "oracle_seconds": expectations.seconds,
            }
        )
    return records


def _expected(expectations: Expectations, impl: Implementation, case: Case, contract: Contract | None, output):
    """A function of the output's format giving what the output is graded against."""
    if impl.op != "cross_entropy":
        return lambda fmt: expectations.family(impl.op, fmt)
    reduction = "none"
    if tuple(output.shape) != tuple(case.targets.shape):  # a scalar or (1,): reduced (the caller checked)
        reduction = "mean"
        if contract is not None and "reduction" in contract.names:
            reduction = contract.options.reduction
    return lambda fmt: expectations.loss(contract, reduction, fmt)


def _provenance(values, metrics: dict) -> dict:
    """Whether every oracle value used was certified, and how the worst element's was decided."""
    if values is None:
        return {"oracle_certified": True, "oracle_precision": 0, "oracle_method": ""}  # no value was needed
    if isinstance(values, OracleArray):
        flat = max(metrics["sample"], 0) * (values.value.shape[1] if values.value.ndim == 2 else 1)
        flat += max(metrics["element"], 0)
        return {
            "oracle_certified": bool(values.certified.all()),
            "oracle_precision": int(values.precision.reshape(-1)[flat]),
            "oracle_method": str(values.method.reshape(-1)[flat]),
        }
    worst = values[max(metrics["sample"], 0)]
    return {
        "oracle_certified": all(v.certified for v in values),
        "oracle_precision": worst.precision,
        "oracle_method": worst.method,
    }
