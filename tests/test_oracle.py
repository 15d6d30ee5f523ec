"""The oracle against closed forms, against an independent high-precision evaluation, and
against itself at higher precision; plus the documented special-value semantics."""

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import oracle
from harness.formats import FORMATS, round_scaled
from harness.oracle import mpfr_tier
from strategies import cases

DTYPES = [f.dtype for f in FORMATS.values()]
INF, NAN = math.inf, math.nan


def _rounded(value: mpmath.mpf, dtype: torch.dtype) -> float:
    """Independent rounding path: mpmath's own nearest-even rounding at the format's precision."""
    fmt = FORMATS[str(dtype).removeprefix("torch.")]
    man, exp = value.man_exp  # no re-wrapping: mpf() would round to the default 53 bits
    return round_scaled(int(man), int(exp), fmt)


def _reference(row: list[float], target: int, prec: int = 3000) -> mpmath.mpf:
    """Naive definition at very high precision: log(sum exp x_j) - x_t (finite, unmasked target)."""
    with mpmath.workprec(prec):
        xs = [mpmath.mpf(v) for v in row if v != -INF]
        m = max(xs)
        total = mpmath.fsum(mpmath.exp(x - m) for x in xs)
        return (m - mpmath.mpf(row[target])) + mpmath.log(total)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_classes", [1, 2, 3, 7, 1000, 32768])
def test_equal_logits_give_log_c(dtype, n_classes):
    logits = torch.full((1, n_classes), 3.25, dtype=dtype)
    (value,) = oracle.evaluate(logits, torch.tensor([n_classes - 1]))
    with mpmath.workprec(300):
        expected = _rounded(mpmath.log(n_classes), dtype)
    assert value.certified and value.value == expected


@pytest.mark.parametrize("dtype", DTYPES)
@given(d=st.floats(-800, 800))
def test_two_classes_give_softplus(dtype, d):
    # loss of target 0 with logits (0, d) is softplus(d) = log1p(exp(d))
    logits = torch.tensor([[0.0, d]], dtype=torch.float64).to(dtype)
    d_exact = logits[0, 1].item()
    (value,) = oracle.evaluate(logits, torch.tensor([0]))
    with mpmath.workprec(2000):
        expected = _rounded(mpmath.log1p(mpmath.exp(mpmath.mpf(d_exact))), dtype)
    assert value.certified and value.value == expected


def test_seed_notebook_example():
    logits = torch.tensor([[2.0, 0.5, 1.0], [0.2, 1.5, 0.3], [1.0, 2.0, 0.1]])
    targets = torch.tensor([0, 1, 1])
    mean = oracle.cross_entropy(logits, targets, torch.float32, reduction="mean")
    assert round(mean.item(), 4) == 0.4449
    per_sample = oracle.cross_entropy(logits, targets)
    assert per_sample.dtype == torch.float64
    assert per_sample.tolist() == pytest.approx([0.4644, 0.4534, 0.4170], abs=5e-5)


@pytest.mark.parametrize(
    ("row", "target", "expected"),
    [
        ([0.0, -INF, 1.0], 0, math.log1p(math.e)),  # masked entries contribute nothing
        ([-INF, 0.0, 1.0], 0, INF),  # masked target, something finite: +inf
        ([-INF, -INF], 1, NAN),  # everything masked
        ([INF, 0.0], 1, INF),  # +inf elsewhere: the limit is +inf
        ([INF, 0.0], 0, NAN),  # +inf at the target
        ([NAN, 0.0], 1, NAN),  # NaN anywhere
        ([0.0, NAN], 0, NAN),
        ([5.0], 0, 0.0),  # one class: loss exactly 0
    ],
)
def test_special_value_semantics(row, target, expected):
    (value,) = oracle.evaluate(torch.tensor([row], dtype=torch.float64), torch.tensor([target]))
    assert value.certified
    if math.isnan(expected):
        assert math.isnan(value.value)
    else:
        assert value.value == pytest.approx(expected, rel=1e-15)


def test_loss_beyond_range_rounds_to_inf():
    logits = torch.tensor([[3e38, -3e38]], dtype=torch.float32)
    (value,) = oracle.evaluate(logits, torch.tensor([1]))
    assert value.value == INF and value.certified and value.exact == pytest.approx(6e38, rel=1e-6)


