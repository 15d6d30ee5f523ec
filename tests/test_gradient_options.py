"""Gradients under options: the allowance passes sound soft-capping and z-loss backwards, flags the bugs.

Each output is graded as check grades it: harness.grading.expected.Expectations.gradient
(the certified oracle, the allowance, the accepted non-finite rows) and
harness.grading.metrics.measure. Inputs are drawn from fixed seeds (logits up to 1e4 in
magnitude, ties, −inf, soft caps 1–50, z-loss 1e-4–1) plus the cases that once failed:
tanh rounding to 1 (sech² computed as 1 − tanh² is 0), a z-loss log-sum-exp of −5,257
(exp(x − lse) errs by u |lse|), an underflowing p_j times 2 z lse = 6,000, a weighted sum
whose upstream factor overflows float32, and a weighted mean whose g / W underflows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.formats import FORMATS
from harness.grading.expected import Expectations
from harness.grading.metrics import measure
from harness.oracle.options import LossOptions
from strategies import Case
from strategies.contract import Contract
from tests.implementations import gradient_options as kernels

DTYPES = tuple(FORMATS)
NAMES = frozenset({"weight", "reduction", "label_smoothing", "z_loss", "softcap"})


def grade(fn, rows, targets, dtype: str, options: LossOptions, upstream) -> dict:
    """measure() of fn's gradient with respect to ``rows`` (values of ``dtype``) against the oracle."""
    torch_dtype = FORMATS[dtype].dtype
    x = torch.as_tensor(rows, dtype=torch.float64).to(torch_dtype)
    t = torch.as_tensor(targets, dtype=torch.int64)
    per_sample = LossOptions(weight=options.weight, label_smoothing=options.label_smoothing,
                             z_loss=options.z_loss, softcap=options.softcap)  # fmt: skip
    contract = Contract(NAMES, per_sample)
    case = Case(x, t, "options", contract)
    leaf = x.clone().requires_grad_()
    weight = None if options.weight is None else torch.tensor(options.weight, dtype=torch.float64)
    out = fn(leaf, t, weight=weight, reduction=options.reduction, label_smoothing=options.label_smoothing,
             z_loss=options.z_loss, softcap=options.softcap)  # fmt: skip
    up = torch.as_tensor(upstream, dtype=torch.float64).to(torch_dtype).reshape(out.shape)
    out.backward(up)
    expected = Expectations(case).gradient(contract, options.reduction, up.double(), case.format)
    return measure(leaf.grad, expected.values, torch_dtype, allowed=expected.allowed,
                   special_input=expected.special, accept_nonfinite=expected.accept_nonfinite)  # fmt: skip


def drawn(seed: int, dtype: str, kind: str, count: int) -> list[tuple]:
    """(rows, targets, options, upstream) with soft-capping (kind "cap") or z-loss ("z"), 3 rows each."""
    rng = np.random.default_rng(seed)
    torch_dtype = FORMATS[dtype].dtype
    out = []
    for _ in range(count):
        n = int(rng.choice([2, 3, 7, 33]))
        rows = []
        for _ in range(3):
            r = rng.standard_normal(n) * float(rng.choice([1.0, 10.0, 100.0, 1000.0, 1e4]))
            if rng.random() < 0.3:
                r[rng.integers(n)] = -math.inf
            if rng.random() < 0.2:
                r[:] = r[0]
            if rng.random() < 0.3:
                r[rng.integers(n)] = float(rng.choice([-1e4, 1e4, 300.0, -300.0]))
            rows.append(r)
        rows = torch.tensor(np.array(rows)).to(torch_dtype).double()
        targets = [int(rng.integers(n)) for _ in range(3)]
        options = LossOptions(
            weight=tuple(float(v) for v in rng.choice([0.5, 2.0, 1e3], size=n)) if rng.random() < 0.3 else None,
            label_smoothing=float(rng.choice([0.0, 0.1])),
            z_loss=float(rng.choice([1e-4, 1e-2, 1.0])) if kind == "z" else 0.0,
            softcap=float(rng.choice([1.0, 5.0, 30.0, 50.0])) if kind == "cap" else None,
            reduction=str(rng.choice(["none", "sum", "mean"])),
        )
        if options.reduction == "none":
            upstream = [float(v) for v in rng.choice([1.0, 0.5, -2.0, 1e-3, 1e3, 0.0], size=3)]
        else:
            upstream = float(rng.choice([1.0, -2.0, 1e-3, 1e3]))
        out.append((rows, targets, options, upstream))
    return out


