"""The certified oracle for cross entropy with options, reductions and the softmax family.

Checked against closed forms, against an independent 3000-bit mpmath evaluation of the
defining formulas (harness.oracle.options), against itself from a much higher start,
against torch where torch agrees, and at rounding midpoints.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.formats import FORMATS, round_scaled
from harness.oracle.family import family
from harness.oracle.losses import loss_values, reduced_value
from harness.oracle.options import LossOptions
from harness.oracle.options_tier import Sample, sample_losses

F16, BF16, F32, F64 = (FORMATS[n] for n in ("float16", "bfloat16", "float32", "float64"))
INF = math.inf


def _round(value: mpmath.mpf, fmt) -> float:
    """Correct rounding of an mpmath value to fmt, exactly (no double rounding through float64)."""
    if mpmath.isnan(value):
        return math.nan
    if mpmath.isinf(value):
        return math.copysign(INF, value)
    sign, man, exp, _ = value._mpf_
    magnitude = round_scaled(int(man), int(exp), fmt) if man else 0.0
    return -magnitude if sign else magnitude


def reference(x, target=None, probs=None, options=LossOptions(), prec=3000) -> mpmath.mpf:
    """The defining formula, term by term, at prec bits (finite rows; masked terms of zero coefficient skipped)."""
    with mpmath.workprec(prec):
        n = len(x)
        cap = options.softcap
        xs = []
        for v in x:
            if cap is None:
                xs.append(mpmath.mpf(v))
            elif math.isinf(v):
                xs.append(mpmath.mpf(math.copysign(cap, v)))
            else:
                xs.append(cap * mpmath.tanh(mpmath.mpf(v) / cap))
        lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in xs if v != -mpmath.inf))
        w = options.class_weights(n)
        eps = mpmath.mpf(options.label_smoothing)
        if probs is None:
            coef = [eps / n * w[j] for j in range(n)]
            coef[target] += (1 - eps) * w[target]
        else:
            coef = [w[j] * ((1 - eps) * mpmath.mpf(probs[j]) + eps / n) for j in range(n)]
        body = mpmath.fsum(c * (lse - v) for c, v in zip(coef, xs) if c != 0)
        return body + options.z_loss * lse**2


def _draw_case(rng: np.random.Generator, fmt):
    n = int(rng.integers(2, 10))
    scale = float(rng.choice([0.25, 3.0, 40.0]))
    x = torch.tensor(rng.standard_normal(n) * scale).to(fmt.dtype).to(torch.float64).numpy()
    if rng.random() < 0.2:
        x = x + float(rng.choice([1e3, -5e4]))
        x = torch.tensor(x).to(fmt.dtype).to(torch.float64).numpy()
    options = LossOptions(
        weight=tuple(float(v) for v in rng.choice([0.0, 0.5, 2.0, 1e-3, 7.0], size=n)) if rng.random() < 0.5 else None,
        label_smoothing=float(rng.choice([0.0, 0.1, 1.0, 1e-7, 0.5])),
        z_loss=float(rng.choice([0.0, 1e-4, 0.5])),
        softcap=float(rng.choice([30.0, 1.5])) if rng.random() < 0.3 else None,
    )
    probs = None
    target = int(rng.integers(0, n))
    if rng.random() < 0.3:
        y = rng.random(n)
        y[rng.random(n) < 0.3] = 0.0
        probs = torch.tensor(y / max(y.sum(), 1e-9)).to(fmt.dtype).to(torch.float64).numpy()
    return x, target, probs, options


@pytest.mark.parametrize("fmt", [F16, BF16, F32, F64], ids=lambda f: f.name)
def test_per_sample_losses_match_an_independent_3000_bit_evaluation(fmt):
    rng = np.random.default_rng(hash(fmt.name) % 2**32)
    for _ in range(60):
        x, target, probs, options = _draw_case(rng, fmt)
        sample = Sample(x, None if probs is not None else target, probs)
        (value,) = sample_losses([sample], options, fmt)
        assert value.certified
        assert value.value == _round(reference(x, target, probs, options), fmt), (x, target, probs, options)


@pytest.mark.parametrize("fmt", [F16, BF16, F32], ids=lambda f: f.name)
def test_float64_tier_with_options_agrees_with_mpfr_and_decides_most(fmt):
    rng = np.random.default_rng(7)
    decided = total = 0
    for _ in range(80):
        x, target, probs, options = _draw_case(rng, fmt)
        rows = torch.tensor(x).unsqueeze(0)
        args = {"probs": torch.tensor(probs).unsqueeze(0)} if probs is not None else {"targets": torch.tensor([target])}
        (tiered,) = loss_values(rows, options=options, fmt=fmt, **args)
        sample = Sample(x, None if probs is not None else target, probs)
        (slow,) = sample_losses([sample], options, fmt)
        assert tiered.value == slow.value or (math.isnan(tiered.value) and math.isnan(slow.value))
        decided += tiered.method == "float64"
        total += 1
    assert decided > 0.8 * total


def test_self_agreement_from_a_much_higher_start(monkeypatch):
    import harness.oracle.options_tier as tier

    rng = np.random.default_rng(3)
    cases = [_draw_case(rng, F64) for _ in range(20)]
    first = [sample_losses([Sample(x, None if p is not None else t, p)], o, F64)[0] for x, t, p, o in cases]
    monkeypatch.setattr(tier, "_start", lambda fmt: 1024)
    again = [sample_losses([Sample(x, None if p is not None else t, p)], o, F64)[0] for x, t, p, o in cases]
    assert [v.value for v in first] == [v.value for v in again]


def test_closed_forms():
    n = 7
    equal = np.zeros(n)
    eps, w = 0.25, tuple(float(k) for k in range(1, n + 1))
    options = LossOptions(weight=w, label_smoothing=eps, z_loss=0.5)
    (value,) = sample_losses([Sample(equal, 2)], options, F64)
    # every A_j = log C and lse = log C
    expected = ((1 - eps) * w[2] + eps / n * sum(w)) * mpmath.log(n) + 0.5 * mpmath.log(n) ** 2
    assert value.value == _round(expected, F64)
    two = np.array([0.0, 3.0])  # softplus(3) at target 0, times the weight
    (value,) = sample_losses([Sample(two, 0)], LossOptions(weight=(2.5, 9.0)), F64)
    assert value.value == _round(2.5 * mpmath.log1p(mpmath.exp(3)), F64)
    one_hot = np.array([0.0, 1.0, 0.0])
    x = np.array([0.5, -1.0, 2.0])
    hard = sample_losses([Sample(x, 1)], LossOptions(label_smoothing=0.1), F64)[0]
    soft = sample_losses([Sample(x, None, one_hot)], LossOptions(label_smoothing=0.1), F64)[0]
    assert hard.value == soft.value
    (capped,) = sample_losses([Sample(np.zeros(4), 0)], LossOptions(softcap=5.0), F64)
    assert capped.value == _round(mpmath.log(4), F64)  # tanh(0) = 0


def test_special_values_and_edge_cases():
    x = np.array([1.0, 2.0, -INF])
    smooth = LossOptions(label_smoothing=0.1)
    assert sample_losses([Sample(x, 0)], smooth, F64)[0].value == INF  # positive share on a −inf logit
    zero_there = LossOptions(label_smoothing=0.1, weight=(1.0, 1.0, 0.0))
    value = sample_losses([Sample(x, 0)], zero_there, F64)[0]
    assert math.isfinite(value.value) and value.value == _round(reference(x, 0, None, zero_there), F64)
    soft = np.array([0.5, 0.5, 0.0])  # zero probability at the masked class: contributes nothing
    assert math.isfinite(sample_losses([Sample(x, None, soft)], LossOptions(), F64)[0].value)
    assert sample_losses([Sample(np.array([math.nan, 1.0]), 1)], LossOptions(), F64)[0].value != 0
    assert sample_losses([Sample(np.array([math.nan, 1.0]), -100)], LossOptions(), F64)[0].value == 0.0
    assert math.isnan(sample_losses([Sample(np.array([INF, 1.0]), 0)], smooth, F64)[0].value)
    assert sample_losses([Sample(np.array([INF, 1.0]), 1)], LossOptions(), F64)[0].value == INF
    capped = sample_losses([Sample(np.array([INF, -INF, 0.0]), 1)], LossOptions(softcap=5.0), F64)[0]
    expected = F.cross_entropy(5 * torch.tanh(torch.tensor([[INF, -INF, 0.0]], dtype=torch.float64) / 5),
                               torch.tensor([1])).item()  # fmt: skip
    assert capped.value == pytest.approx(expected, rel=1e-15)


def test_reductions_follow_torch():
    x = torch.tensor([[1.0, 2.0, 0.5], [0.5, 0.1, 0.3], [3.0, 1.0, 2.0]], dtype=torch.float64)
    t = torch.tensor([0, 1, -100])
    w = (2.0, 0.5, 3.0)
    for reduction in ("sum", "mean"):
        for kw in ({}, {"weight": w}, {"label_smoothing": 0.1}, {"weight": w, "label_smoothing": 0.1}):
            ours = reduced_value(x, t, options=LossOptions(reduction=reduction, **kw), fmt=F64)
            torch_kw = {**kw, **({"weight": torch.tensor(w, dtype=torch.float64)} if "weight" in kw else {})}
            theirs = F.cross_entropy(x, t, reduction=reduction, **torch_kw).item()
            assert ours.certified and ours.value == pytest.approx(theirs, rel=1e-14)
    all_ignored = torch.tensor([-100, -100, -100])
    assert math.isnan(reduced_value(x, all_ignored, options=LossOptions(reduction="mean"), fmt=F64).value)
    assert reduced_value(x, all_ignored, options=LossOptions(reduction="sum"), fmt=F64).value == 0.0
    zero_weights = LossOptions(reduction="mean", weight=(0.0, 0.0, 0.0))
    assert math.isnan(reduced_value(x, torch.tensor([0, 1, 2]), options=zero_weights, fmt=F64).value)
    probs = torch.softmax(torch.randn(3, 3, dtype=torch.float64), dim=1)
    ours = reduced_value(x, probs=probs, options=LossOptions(reduction="mean"), fmt=F64)
    assert ours.value == pytest.approx(F.cross_entropy(x, probs, reduction="mean").item(), rel=1e-14)


def test_a_sum_over_many_rows_is_rounded_once():
    rows = torch.zeros(4096, 4, dtype=torch.float64)  # each loss is exactly log 4
    targets = torch.zeros(4096, dtype=torch.int64)
    for fmt in (F16, F32, F64):
        total = reduced_value(rows.to(fmt.dtype), targets, options=LossOptions(reduction="sum"), fmt=fmt)
        assert total.value == _round(4096 * mpmath.log(4), fmt)
        per_row = torch.tensor(math.log(4), dtype=fmt.dtype)
        naive = torch.tensor(0.0, dtype=fmt.dtype)
        for _ in range(4096):
            naive = naive + per_row
        if fmt is F16:
            assert naive.item() != total.value  # a float16 running sum stalls far below


@pytest.mark.parametrize("fmt", [F16, F64], ids=lambda f: f.name)
def test_rounding_midpoints_are_decided_by_the_exact_value(fmt):
    """L = z · lse² with one live logit: exactly a midpoint, or one float64 ulp (2**-52) above one."""
    x = np.array([1.0, -INF, -INF])
    masked_free = (1.0, 0.0, 0.0)  # zero weight on the masked classes, no smoothing
    ulp = 2.0 ** (1 - fmt.precision)
    midpoint = 1 + ulp / 2  # between 1 and 1 + ulp: ties to even, to 1
    (value,) = sample_losses([Sample(x, 0)], LossOptions(weight=masked_free, z_loss=midpoint), fmt)
    assert value.certified and value.value == 1.0
    if fmt is F16:
        above = LossOptions(weight=masked_free, z_loss=midpoint + 2.0**-52)
        (value,) = loss_values(torch.tensor(x).unsqueeze(0), torch.tensor([0]), options=above, fmt=fmt)
        assert value.certified and value.value == 1 + ulp and value.method != "float64"


@pytest.mark.parametrize("op", ["logsumexp", "log_softmax", "softmax"])
@pytest.mark.parametrize("fmt", [F16, BF16, F32, F64], ids=lambda f: f.name)
def test_softmax_family_matches_3000_bit_evaluation(op, fmt):
    rng = np.random.default_rng(11)
    for trial in range(25):
        n = int(rng.integers(1, 12))
        x = torch.tensor(rng.standard_normal(n) * float(rng.choice([0.3, 4.0, 40.0]))).to(fmt.dtype)
        if rng.random() < 0.2:
            x[int(rng.integers(0, n))] = -INF
        row = x.to(torch.float64)
        out = family(op, row.unsqueeze(0), fmt)
        with mpmath.workprec(3000):
            xs = [mpmath.mpf(v) for v in row.tolist()]
            lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in xs if v != -mpmath.inf))
            if op == "logsumexp":
                expected = [_round(lse, fmt)]
            elif op == "log_softmax":
                expected = [_round(v - lse, fmt) for v in xs]
            else:
                expected = [_round(mpmath.exp(v - lse), fmt) for v in xs]
        assert out.certified.all()
        assert list(np.atleast_1d(out.value[0])) == expected, (trial, row.tolist())


def test_softmax_family_special_rows_follow_torch():
    rows = torch.tensor([[INF, 1.0], [-INF, -INF], [math.nan, 1.0], [-INF, 2.0]], dtype=torch.float64)
    for op, torch_op in (("log_softmax", torch.log_softmax), ("softmax", torch.softmax)):
        out = family(op, rows, F64)
        theirs = torch_op(rows, dim=1).numpy()
        assert np.array_equal(np.isnan(out.value), np.isnan(theirs))
        assert out.value[3, 0] == theirs[3, 0] and out.value[3, 1] == theirs[3, 1]
    lse = family("logsumexp", rows, F64).value
    assert lse[0] == INF and lse[1] == -INF and math.isnan(lse[2]) and lse[3] == 2.0


def test_float64_tiers_round_traps_correctly():
    """Losses within a few float64 ulps of a float16 midpoint: the float64 tiers must decline or be right.

    The row [shift, x, x, ..., x] (target 0) has L = log1p(copies · exp(x − shift)); a long
    sum makes the float64 estimate a few ulps off, so near a midpoint some x put the
    estimate on the other side of it than the exact value. A tier that dropped its error
    bound would round those the wrong way (the test was checked by zeroing each bound).
    """
    from harness.oracle.family import _fast
    from harness.oracle.options_fast import fast_losses

    estimates = {
        "options": lambda row, ones: mpmath.mpf(fast_losses(row, torch.tensor([0]), None, ones).loss.item()),
        "family": lambda row, ones: -mpmath.mpf(float(_fast(row, "log_softmax", F16)[2][0, 0])),
    }
    below = dict.fromkeys(estimates, 0)  # traps whose estimate lies below / above the midpoint
    above = dict.fromkeys(estimates, 0)
    for midpoint, copies in (
        (1 + 2.0**-11, 3000),
        (1.5 + 2.0**-11, 1000),
        (3 + 2.0**-10, 5000),
        (0.75 + 2.0**-12, 2000),
    ):
        midpoint = mpmath.mpf(midpoint)
        with mpmath.workprec(300):
            shift = float(0.25 - mpmath.log(mpmath.expm1(midpoint) / copies))
        ones = LossOptions(weight=(1.0,) * (copies + 1))  # plain values, through the options tier
        for k in range(-60, 60):
            x = 0.25 + k * math.ulp(0.25)
            row = torch.tensor([[shift] + [x] * copies], dtype=torch.float64)
            with mpmath.workprec(300):
                truth = mpmath.log1p(copies * mpmath.exp(mpmath.mpf(x) - mpmath.mpf(shift)))
            for tier, estimate in estimates.items():
                guess = estimate(row, ones)
                if truth == midpoint or guess == midpoint or (truth > midpoint) == (guess > midpoint):
                    continue
                below[tier] += guess < midpoint
                above[tier] += guess > midpoint
                if tier == "options":
                    (value,) = loss_values(row, torch.tensor([0]), options=ones, fmt=F16)
                    assert value.value == _round(truth, F16), (float(midpoint), x)
                else:
                    assert family("log_softmax", row, F16).value[0, 0] == -_round(truth, F16), (float(midpoint), x)
    for tier in estimates:
        assert below[tier] and above[tier], f"{tier}: too few traps ({below[tier]} below, {above[tier]} above)"


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float16"])
def test_softmax_of_huge_gaps_is_exactly_zero_from_the_float64_tier(dtype):
    fmt = FORMATS[dtype]
    top = fmt.max_finite / 4
    rows = torch.tensor([[top, 0.0, -top], [1.0, 1.0 - 200.0, 1.0 - 104.0]], dtype=torch.float64).to(fmt.dtype)
    out = family("softmax", rows, fmt)
    assert out.value.tolist()[0] == [1.0, 0.0, 0.0] and out.certified.all()
    assert set(out.method.ravel()) == {"float64"}
    # exp(−200) underflows every format here; exp(−104) is a float32 subnormal, so not zero there
    reference = [float(mpmath.exp(-mpmath.mpf(a)) / (1 + mpmath.exp(-200) + mpmath.exp(-104))) for a in (0, 200, 104)]
    expected = torch.tensor(reference, dtype=torch.float64).to(fmt.dtype).double().tolist()
    assert out.value.tolist()[1] == expected


def test_float64_softmax_elements_below_the_subnormals_are_zero_without_mpfr():
    rows = torch.tensor([[0.0] + [-800.0] * 300 + [-700.0]], dtype=torch.float64)
    out = family("softmax", rows, FORMATS["float64"])
    assert out.certified.all() and out.value[0, 1:301].tolist() == [0.0] * 300
    assert set(out.method[0, 1:301]) == {"float64"}  # decided before the per-element tiers
    reference = mpmath.exp(-700) / (1 + 300 * mpmath.exp(-800) + mpmath.exp(-700))
    assert out.value[0, -1] == float(reference) and out.value[0, 0] == 1.0


def test_a_family_value_an_astronomically_small_amount_past_a_rounding_midpoint_is_decided():
    """log_softmax of [4096, −16] at −16 is −(4112 + log1p(e**−4112)): 4112 is the midpoint of
    bfloat16's 4096 and 4128, and e**−4112 ≈ 2**−5932 lies beyond every precision the
    enclosures reach. The value is irrational, so strictly past the midpoint: −4128."""
    from harness.oracle.family import family

    x = torch.tensor([[4096.0, -16.0]], dtype=torch.bfloat16)
    out = family("log_softmax", x, FORMATS["bfloat16"])
    assert out.certified.all() and out.value.tolist() == [[-0.0, -4128.0]]
    assert math.copysign(1.0, out.value[0, 0]) == -1.0  # −log1p(e**−4112) < 0 rounds to −0
