"""Cross entropy with options (harness.oracle.options): per-sample values and reductions, certified.

Each value is decided by the cheapest tier that proves it: the plain loss goes through
harness.oracle.core (fast tier, then MPFR) unchanged; with options, the float64 tier of
harness.oracle.options_fast decides 16/32-bit outputs it can prove, and the MPFR tier of
harness.oracle.options_tier decides the rest.
"""

from __future__ import annotations

import torch

from harness.formats import Format
from harness.oracle.core import evaluate
from harness.oracle.options import LossOptions
from harness.oracle.options_fast import certify_samples, fast_losses, fast_reduction
from harness.oracle.options_tier import Sample, reduced_loss, sample_losses
from harness.oracle.value import OracleValue

__all__ = ["loss_values", "reduced_value"]


def _samples(rows: torch.Tensor, targets: torch.Tensor | None, probs: torch.Tensor | None) -> list[Sample]:
    table = rows.detach().cpu().to(torch.float64).numpy()
    if probs is not None:
        y = probs.detach().cpu().to(torch.float64).numpy()
        return [Sample(table[i], None, y[i]) for i in range(len(table))]
    return [Sample(table[i], int(t)) for i, t in enumerate(targets.tolist())]


def _validate(rows: torch.Tensor, targets: torch.Tensor | None, probs: torch.Tensor | None, options) -> None:
    if rows.ndim != 2:
        raise ValueError(f"rows must have shape (N, C), got {tuple(rows.shape)}")
    n, c = rows.shape
    if (targets is None) == (probs is None):
        raise ValueError("give exactly one of targets (class indices) and probs (probability targets)")
    if probs is not None and tuple(probs.shape) != (n, c):
        raise ValueError(f"probability targets must have shape {(n, c)}, got {tuple(probs.shape)}")
    if targets is not None:
        if tuple(targets.shape) != (n,):
            raise ValueError(f"targets must have shape ({n},), got {tuple(targets.shape)}")
        bad = [t for t in targets.tolist() if not (0 <= t < c or t == options.ignore_index)]
        if bad:
            raise ValueError(f"target {bad[0]} out of range for {c} classes (ignore_index {options.ignore_index})")
    options.class_weights(c)  # the number of weights must be C


def loss_values(
    rows: torch.Tensor,
    targets: torch.Tensor | None = None,
    probs: torch.Tensor | None = None,
    options: LossOptions = LossOptions(),
    fmt: Format | None = None,
) -> list[OracleValue]:
    """Per-sample losses of (N, C) rows, each correctly rounded to fmt (default: the rows' format).

    ``targets``: (N,) class indices, or ``probs``: (N, C) probability targets. Ignored
    samples are exactly 0. Raises ValueError for inconsistent shapes or targets.
    """
    from harness.formats import format_of

    _validate(rows, targets, probs, options)
    fmt = fmt or format_of(rows.dtype)
    if probs is None and options.plain:
        live = [i for i, t in enumerate(targets.tolist()) if t != options.ignore_index]
        values = evaluate(rows[live], targets[live], fmt.dtype) if live else []
        out = [OracleValue(0.0, 0.0, True, 0, "special")] * len(targets)
        for i, value in zip(live, values):
            out[i] = value
        return out
    decided: dict[int, OracleValue] = {}
    if fmt.precision < 53 and len(rows):
        fast = fast_losses(rows, targets, probs, options)
        certified, candidate = certify_samples(fast, fmt)
        for i in certified.nonzero()[0].tolist():
            decided[i] = OracleValue(float(candidate[i]), float(fast.loss[i]), True, 53, "float64")
    samples = _samples(rows, targets, probs)
    rest = [i for i in range(len(samples)) if i not in decided]
    for i, value in zip(rest, sample_losses([samples[i] for i in rest], options, fmt)):
        decided[i] = value
    return [decided[i] for i in range(len(samples))]


def reduced_value(
    rows: torch.Tensor,
    targets: torch.Tensor | None = None,
    probs: torch.Tensor | None = None,
    options: LossOptions = LossOptions(reduction="mean"),
    fmt: Format | None = None,
) -> OracleValue:
    """The sum or mean (options.reduction) over samples, the exact value rounded once to fmt."""
    from harness.formats import format_of

    _validate(rows, targets, probs, options)
    fmt = fmt or format_of(rows.dtype)
    samples = _samples(rows, targets, probs)
    if fmt.precision < 53 and len(rows):
        fast = fast_losses(rows, targets, probs, options)
        denominator = None
        if options.reduction == "mean":
            if probs is not None:
                denominator = float(len(samples))
            else:
                live = [t for t in targets.tolist() if t != options.ignore_index]
                weights = options.class_weights(rows.shape[1])
                denominator = float(sum(weights[t] for t in live))  # bounded in fast_reduction
        ok, value, estimate = fast_reduction(fast, denominator, fmt)
        if ok:
            return OracleValue(value, estimate, True, 53, "float64")
    return reduced_loss(samples, options, fmt)
