"""The double-double tier against the MPFR tier, bit for bit, on generated cases in every
regime and dtype; and on constructed hard cases (exact rounding midpoints, losses within
2**-100 of one, exact ties), each checked against an independent 3000-bit mpmath value,
with the tier declining exactly where it cannot prove the rounding."""

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from harness import oracle
from harness.formats import FORMATS, round_scaled
from harness.oracle import dd_tier
from strategies import cases

INF = math.inf
F64 = FORMATS["float64"]


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _reference(row: list[float], target: int, prec: int = 3000) -> mpmath.mpf:
    """log(sum exp x_j) - x_t at 3000 bits, from the definition (finite target, -inf masked)."""
    with mpmath.workprec(prec):
        xs = [mpmath.mpf(v) for v in row if v != -INF]
        m = max(xs)
        return (m - mpmath.mpf(row[target])) + mpmath.log(mpmath.fsum(mpmath.exp(x - m) for x in xs))


def _rounded(value: mpmath.mpf, dtype: torch.dtype) -> float:
    """mpmath's value rounded to the format, ties to even (an exact midpoint stays one at 3000 bits)."""
    man, exp = value.man_exp
    return round_scaled(int(man), int(exp), FORMATS[str(dtype).removeprefix("torch.")])


def _agree(logits: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype) -> list:
    tiered = oracle.evaluate(logits, targets, dtype)
    reference = oracle.evaluate(logits, targets, dtype, tiers=("mpmath",))
    for a, b in zip(tiered, reference):
        assert a.certified and b.certified and _same(a.value, b.value), (a, b)
    return tiered


def _agrees_for_float64_outputs(case) -> None:
    # every regime (special, tiny, huge, offset, masked, ...) and input dtype, float64 outputs
    _agree(case.row_logits, case.row_targets, torch.float64)
    mean_a = oracle.mean_loss(case.row_logits, case.row_targets, torch.float64)
    mean_b = oracle.mean_loss(case.row_logits, case.row_targets, torch.float64, tiers=("mpmath",))
    assert _same(mean_a.value, mean_b.value)


@settings(max_examples=300, deadline=None)
@given(cases(max_classes=24))
def test_agrees_with_mpmath_only_for_float64_outputs(case):
    _agrees_for_float64_outputs(case)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None)
@given(cases(max_classes=24))
def test_agrees_with_mpmath_only_for_float64_outputs_on_2000_cases(case):
    _agrees_for_float64_outputs(case)


@settings(max_examples=25, deadline=None)
@given(cases(regimes=["large_vocab"], max_classes=50_257))
def test_large_vocabulary_cases_agree(case):
    _agree(case.row_logits, case.row_targets, torch.float64)


def test_decides_almost_every_ordinary_row_and_agrees():
    generator = torch.Generator().manual_seed(18)
    blocks = [
        torch.randn(40, 50, generator=generator, dtype=torch.float64) * 3,  # moderate
        torch.randn(40, 50, generator=generator, dtype=torch.float64) * 300,  # wide spread
        1e6 + torch.randn(40, 50, generator=generator, dtype=torch.float64),  # offset
        torch.randn(40, 50, generator=generator, dtype=torch.float64) * 1e-300,  # tiny and subnormal
        -torch.rand(40, 50, generator=generator, dtype=torch.float64) * 740,  # terms near underflow
    ]
    logits = torch.cat(blocks)
    logits[::7, 3] = -INF  # masked entries
    targets = torch.randint(0, 50, (len(logits),), generator=generator)
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        values = _agree(logits.to(dtype), targets, torch.float64)
        ordinary = [v for v in values if v.method != "special"]  # float16 overflows the offset rows
        assert sum(v.method == "double-double" for v in ordinary) >= 0.97 * len(ordinary) > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_large_vocabulary_rows_agree(dtype):
    generator = torch.Generator().manual_seed(256)
    logits = (torch.randn(2, 256_000, generator=generator, dtype=torch.float64) * 4).to(dtype)
    logits[0, :1000] = -INF
    logits[1, 5:9] = torch.tensor([1e-40, -1e-40, 0.0, 30.0], dtype=dtype)  # subnormal in float32, a dominant logit
    values = _agree(logits, torch.tensor([1700, 8]), torch.float64)
    assert [v.method for v in values] == ["double-double", "double-double"]


