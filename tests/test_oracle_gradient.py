"""The certified gradient oracle: closed forms, an independent 2000-bit evaluation, itself, traps, specials."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.formats import FORMATS
from harness.oracle.gradient import gradient
from harness.oracle.options import LossOptions
from tests.test_oracle_options import _round

F16, BF16, F32, F64 = (FORMATS[n] for n in ("float16", "bfloat16", "float32", "float64"))
INF = math.inf


def reference(x, target, probs, options, g, prec=2000) -> list[mpmath.mpf]:
    """g · ∂L/∂x_j from the definition: (K + 2 z lse) p_j − coef_j, times sech²(x_j / c) when capped."""
    with mpmath.workprec(prec):
        n, cap = len(x), options.softcap
        xs = [mpmath.mpf(v) for v in x]
        xp = [cap * mpmath.tanh(v / cap) for v in xs] if cap else xs
        lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in xp if v != -mpmath.inf))
        p = [mpmath.exp(v - lse) if v != -mpmath.inf else mpmath.mpf(0) for v in xp]
        w = [mpmath.mpf(v) for v in options.class_weights(n)]
        eps = mpmath.mpf(options.label_smoothing)
        if probs is None:
            coef = [eps / n * w[j] for j in range(n)]
            coef[target] += (1 - eps) * w[target]
        else:
            coef = [w[j] * ((1 - eps) * mpmath.mpf(probs[j]) + eps / n) for j in range(n)]
        k = mpmath.fsum(coef) + 2 * options.z_loss * lse
        out = []
        for j in range(n):
            value = k * p[j] - coef[j]
            if cap:
                value *= mpmath.sech(xs[j] / cap) ** 2
            out.append(value * mpmath.mpf(g))
        return out


def _case(rng, fmt):
    n = int(rng.integers(2, 8))
    x = torch.tensor(rng.standard_normal(n) * float(rng.choice([0.5, 5.0, 40.0]))).to(fmt.dtype).to(torch.float64)
    target = int(rng.integers(0, n))
    if rng.random() < 0.15:
        x[(target + 1) % n] = -INF
    options = LossOptions(
        weight=tuple(float(v) for v in rng.choice([0.0, 0.5, 2.0], size=n)) if rng.random() < 0.4 else None,
        label_smoothing=float(rng.choice([0.0, 0.1, 1.0])), z_loss=float(rng.choice([0.0, 1e-3])),
        softcap=float(rng.choice([3.0, 30.0])) if rng.random() < 0.3 else None,
    )  # fmt: skip
    probs = None
    if rng.random() < 0.3:
        y = rng.random(n)
        probs = torch.tensor(y / y.sum()).to(fmt.dtype).to(torch.float64)
    g = float(rng.choice([1.0, -0.5, 3e-5, 1e4, 0.0]))
    return x, target, probs, options, g


@pytest.mark.parametrize("fmt", [F16, BF16, F32, F64], ids=lambda f: f.name)
def test_gradient_matches_an_independent_2000_bit_evaluation(fmt):
    rng = np.random.default_rng(hash(fmt.name) % 2**32)
    for _ in range(40):
        x, target, probs, options, g = _case(rng, fmt)
        out = gradient(x.unsqueeze(0), None if probs is not None else torch.tensor([target]),
                       None if probs is None else probs.unsqueeze(0), options,
                       torch.tensor([g], dtype=torch.float64), fmt)  # fmt: skip
        expected = [_round(v, fmt) for v in reference(x.tolist(), target, None if probs is None else probs.tolist(),
                                                      options, g)]  # fmt: skip
        assert out.certified.all()
        assert list(out.value[0]) == expected, (x.tolist(), target, probs, options, g)


def test_self_agreement_from_a_much_higher_start(monkeypatch):
    import harness.oracle.gradient as module

    rng = np.random.default_rng(9)
    cases = [_case(rng, F64) for _ in range(12)]

    def run():
        return [gradient(x.unsqueeze(0), None if p is not None else torch.tensor([t]),
                         None if p is None else p.unsqueeze(0), o, torch.tensor([g], dtype=torch.float64), F64).value
                for x, t, p, o, g in cases]  # fmt: skip

    first = run()
    monkeypatch.setattr(module, "START_GUARD_BITS", 1024)
    assert all(np.array_equal(a, b) for a, b in zip(first, run()))


def test_closed_forms_and_torch():
    n = 5
    out = gradient(torch.zeros(1, n, dtype=torch.float64), torch.tensor([2]), None, LossOptions(),
                   torch.tensor([1.0], dtype=torch.float64), F64)  # fmt: skip
    expected = [1 / n] * n
    expected[2] = 1 / n - 1
    assert list(out.value[0]) == [_round(mpmath.mpf(v), F64) if v != 1 / n - 1 else -0.8 for v in expected]
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 5, -100, 2])
    w = torch.rand(6, dtype=torch.float64)
    for reduction in ("mean", "sum"):
        x.grad = None
        F.cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=0.2).backward(
            torch.tensor(0.7, dtype=torch.float64)
        )
        ours = gradient(x.detach(), t, None, LossOptions(weight=tuple(w.tolist()), reduction=reduction,
                                                         label_smoothing=0.2), 0.7, F64)  # fmt: skip
        assert np.allclose(ours.value, x.grad.numpy(), rtol=1e-13, atol=1e-17)


def test_confident_prediction_keeps_its_gradient():
    """p_t − 1 from expm1: −(1 − p_t) stays −1e-3, not 0 after rounding p_t (Liger-Kernel PR #1329)."""
    gap = math.log(999 / 1)  # two classes with p_t = 0.999
    rows = torch.tensor([[gap, 0.0]], dtype=torch.float64)
    out = gradient(rows.to(torch.bfloat16), torch.tensor([0]), None, LossOptions(),
                   torch.tensor([1.0], dtype=torch.float64), BF16)  # fmt: skip
    assert out.value[0, 0] < 0 and out.value[0, 0] == pytest.approx(-1e-3, rel=2e-2)
    assert torch.softmax(rows.to(torch.bfloat16), dim=1)[0, 0].item() == 1.0  # what a bfloat16 backward rounds to


def test_special_rows_and_masked_logits():
    rows = torch.tensor([[1.0, -INF, 0.5], [INF, 1.0, 0.0], [math.nan, 1.0, 0.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    out = gradient(rows, torch.tensor([0, 1, 1, -100]), None, LossOptions(), torch.ones(4, dtype=torch.float64), F32)
    assert out.value[0, 1] == 0.0 and np.isfinite(out.value[0]).all()  # 0 at a masked logit
    assert np.isnan(out.value[1]).all() and np.isnan(out.value[2]).all()
    assert (out.value[3] == 0).all()  # an ignored sample
    capped = gradient(rows[:2], torch.tensor([0, 1]), None, LossOptions(softcap=5.0),
                      torch.ones(2, dtype=torch.float64), F32)  # fmt: skip
    assert np.isfinite(capped.value).all() and capped.value[1, 0] == 0.0  # sech²(inf) = 0


def test_float64_gradient_tier_declines_close_calls():
    """Elements g · p_j within a float64 error of a float16 midpoint are never certified wrongly.

    Row [s, x, ..., x] with target 1: element 0 is p_0 = 1 / (1 + copies e^{x − s}); a long
    sum makes the float64 estimate a few ulps off, so some x near the midpoint put it on the
    other side (the test was checked by zeroing the tier's bound).
    """
    from harness.oracle.gradient import fast_gradient

    below = above = 0
    for scale, copies in ((2.0**-3, 2000), (0.75 * 2.0**-3, 100), (2.0**-5, 7), (0.875 * 2.0**-2, 100)):
        midpoint = mpmath.mpf(scale) * (1 + mpmath.mpf(2) ** -11)
        with mpmath.workprec(300):
            s = float(0.25 - mpmath.log((1 / midpoint - 1) / copies))
        for k in range(-50, 50):
            x = 0.25 + k * math.ulp(0.25)
            row = torch.tensor([[s] + [x] * copies], dtype=torch.float64)
            upstream = torch.tensor([1.0], dtype=torch.float64)
            with mpmath.workprec(300):
                truth = 1 / (1 + copies * mpmath.exp(mpmath.mpf(x) - mpmath.mpf(s)))
            estimate = mpmath.mpf(
                float(fast_gradient(row, torch.tensor([1]), None, LossOptions(), upstream, F16)[2][0, 0])
            )
            if truth == midpoint or estimate == midpoint or (truth > midpoint) == (estimate > midpoint):
                continue
            below += estimate < midpoint
            above += estimate > midpoint
            out = gradient(row, torch.tensor([1]), None, LossOptions(), upstream, F16)
            assert out.value[0, 0] == _round(truth, F16)
    assert below and above, f"too few traps ({below} below, {above} above)"


@pytest.mark.parametrize("op", ["logsumexp", "log_softmax", "softmax", "gradient"])
def test_double_double_elements_agree_with_mpfr_on_large_float64_rows(op, monkeypatch):
    """The double-double per-element tier decides float64 outputs; MPFR alone gives the same bits."""
    import harness.oracle.family as family_module
    import harness.oracle.gradient as gradient_module
    from harness.oracle.family import family

    generator = torch.Generator().manual_seed(4)
    rows = torch.randn(2, 3000, generator=generator, dtype=torch.float64) * 4
    rows[0, :50] = -INF
    rows[1, 7] = rows[1].max() + 30  # a confident row
    targets = torch.tensor([60, 7])
    upstream = torch.tensor([1.0, -0.25], dtype=torch.float64)

    def run():
        if op == "gradient":
            return gradient(rows, targets, None, LossOptions(), upstream, F64)
        return family(op, rows, F64)

    tiered = run()
    assert (tiered.method == "double-double").mean() > 0.9
    shape = (2,) if op == "logsumexp" else (2, 3000)
    monkeypatch.setattr(family_module, "family_dd", lambda *a: (np.zeros(shape, bool),) * 3)
    monkeypatch.setattr(gradient_module, "gradient_dd", lambda r, *a: (np.zeros(r.shape, bool),) * 3)
    slow = run()
    assert not (slow.method == "double-double").any()
    assert np.array_equal(tiered.value, slow.value, equal_nan=True)


def test_gradients_exactly_on_a_rounding_midpoint_are_decided():
    """Tied logits give p_j = 1/n: entries can sit exactly on a midpoint, which no enclosure decides.

    Hand-derived values, ties to even: (1/4096 − 1)/4 = −4095/16384 lies between the float16
    neighbours −2047/8192 and −0.25 (even) → −0.25; bfloat16 1/512 − 1 = −255.5/256 → −1.0;
    probability targets 1/4 − y_0 with y_0 = 6149/16384 give −1026.5·2^-13 → −1026·2^-13
    (even, the smaller magnitude); in float32 1/4 − 2^-27 is the midpoint of 1/4 − 2^-26
    (odd) and 1/4 → 0.25.
    """
    mean = gradient(torch.zeros(4, 4096, dtype=torch.float64), torch.zeros(4, dtype=torch.int64), None,
                    LossOptions(reduction="mean"), 1.0, F16)  # fmt: skip
    assert mean.certified.all()
    assert (mean.value[:, 0] == -0.25).all() and (mean.value[:, 1:] == 2.0**-14).all()
    single = gradient(torch.zeros(1, 512, dtype=torch.float64), torch.tensor([3]), None, LossOptions(),
                      torch.tensor([1.0], dtype=torch.float64), BF16)  # fmt: skip
    assert single.certified.all() and single.value[0, 3] == -1.0 and single.value[0, 0] == 2.0**-9
    probs = torch.tensor([[6149 / 16384, 0.0, 0.0, 10235 / 16384]], dtype=torch.float64)
    soft = gradient(torch.zeros(1, 4, dtype=torch.float64), None, probs, LossOptions(),
                    torch.tensor([1.0], dtype=torch.float64), F16)  # fmt: skip
    assert soft.certified.all()
    assert list(soft.value[0]) == [-1026 * 2.0**-13, 0.25, 0.25, -1535 * 2.0**-12]
    probs32 = torch.tensor([[2.0**-27, 0.0, 0.0, 1 - 2.0**-27]], dtype=torch.float64)
    soft32 = gradient(torch.zeros(1, 4, dtype=torch.float64), None, probs32, LossOptions(),
                      torch.tensor([1.0], dtype=torch.float64), F32)  # fmt: skip
    assert soft32.certified.all() and list(soft32.value[0]) == [0.25, 0.25, 0.25, -0.75]


@pytest.mark.parametrize("fmt", [F16, BF16, F32, F64], ids=lambda f: f.name)
def test_tied_rows_with_options_match_the_definition(fmt):
    """Tied rows (masked, weighted, smoothed, one live logit with z-loss, capped at 0 or not) against 2000 bits."""
    rng = np.random.default_rng(17)
    for _ in range(30):
        n = int(rng.integers(1, 9))
        value = float(rng.choice([0.0, 3.0, -7.5]))
        x = [value] * n
        for j in rng.choice(n, size=int(rng.integers(0, n)), replace=False):
            x[j] = -INF
        if all(v == -INF for v in x):
            x[0] = value
        target = int(rng.integers(0, n))
        options = LossOptions(
            weight=tuple(float(v) for v in rng.choice([0.5, 2.0, 3.0], size=n)) if rng.random() < 0.5 else None,
            label_smoothing=float(rng.choice([0.0, 0.25, 0.1])),
            z_loss=float(rng.choice([0.0, 2.0**-10])) if sum(v != -INF for v in x) == 1 else 0.0,
            softcap=30.0 if value == 0.0 and rng.random() < 0.5 else None,
        )
        g = float(rng.choice([1.0, -0.5, 3.0, 2.0**-20]))
        out = gradient(torch.tensor([x], dtype=torch.float64), torch.tensor([target]), None, options,
                       torch.tensor([g], dtype=torch.float64), fmt)  # fmt: skip
        assert out.certified.all(), (x, target, options, g)
        expected = [_round(v, fmt) for v in reference(x, target, None, options, g)]
        for got, want, exact in zip(out.value[0], expected, reference(x, target, None, options, g)):
            # 2000 bits decide every entry except an exact midpoint, where the reference may land either side
            if got != want:
                assert abs(float(exact) - (got + want) / 2) <= abs(got - want) * 1e-12, (x, target, options, g)


def test_a_negative_gradient_that_rounds_to_zero_is_minus_zero():
    out = gradient(torch.tensor([[0.0, -200.0, 5.0]], dtype=torch.float64), torch.tensor([2]), None, LossOptions(),
                   torch.tensor([-3.0], dtype=torch.float64), F32)  # fmt: skip
    assert out.value[0, 1] == 0.0 and math.copysign(1.0, out.value[0, 1]) == -1.0  # −3 · e^-205 rounds to −0
