"""Overflow and underflow demonstrations: thresholds found by search, not read from a table.

For each dtype, bisection over the format's own values finds the smallest logit at which
the naive softmax-then-log returns inf or NaN, and the logit below which exp underflows
to 0; both are set beside the theoretical thresholds (ln of the largest finite value,
ln of half the smallest subnormal). The stable version and torch run on the same inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness import oracle
from harness.calling.implementations import naive, stable, torch_cross_entropy
from harness.formats import FORMATS, Format, ulp_distance

__all__ = ["METHODS", "Threshold", "dominant_case", "find_thresholds", "log1p_shifted", "loss_curves", "panels"]

# The methods as a student knows them (no project jargon), in drawing order.
METHODS = {
    "naive": "naive: softmax, then log",
    "stable": "max-shifted log-sum-exp",
    "torch": "torch.nn.functional.cross_entropy",
    "log1p": "max-shifted, with log1p",
}


@dataclass(frozen=True)
class Threshold:
    dtype: str
    naive_breaks_at: float  # smallest logit x where naive([x, 0]) is not finite
    theory_overflow: float  # ln of the overflow boundary
    exp_underflows_below: float  # exp(x) rounds to 0 for every format value x below this
    theory_underflow: float
    ulp_at_overflow: float
    ulp_at_underflow: float
    stable_loss: float  # on [naive_breaks_at, 0] with target 1
    torch_loss: float
    oracle_loss: float
    stable_ulps: float
    torch_ulps: float


def _value(fmt: Format, ordinal: int) -> float:
    return torch.tensor(ordinal, dtype=torch.int64).to(fmt.int_dtype).view(fmt.dtype).item()


def _ordinal(fmt: Format, value: float) -> int:
    return int(torch.tensor(value, dtype=fmt.dtype).view(fmt.int_dtype).item())


def _first_true(fmt: Format, lo: float, hi: float, predicate) -> float:
    """Smallest positive format value in [lo, hi] where predicate holds (predicate monotone, true at hi)."""
    a, b = _ordinal(fmt, lo), _ordinal(fmt, hi)
    while a < b:
        mid = (a + b) // 2
        if predicate(_value(fmt, mid)):
            b = mid
        else:
            a = mid + 1
    return _value(fmt, a)


def _ulp(fmt: Format, value: float) -> float:
    """Spacing of the format just above |value| (value rounded into the format first)."""
    ordinal = _ordinal(fmt, abs(value))
    return _value(fmt, ordinal + 1) - _value(fmt, ordinal)


def find_thresholds(fmt: Format) -> Threshold:
    targets = torch.tensor([1])

    def naive_breaks(x: float) -> bool:
        return not torch.isfinite(naive(torch.tensor([[x, 0.0]], dtype=fmt.dtype), targets)).all()

    breaks = _first_true(fmt, 1.0, fmt.max_finite, naive_breaks)

    def exp_positive(magnitude: float) -> bool:  # true once -magnitude is small enough... searched as |x|
        return torch.exp(torch.tensor(-magnitude, dtype=fmt.dtype)).item() == 0.0

    # |x| from which exp(-|x|) is 0: values below -underflows_from underflow
    underflows_from = _first_true(fmt, 1.0, fmt.max_finite, exp_positive)
    below = -_value(fmt, _ordinal(fmt, underflows_from) - 1)  # the last x whose exp is still positive
    logits = torch.tensor([[breaks, 0.0]], dtype=fmt.dtype)
    truth = oracle.cross_entropy(logits, targets, fmt.dtype)
    outputs = {name: fn(logits, targets) for name, fn in (("stable", stable), ("torch", torch_cross_entropy))}
    return Threshold(
        fmt.name, breaks, fmt.exp_overflow, below, fmt.exp_underflow, _ulp(fmt, fmt.exp_overflow),
        _ulp(fmt, fmt.exp_underflow), outputs["stable"].item(), outputs["torch"].item(), truth.item(),
        float(ulp_distance(outputs["stable"], truth)[0]), float(ulp_distance(outputs["torch"], truth)[0]),
    )  # fmt: skip


def dominant_case(fmt: Format = FORMATS["float32"], gap: float = 20.0) -> dict:
    """One dominant logit at the target: the true loss log1p(exp(-gap)) is tiny, but 1 + tiny rounds to 1."""
    logits = torch.tensor([[gap, 0.0]], dtype=fmt.dtype)
    targets = torch.tensor([0])
    (value,) = oracle.evaluate(logits, targets)
    return {
        "dtype": fmt.name, "logits": [gap, 0.0], "target": 0, "oracle": value.value, "exact": value.exact,
        "stable": stable(logits, targets).item(), "torch": torch_cross_entropy(logits, targets).item(),
        "naive": naive(logits, targets).item(),
    }  # fmt: skip


def loss_curves(fmt: Format, scales: list[float]) -> dict[str, list[float]]:
    """Loss of [s, 0] with target 1 (exactly softplus(s)) for each scale s, per method and the oracle."""
    curves: dict[str, list[float]] = {"scale": [], "naive": [], "stable": [], "torch": [], "oracle": []}
    targets = torch.tensor([1])
    for s in scales:
        logits = torch.tensor([[s, 0.0]], dtype=torch.float64).to(fmt.dtype)
        if not math.isfinite(logits[0, 0].item()):
            continue
        curves["scale"].append(logits[0, 0].item())
        for name, fn in (("naive", naive), ("stable", stable), ("torch", torch_cross_entropy)):
            curves[name].append(fn(logits, targets).item())
        curves["oracle"].append(oracle.cross_entropy(logits, targets, fmt.dtype).item())
    return curves


def log1p_shifted(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(m - x_t) + log1p(sum of exp(x_j - m) over j other than the maximum), all in the logits' dtype.

    The max-shifted sum is 1 + s with s the other terms; log1p(s) keeps a tiny s that
    1 + s would round away (pytorch#113708). Shapes: (N, C) logits, (N,) targets.
    """
    m, top = logits.max(dim=1, keepdim=True)
    shifted = torch.exp(logits - m)
    others = shifted.scatter(1, top, torch.zeros_like(top, dtype=logits.dtype)).sum(dim=1)
    picked = logits.gather(1, targets[:, None])[:, 0]
    return (m[:, 0] - picked) + torch.log1p(others)