def test_large_offset_keeps_log_two():
    # pytorch#11752: at 1e8, two equal logits still have loss log 2
    logits = torch.tensor([[1e8, 1e8]], dtype=torch.float32)
    assert oracle.cross_entropy(logits, torch.tensor([1]), torch.float32).item() == pytest.approx(math.log(2), rel=1e-7)


def test_dominant_logit_underflows_correctly():
    # loss = log1p(exp(-1000)) ~ 5e-435: below float64's smallest subnormal, rounds to 0
    (value,) = oracle.evaluate(torch.tensor([[0.0, -1000.0]], dtype=torch.float64), torch.tensor([0]))
    assert value.value == 0.0 and value.certified
    # exp(-700) ~ 9.86e-305 is a float64 subnormal-range value and must be kept
    (value,) = oracle.evaluate(torch.tensor([[0.0, -700.0]], dtype=torch.float64), torch.tensor([0]))
    with mpmath.workprec(3000):
        assert value.value == _rounded(mpmath.log1p(mpmath.exp(-700)), torch.float64) > 0


def test_midpoint_ties_are_decided_by_the_tail():
    # a = 2049 is the exact midpoint of 2048 and 2050 in float16; the tiny tail decides upward
    logits = torch.tensor([[2048.0, -1.0]], dtype=torch.float16)
    (value,) = oracle.evaluate(logits, torch.tensor([1]))
    assert value.value == 2050.0 and value.certified
    # and with the tail pushed past every threshold, the answer stays 2050
    logits64 = torch.tensor([[2048.0, -1.0, -1e300]], dtype=torch.float64)
    (value,) = oracle.evaluate(logits64, torch.tensor([1]), dtype=torch.float16)
    assert value.value == 2050.0


REFERENCE_REGIMES = ["moderate", "offset", "ties", "confident_mistake", "near_overflow", "tiny", "masked"]


@settings(max_examples=60)
@given(cases(regimes=REFERENCE_REGIMES, max_classes=64))
def test_matches_independent_high_precision_evaluation(case):
    values = oracle.evaluate(case.row_logits, case.row_targets)
    rows = case.row_logits.to(torch.float64).tolist()
    for row, target, value in zip(rows, case.row_targets.tolist(), values):
        assert value.certified
        if row[target] == -INF or all(v == -INF for v in row):
            continue  # special values: covered by the semantics test
        assert value.value == _rounded(_reference(row, target), case.dtype)


@settings(max_examples=150)
@given(
    st.lists(st.floats(-(2.0**16), 2.0**16, allow_nan=False, allow_subnormal=True), min_size=1, max_size=30),
    st.integers(min_value=60, max_value=300),
)
def test_both_exp_sum_routes_enclose_the_reference(xs, prec):
    # The direct route (exp(-m) * sum exp(x)) and the exact-difference route (double-double
    # x - m) must both bracket sum_j c_j exp(x_j - m), to about prec bits.
    values = np.unique(np.array(xs, dtype=np.float64))
    counts = np.arange(1, len(values) + 1)
    top = float(values[-1])
    with mpmath.workprec(3000):
        reference = mpmath.fsum(int(c) * mpmath.exp(mpmath.mpf(v) - mpmath.mpf(top)) for v, c in zip(values, counts))
        for route in (mpfr_tier._scaled_exp_sum, mpfr_tier._shifted_exp_sum):
            lo, hi = (mpmath.mpf(mpfr_tier._to_mpf(bound)) for bound in route(values, counts, top, prec))
            assert lo <= reference <= hi, route.__name__
            assert hi - lo <= reference * mpmath.mpf(2) ** (4 - prec), route.__name__


@settings(max_examples=60)
@given(cases(max_classes=64))
def test_agrees_with_itself_at_higher_precision(case):
    fast = oracle.evaluate(case.row_logits, case.row_targets)
    slow = oracle.evaluate(case.row_logits, case.row_targets, start_precision=1024)
    for a, b in zip(fast, slow):
        assert a.certified and b.certified
        assert a.value == b.value or (math.isnan(a.value) and math.isnan(b.value))


def test_mean_of_a_large_batch_matches_reference():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    targets = torch.arange(5)
    mean = oracle.mean_loss(logits, targets)
    rows = logits.to(torch.float64).tolist()
    with mpmath.workprec(400):
        expected = mpmath.fsum(_reference(r, t, 400) for r, t in zip(rows, range(5))) / 5
    assert mean.certified and mean.value == _rounded(expected, torch.bfloat16)