@pytest.mark.parametrize("kind", ["cap", "z"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sound_option_backwards_pass_and_the_bugs_are_flagged(dtype, kind):
    bug = kernels.cap_gradient_forgets_sech2 if kind == "cap" else kernels.z_loss_detached
    caught = 0
    cases = drawn(11, dtype, kind, 6)
    for rows, targets, options, upstream in cases:
        for name in kernels.SOUND:
            result = grade(getattr(kernels, name), rows, targets, dtype, options, upstream)
            assert result["verdict"] in ("ok", "inaccurate"), (name, rows.tolist(), targets, options, upstream, result)
        caught += grade(bug, rows, targets, dtype, options, upstream)["verdict"] == "unstable"
    assert caught >= len(cases) - 1, f"{bug.__name__} flagged on {caught} of {len(cases)}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_capping_where_tanh_rounds_to_one(dtype):
    """x / c = 33: tanh rounds to 1 in float32, so 1 − tanh² is 0 where sech² = 5e-29: the usual
    backward (torch's) is only absolutely accurate there and must pass; forgetting sech² must not."""
    rows = [[1000.0, 0.0, -5.0], [40.0, 45.0, -1000.0]]
    options = LossOptions(softcap=30.0, reduction="none")
    for name in kernels.SOUND:
        assert grade(getattr(kernels, name), rows, [1, 0], dtype, options, [1.0, -2.0])["verdict"] != "unstable"
    assert grade(kernels.cap_gradient_forgets_sech2, rows, [1, 0], dtype, options, [1.0, -2.0])["verdict"] == "unstable"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_z_loss_through_the_rounded_log_sum_exp(dtype):
    """lse = −5,256 (three ties): exp(x − lse) errs by about u |lse|, times 2 z lse; and an
    underflowing p_j = e^-104 times 2 z lse = 6,000."""
    ties = [[-5257.552734375] * 3]
    options = LossOptions(weight=(1000.0, 0.5, 0.5), label_smoothing=0.1, z_loss=1.0, reduction="none")
    underflow = [[3000.0, 2896.0]]
    z_only = LossOptions(z_loss=1.0, reduction="none")
    for name in kernels.SOUND:
        fn = getattr(kernels, name)
        assert grade(fn, ties, [0], dtype, options, [1.0])["verdict"] != "unstable", name
        assert grade(fn, underflow, [0], dtype, z_only, [1e3])["verdict"] != "unstable", name
    assert grade(kernels.z_loss_detached, ties, [0], dtype, options, [1.0])["verdict"] == "unstable"


def test_an_upstream_factor_beyond_float32_accepts_inf_and_nan():
    """w_t g = 1e37 · 2^20 overflows float32: torch's nll_loss backward forms −w_t g first and the
    log-softmax backward then gives inf − inf = NaN; every usual formula overflows there."""
    rows = [[3.0, 0.0, -2.0], [1.0, 2.0, 0.5]]
    options = LossOptions(weight=(1e37, 3e37, 1.0), reduction="sum")
    result = grade(_torch_cross_entropy, rows, [0, 1], "float32", options, 2.0**20)
    assert result["verdict"] == "ok" and result["outcome"] in ("accepted_nan", "accepted_inf", "exact")
    moderate = grade(_torch_cross_entropy, rows, [0, 1], "float32", options, 2.0**-20)
    assert moderate["verdict"] != "unstable"  # the factor fits: graded as usual


def test_a_weighted_mean_whose_factor_underflows_is_not_unstable():
    """g / W = 2^-100 / 4e36 underflows float32 (torch returns −0 where the gradient is −1e-32)."""
    rows = [[3.0, 0.0, -2.0], [1.0, 2.0, 0.5]]
    options = LossOptions(weight=(1e36, 3e36, 1.0), reduction="mean")
    assert grade(_torch_cross_entropy, rows, [0, 1], "float32", options, 2.0**-100)["verdict"] != "unstable"


def _torch_cross_entropy(logits, targets, weight=None, reduction="mean", label_smoothing=0.0, **_):
    w = None if weight is None else weight.to(logits.dtype)
    return F.cross_entropy(logits, targets, weight=w, reduction=reduction, label_smoothing=label_smoothing)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_autograd_through_an_undetached_max_shift_passes(dtype):
    """The seed notebook's stable version, x − max x with the max not detached: autograd sends
    −Σ_k G_k (0 exactly, n rounded terms) to the row's maximum, an absolute error of about
    n u there. It must pass; forgetting the one-hot (the same forward) must not."""
    from harness.calling.implementations import stable

    def forgets_one_hot(logits, targets):
        shifted = logits - logits.max(dim=1, keepdim=True).values
        log_sum_exp = torch.log(torch.exp(shifted).sum(dim=1, keepdim=True))
        loss = -(shifted - log_sum_exp)[torch.arange(logits.shape[0]), targets]
        return loss.detach() + (log_sum_exp.squeeze(1) - log_sum_exp.squeeze(1).detach())

    rng = np.random.default_rng(3)
    options = LossOptions(reduction="none")
    for n in (33, 237, 1000):
        rows = rng.standard_normal((4, n)) * float(rng.choice([0.01, 1.0]))
        rows = torch.tensor(rows).to(FORMATS[dtype].dtype).double()
        targets = [int(v) for v in rng.integers(0, n, size=4)]
        upstream = [1.0, -3.0, 2.0**20, 0.5]
        assert grade(_plain(stable), rows, targets, dtype, options, upstream)["verdict"] != "unstable", n
        assert grade(_plain(forgets_one_hot), rows, targets, dtype, options, upstream)["verdict"] == "unstable"


def _plain(fn):
    return lambda logits, targets, **_: fn(logits, targets)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_z_loss_past_the_working_range_accepts_inf_and_nan(dtype):
    """lse = 1.7e38: autograd of z · lse² forms lse² (inf in float32): the forward is inf, and the
    gradient may be inf or NaN where the exact one (2 z lse p_j) is finite."""
    rows = [[1.7e38, 0.0, -3.0]]
    options = LossOptions(z_loss=1e-4, reduction="none")
    for name in kernels.SOUND:
        assert grade(getattr(kernels, name), rows, [1], dtype, options, [256.0])["verdict"] != "unstable", name


@pytest.mark.parametrize("weights", [None, (0.0, 1.0, 1.0)])
def test_a_mean_over_no_weight_accepts_zero_and_nan_gradients(weights):
    """All samples ignored, or zero weight at every target: the mean is 0/0 = NaN; the oracle's
    gradient is 0 (no row contributes: torch returns 0) and NaN is accepted too."""
    rows = [[1.0, 0.0, 2.0], [0.5, 0.5, 0.0]]
    targets = [-100, -100] if weights is None else [0, 0]
    options = LossOptions(weight=weights, reduction="mean")

    def returns_nan(logits, targets, weight=None, reduction="mean", **_):
        loss = _torch_cross_entropy(logits, targets, weight=weight, reduction=reduction)
        return loss + (logits - logits.detach()).sum() * torch.nan  # the same value, a NaN gradient

    for fn in (_torch_cross_entropy, kernels.autograd_tanh_cap, returns_nan):
        result = grade(fn, rows, targets, "float32", options, 1.0)
        assert result["verdict"] == "ok", (fn.__name__, result)


def test_z_loss_past_float64s_range_accepts_inf_and_nan():
    """lse = 2**1023 in float64 with g = 256 (g' = 128): g' lse is inf in autograd of z · lse², and inf · p_j = NaN."""
    rows = [[2.0**1023, 1.0, 1.0], [0.0, 1.0, 2.0]]
    options = LossOptions(z_loss=1e-4, reduction="mean")
    for name in kernels.SOUND:
        assert grade(getattr(kernels, name), rows, [1, 0], "float64", options, 256.0)["verdict"] != "unstable", name