def _exact(logits: torch.Tensor, targets: torch.Tensor) -> float:
    (value,) = oracle.evaluate(logits, targets)
    return value.exact


def panels(fmt: Format, scales: list[float]) -> dict[str, dict]:
    """The demo's three stories for one dtype, each over the scales s representable in it.

    - ``overflow``: logits [s, 0], target 1 (loss = softplus(s)); intermediate exp(s)
      in the dtype, which naive computes, against the format's largest finite value.
    - ``underflow``: logits [-s, 0], target 0 (loss = s + log1p(exp(-s))); intermediate
      exp(-s), which naive divides, against the smallest subnormal.
    - ``dominant``: logits [s, 0], target 0 (loss = log1p(exp(-s)), tiny); the shifted
      sum 1 + exp(-s) rounds to 1 once exp(-s) <= u.

    Each holds ``s``, ``exact`` (float64 value of the exact loss), ``oracle`` (correctly
    rounded to the dtype) and one list per method of METHODS that applies (float
    outputs, inf/NaN kept); overflow and underflow also hold ``intermediate``.
    """
    stories = {
        "overflow": (lambda s: [s, 0.0], 1, ("naive", "stable", "torch"), 1.0),
        "underflow": (lambda s: [-s, 0.0], 0, ("naive", "stable", "torch"), -1.0),
        "dominant": (lambda s: [s, 0.0], 0, ("naive", "stable", "torch", "log1p"), None),
    }
    functions = {"naive": naive, "stable": stable, "torch": torch_cross_entropy, "log1p": log1p_shifted}
    result = {}
    for story, (row, target, methods, sign) in stories.items():
        data: dict[str, list[float]] = {"s": [], "exact": [], "oracle": [], **{m: [] for m in methods}}
        if sign is not None:
            data["intermediate"] = []
        targets = torch.tensor([target])
        for s in scales:
            value = torch.tensor(s, dtype=torch.float64).to(fmt.dtype).item()
            if not math.isfinite(value) or value in data["s"]:
                continue
            logits = torch.tensor([row(value)], dtype=torch.float64).to(fmt.dtype)
            data["s"].append(value)
            data["exact"].append(_exact(logits, targets))
            data["oracle"].append(oracle.cross_entropy(logits, targets, fmt.dtype).item())
            for name in methods:
                data[name].append(functions[name](logits, targets).item())
            if sign is not None:
                data["intermediate"].append(torch.exp(torch.tensor(sign * value, dtype=fmt.dtype)).item())
        result[story] = data
    return result