def test_special_values_are_left_to_the_special_handling():
    logits = torch.tensor(
        [[0.0, math.nan], [INF, 0.0], [-INF, 0.0], [-INF, -INF], [1e308, -1e308]], dtype=torch.float64
    )
    targets = torch.tensor([0, 1, 0, 0, 1])
    assert dd_tier.decide_rows(logits, targets.tolist(), F64) == {}  # the last loss overflows float64
    values = _agree(logits, targets, torch.float64)
    assert [v.method for v in values[:4]] == ["special"] * 4 and values[4].value == INF


def _hard(row: list[float], target: int, dtype: torch.dtype, logits_dtype=torch.float64) -> tuple[bool, float]:
    """(did the double-double tier decide it?, the oracle's value), after checking that value
    against the 3000-bit reference."""
    logits = torch.tensor([row], dtype=logits_dtype)
    assert logits.to(torch.float64).tolist() == [row]  # the row is exact in its dtype
    (value,) = oracle.evaluate(logits, torch.tensor([target]), dtype)
    assert value.certified and value.value == _rounded(_reference(row, target), dtype)
    decided = dd_tier.decide_rows(logits, [target], FORMATS[str(dtype).removeprefix("torch.")])
    assert (value.method == "double-double") == bool(decided)
    return bool(decided), value.value


# A nonzero loss is never exactly a rounding midpoint (Lindemann-Weierstrass: log of a sum
# of exp(rational) is transcendental unless the sum is 1), so the hard cases are a midpoint
# plus a transcendentally small tail. Rows [-d, M]: loss = M + d + log1p(exp(-M - d)) with
# M + d exactly a midpoint of float64 (half an ulp of 70 or 80 is 2**-47, of 720 is 2**-44)
# and a tail of exp(-70) = 2**-100.99, exp(-80) = 2**-115.4 or exp(-720) = 2**-1038.8.
# The double-double tier keeps m - x_t and the tail apart (a triple-double sum), so it
# decides the first ones exactly; a tail below its absolute floor (2**-1021 a term) it
# cannot resolve, and declines: the true midpoints, as far as it can tell.
H = 2.0**-47
# d = the double nearest 48 ln 2: softplus(d) = d + exp(-d) - ..., and exp(-d) = 2**-48 (1 - delta),
# |delta| <= 2**-47: d + 2**-48 is the float64 midpoint above d, so the loss is within 2**-95 of it.
SOFTPLUS_D = float(mpmath.mpf(48) * mpmath.log(2))


@pytest.mark.parametrize(
    ("row", "target", "dtype", "expected_decided", "expected"),
    [
        # a midpoint plus 2**-1038.8: the tier declines, MPFR rounds up (ties-to-even would not)
        ([-(2.0**-44), 720.0], 0, torch.float64, False, 720.0 + 2.0**-43),
        ([-3 * 2.0**-44, 720.0], 0, torch.float64, False, 720.0 + 2.0**-42),
        # a midpoint plus 2**-100.99 and plus 2**-115.4: decided, rounded up
        ([-H, 70.0], 0, torch.float64, True, 70.0 + 2 * H),
        ([-H, 80.0], 0, torch.float64, True, 80.0 + 2 * H),
        # 2**-100 below a midpoint, then 2**-100.99 back up: 2**-101.0 below, rounds down
        ([-H * (1 - 2.0**-53), 70.0], 0, torch.float64, True, 70.0),
        # 2**-96 below a midpoint, with a tail the tier cannot resolve: decided, down
        ([-(2.0**-44) * (1 - 2.0**-52), 720.0], 0, torch.float64, True, 720.0),
        # softplus within 2**-95 of a midpoint, and its neighbours: whoever decides, the value is right
        ([0.0, SOFTPLUS_D], 0, torch.float64, None, None),
        ([0.0, math.nextafter(SOFTPLUS_D, INF)], 0, torch.float64, None, None),
        ([0.0, math.nextafter(SOFTPLUS_D, 0)], 0, torch.float64, None, None),
        ([0.0, 30.0], 0, torch.float64, True, None),  # far from any midpoint: decided
        # a float32 midpoint plus 2**-100.99, with the midpoint itself a double: the double-double
        # tier holds the tail exactly and decides; the float64 tier cannot
        ([-(2.0**-18), 70.0], 0, torch.float32, True, 70.0 + 2.0**-17),
        # 4752 + e**-448 in bfloat16: just above the midpoint of 4736 and 4768 (the tail,
        # 2**-646, is within the tier's reach), and the same with e**-2000 (beyond it)
        ([4752.0, 0.0, 4304.0], 1, torch.bfloat16, True, 4768.0),
        ([4752.0, 0.0, 2752.0], 1, torch.bfloat16, False, 4768.0),
        ([4752.0, 0.0, 4304.0], 1, torch.float64, True, 4752.0),  # in float64, far from any midpoint
        # 2049 + e**-30 in float16: beyond the float64 tier's reach, within the double-double's
        ([2049.0, 0.0, 2019.0], 1, torch.float16, True, 2050.0),
        ([2049.0, 0.0, -INF], 1, torch.float16, False, 2050.0),  # 2049 + e**-2049: MPFR
        # exact ties among the logits: log 3, and a tie at the maximum with the target elsewhere
        ([5.0, 5.0, 5.0], 0, torch.float64, True, None),
        ([5.0, 5.0, 1.0], 2, torch.float64, True, None),
    ],
)
def test_hard_cases_are_decided_correctly(row, target, dtype, expected_decided, expected):
    decided, value = _hard(row, target, dtype, torch.float32 if dtype == torch.bfloat16 else torch.float64)
    if expected_decided is not None:
        assert decided == expected_decided
    if expected is not None:
        assert value == expected