def test_uncertified_rows_are_reported_not_dropped(monkeypatch):
    from harness.oracle import core

    monkeypatch.setattr(mpfr_tier, "MAX_PRECISION", 8)
    monkeypatch.setattr(core, "MAX_PRECISION", 8)
    monkeypatch.setattr(mpfr_tier, "START_GUARD_BITS", -49)  # 4 bits: far too few for float64
    monkeypatch.setattr(core.dd_tier, "decide_rows", lambda *args, **kwargs: {})  # the faster tier declines
    logits = torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]], dtype=torch.float64)
    values = oracle.evaluate(logits, torch.tensor([0, 0]))
    assert len(values) == 2 and not any(v.certified for v in values)
    assert all(math.isfinite(v.value) for v in values)  # a best estimate is still given
    with pytest.raises(ArithmeticError, match="could not certify"):
        oracle.cross_entropy(logits, torch.tensor([0, 0]))


@pytest.mark.parametrize(
    ("logits", "targets", "message"),
    [
        (torch.zeros(3), torch.tensor([0]), "shape"),
        (torch.zeros(2, 3), torch.tensor([0]), "targets must have shape"),
        (torch.zeros(1, 3), torch.tensor([3]), "out of range"),
        (torch.zeros(1, 3), torch.tensor([0.0]), "integers"),
        (torch.zeros(1, 3, dtype=torch.int32), torch.tensor([0]), "unsupported dtype"),
    ],
)
def test_bad_inputs_are_rejected(logits, targets, message):
    with pytest.raises(ValueError, match=message):
        oracle.evaluate(logits, targets)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _fast_tier_agrees(case) -> None:
    tiered = oracle.evaluate(case.row_logits, case.row_targets)
    mpmath_only = oracle.evaluate(case.row_logits, case.row_targets, tiers=("mpmath",))
    for a, b in zip(tiered, mpmath_only):
        assert a.certified and b.certified and _same(a.value, b.value)
    mean_a = oracle.mean_loss(case.row_logits, case.row_targets)
    mean_b = oracle.mean_loss(case.row_logits, case.row_targets, tiers=("mpmath",))
    assert _same(mean_a.value, mean_b.value)


@settings(max_examples=300, deadline=None)
@given(cases(dtype=["float16", "bfloat16", "float32"], max_classes=24))
def test_fast_tier_agrees_with_mpmath_only(case):
    _fast_tier_agrees(case)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None)
@given(cases(dtype=["float16", "bfloat16", "float32"], max_classes=24))
def test_fast_tier_agrees_with_mpmath_only_on_2000_cases(case):
    _fast_tier_agrees(case)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fast_tier_decides_most_rows_and_large_ones(dtype):
    logits = (torch.randn(8, 50_257, generator=torch.Generator().manual_seed(3)) * 4).to(dtype)
    targets = torch.arange(8) * 1000
    tiered = oracle.evaluate(logits, targets)
    assert sum(v.method == "float64" for v in tiered) >= 7
    reference = oracle.evaluate(logits[:2], targets[:2], tiers=("mpmath",))
    assert [v.value for v in tiered[:2]] == [v.value for v in reference]


def test_fast_tier_never_decides_float64_or_specials():
    logits = torch.tensor([[0.0, 1.0], [math.inf, 0.0]], dtype=torch.float64)
    without_dd = oracle.evaluate(logits, torch.tensor([0, 1]), tiers=("float64", "mpmath"))
    assert {v.method for v in without_dd} <= {"mpmath", "special", "exact"}
    assert [v.method for v in oracle.evaluate(logits, torch.tensor([0, 1]))] == ["double-double", "special"]
    logits32 = torch.tensor([[math.nan, 0.0], [-math.inf, 0.0]], dtype=torch.float32)
    assert {v.method for v in oracle.evaluate(logits32, torch.tensor([0, 0]))} == {"special"}
    with pytest.raises(ValueError, match="tiers"):
        oracle.evaluate(logits, torch.tensor([0, 1]), tiers=("float64",))


def test_k_dimensional_input_follows_torch_shapes():
    logits = torch.randn(2, 5, 3, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    targets = torch.randint(0, 5, (2, 3, 2), generator=torch.Generator().manual_seed(4))
    exact = oracle.cross_entropy(logits, targets)
    assert exact.shape == targets.shape
    torch.testing.assert_close(exact, torch.nn.functional.cross_entropy(logits, targets, reduction="none"))
    rows = oracle.cross_entropy(logits.movedim(1, -1).reshape(-1, 5), targets.reshape(-1))
    assert torch.equal(exact.reshape(-1), rows)
