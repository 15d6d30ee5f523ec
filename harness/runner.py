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
from strategies.upstream import upstream_gradients, upstream_scalar

__all__ = ["QUANTITIES", "RECORD_COLUMNS", "TIMING_COLUMNS", "run_case"]

# What a record grades: the loss (the implementation's output) or its gradient with respect to the logits.
QUANTITIES = ("loss", "grad")

RECORD_COLUMNS = (
    "case_id", "regime", "dtype", "n_samples", "n_classes", "max_abs_logit", "spread",
    "impl", "quantity", "op", "reduction", "output_dtype", "options", "weighted", "ignore_index", "n_ignored",
    "label_smoothing", "z_loss", "softcap", "soft_targets",
    "sample", "element", "upstream", "output", "output_bits", "oracle", "exact", "abs_error", "rel_error",
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
    quantities: Iterable[str] = ("loss",),
) -> list[dict]:
    """One record per (implementation that supports the case, quantity).

    ``quantities``: "loss" grades the output; "grad" back-propagates a cross-entropy
    output with the case's upstream gradients (strategies.upstream) and grades the
    gradient with respect to the logits (an implementation that is not differentiable
    gets no grad record; its loss record's message says why). Samples are numbered in the
    row-major order of the targets (see Case.row_logits); a grad record's ``sample`` and
    ``element`` are the worst element's row and class. Implementations run in their
    sandbox processes (``caller``, default a fresh Caller whose workers go back to the pool
    afterwards); the oracle and the grading run here, under ``harness_numerics`` (IEEE
    arithmetic whatever the calling script set). Raises ValueError for an unknown quantity.
    """
    quantities = tuple(quantities)
    unknown = sorted(set(quantities) - set(QUANTITIES))
    if unknown or not quantities:
        raise ValueError(f"unknown quantity {unknown[0] if unknown else None!r}; expected some of loss, grad")
    if caller is None:
        with Caller() as own:
            return run_case(case, implementations, policy, own, quantities)
    with harness_numerics():
        return _run_case(case, implementations, policy, caller, quantities)


def _run_case(
    case: Case, implementations: Iterable[Implementation], policy: Policy, caller: Caller, quantities: tuple[str, ...]
) -> list[dict]:
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
        gradients = "grad" in quantities and impl.op == "cross_entropy"
        called = caller.call(impl, case, gradients=gradients)
        output = called.output
        columns = {"reduction": "none", "output_dtype": case.format.name, **_contract_columns(impl, contract)}
        timing = {"impl_seconds": called.seconds, "compile_seconds": called.compile_seconds}
        if called.failure:
            metrics, used = _failure(called.failure, called.message), None
        else:
            fmt_out = format_of(output.dtype)
            expected = _expected(expectations, impl, case, contract, output)(fmt_out)
            columns.update(reduction=expected.reduction, output_dtype=fmt_out.name)
            metrics, used = _graded(output, expected, policy)
        message = called.message  # a failure's, or how an odd output was read
        if gradients and not called.failure and called.grad is None and not called.grad_failure:
            message = "; ".join(m for m in (message, called.grad_message) if m)
        differentiable = called.grad is not None or called.grad_failure is not None
        # a forward that failed, or one with no gradient, is graded on its forward even under grad-only
        if "loss" in quantities or not gradients or called.failure or not differentiable:
            records.append({**shared, "impl": impl.name, "quantity": "loss", **columns, "message": message,
                            "upstream": math.nan, **metrics, **_provenance(used, metrics), **timing,
                            "oracle_seconds": expectations.seconds})  # fmt: skip
        if gradients and not called.failure and differentiable:
            records.append(_grad_record(shared, impl, columns, called, expectations, case, contract, policy, timing))
    return records


def _graded(output: torch.Tensor, expected, policy: Policy) -> tuple[dict, object]:
    metrics = measure(
        output, expected.values, output.dtype, allowed=expected.allowed, special_input=expected.special,
        accept_nonfinite=expected.accept_nonfinite, policy=policy,
    )  # fmt: skip
    sample, element = divmod(metrics["sample"], expected.elements)
    metrics.update(sample=sample, element=element if expected.elements > 1 else -1)
    return metrics, expected.values


def _grad_record(shared, impl, columns, called, expectations, case, contract, policy, timing) -> dict:
    """The record of the gradient with respect to the logits (quantity "grad")."""
    columns = {**columns, "output_dtype": case.format.name}
    upstream = upstream_gradients(case)
    reduction = columns["reduction"]
    if reduction != "none":
        upstream = torch.tensor([upstream_scalar(case)], dtype=torch.float64)
    if called.grad_failure:
        metrics, used = _failure(called.grad_failure, called.grad_message), None
    else:
        grad = called.grad
        # the upstream as the implementation received it: cast to the output's dtype
        upstream = upstream.to(case.dtype).to(called.output.dtype).double()
        fmt_grad = format_of(grad.dtype)
        rows = grad.movedim(1, -1).reshape(-1, case.n_classes) if grad.ndim > 2 else grad
        expected = expectations.gradient(contract, reduction, upstream, fmt_grad)
        metrics, used = _graded(rows, expected, policy)
        columns["output_dtype"] = fmt_grad.name
    worst = max(metrics["sample"], 0)
    return {**shared, "impl": impl.name, "quantity": "grad", **columns, "message": called.grad_message,
            "upstream": float(upstream.reshape(-1)[min(worst, upstream.numel() - 1)]), **metrics,
            **_provenance(used, metrics), **timing, "oracle_seconds": expectations.seconds}  # fmt: skip


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