def test_softplus_cases_are_within_2_95_of_a_midpoint():
    # the premise of the softplus hard cases above
    with mpmath.workprec(3000):
        loss = mpmath.log1p(mpmath.exp(mpmath.mpf(SOFTPLUS_D)))
        midpoint = mpmath.mpf(SOFTPLUS_D) + mpmath.mpf(2) ** -48
        assert abs(loss - midpoint) < mpmath.mpf(2) ** -95


def test_mean_near_a_midpoint_goes_to_mpmath():
    # both losses, so the mean, are the midpoint 70 + 2**-47 plus 2**-100.99: rounds up
    logits = torch.tensor([[-H, 70.0], [-H, 70.0]], dtype=torch.float64)
    targets = torch.tensor([0, 0])
    assert dd_tier.decide_mean(logits, targets.tolist(), F64) is None
    mean = oracle.mean_loss(logits, targets, torch.float64)
    assert mean.certified and mean.value == 70.0 + 2 * H and mean.method == "mpmath"
    with mpmath.workprec(3000):
        assert mean.value == _rounded(_reference([-H, 70.0], 0), torch.float64)


def test_mean_is_decided_by_the_tier_and_agrees():
    logits = torch.randn(64, 1000, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 5
    targets = torch.arange(64) * 11
    mean = oracle.mean_loss(logits, targets, torch.float64)
    reference = oracle.mean_loss(logits, targets, torch.float64, tiers=("mpmath",))
    assert mean.method == "double-double" and mean.value == reference.value
    rows = logits.tolist()
    with mpmath.workprec(400):
        expected = mpmath.fsum(_reference(r, t, 400) for r, t in zip(rows, targets.tolist())) / 64
    assert mean.value == _rounded(expected, torch.float64)


def test_the_bound_encloses_the_exact_loss():
    # the enclosure itself, not only the decisions: |loss - (vh + vm + vt)| <= bound
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(30, 40, generator=generator, dtype=torch.float64) * torch.tensor(
        [[0.01], [3.0], [200.0]]
    ).repeat(10, 1)
    targets = torch.randint(0, 40, (30,), generator=generator)
    ordinary, vh, vm, vt, bound = dd_tier.enclose_rows(logits, targets)
    assert ordinary.all()
    for i, (row, target) in enumerate(zip(logits.tolist(), targets.tolist())):
        with mpmath.workprec(600):
            exact = _reference(row, target, 600)
            assert abs(mpmath.mpf(vh[i]) + mpmath.mpf(vm[i]) + mpmath.mpf(vt[i]) - exact) <= bound[i]
            assert bound[i] <= 2.0**-80 * exact


def test_works_without_numba(monkeypatch):
    from harness.oracle import dd_kernels

    monkeypatch.setattr(dd_kernels, "BACKEND", "numpy")
    logits = torch.randn(4, 3000, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    values = _agree(logits, torch.tensor([0, 1, 2, 3]), torch.float64)
    assert all(v.method == "double-double" for v in values)
    assert np.isfinite([v.value for v in values]).all()
