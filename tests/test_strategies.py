import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from harness.formats import FORMATS
from strategies import REGIMES, Case, cases, format_values, near_values


@pytest.mark.parametrize("regime", list(REGIMES))
@pytest.mark.parametrize("dtype", list(FORMATS))
def test_every_regime_is_reachable_in_every_dtype(regime, dtype):
    seen = []

    @settings(max_examples=3, database=None, suppress_health_check=list(HealthCheck), deadline=None)
    @given(cases(dtype=dtype, regimes=[regime], max_classes=32_768))
    def draw(case):
        seen.append(case)

    draw()
    assert seen
    for case in seen:
        assert case.regime == regime and case.dtype == FORMATS[dtype].dtype
        assert case.targets.dtype == torch.int64
        assert case.logits.ndim == (case.targets.ndim + 1) and (case.logits.ndim == 2) == (regime != "layout")
        assert ((case.targets >= 0) & (case.targets < case.n_classes)).all()
        assert case.contiguous == (regime not in ("strided", "layout")) or regime == "layout"
        values = case.logits.to(torch.float64)  # every value exact in the format
        assert torch.equal(values.to(case.dtype).view(case.format.int_dtype), case.logits.view(case.format.int_dtype))


@settings(max_examples=40, deadline=None)
@given(cases(regimes=["layout"], max_classes=16))
def test_layout_cases_put_the_class_dimension_second(case):
    n, _classes, *extra = case.logits.shape
    assert 1 <= len(extra) <= 3 and case.targets.shape == (n, *extra) and math.prod(extra) <= 64
    # row i of row_logits is the class vector at the i-th target position, row-major
    positions = list(torch.cartesian_prod(*(torch.arange(k) for k in (n, *extra))).reshape(-1, 1 + len(extra)))
    for i, position in enumerate(positions):
        index = tuple(int(p) for p in position)
        expected = case.logits[(index[0], slice(None), *index[1:])]
        assert torch.equal(case.row_logits[i].view(case.format.int_dtype), expected.view(case.format.int_dtype))
        assert int(case.row_targets[i]) == int(case.targets[index])
    assert case.n_samples == case.row_logits.shape[0]


@settings(max_examples=50, deadline=None)
@given(cases(max_classes=300, regimes=["moderate", "special", "strided", "layout", "batch", "tiled"], max_rows=64))
def test_case_round_trips_exactly(case):
    again = Case.from_json(case.to_json())
    assert again.case_id == case.case_id and again.regime == case.regime
    assert again.logits.shape == case.logits.shape and torch.equal(again.targets, case.targets)
    assert torch.equal(again.logits.view(case.format.int_dtype), case.logits.view(case.format.int_dtype))
    # the layout too: strides of every dimension longer than 1, and the storage offset
    assert again.logits.storage_offset() == case.logits.storage_offset() and again.contiguous == case.contiguous
    assert all(a == b for a, b, n in zip(again.logits.stride(), case.logits.stride(), case.logits.shape) if n > 1)


def test_the_same_values_in_another_layout_are_another_case():
    from strategies import apply_layout

    values = torch.arange(12.0).reshape(3, 4)
    plain = Case(values, torch.tensor([0, 1, 2]), "strided")
    ids = {plain.case_id}
    for kind in ("transposed", "strided", "offset"):
        laid = Case(apply_layout(values, kind), torch.tensor([0, 1, 2]), "strided")
        assert torch.equal(laid.logits, values) and not laid.contiguous
        ids.add(laid.case_id)
    assert len(ids) == 4
    data = Case(apply_layout(values, "offset", pad=58, row=1, column=2), torch.tensor([0, 1, 2]), "strided").to_json()
    assert data["storage_offset"] == 66 and data["strides"] == [64, 1]
    data["storage_offset"] = 10_000
    with pytest.raises(ValueError, match="reaches past its storage"):
        Case.from_json(data)


def test_huge_regime_reaches_past_exp_overflow():
    @settings(max_examples=30, database=None, deadline=None)
    @given(cases(dtype="float32", regimes=["huge"]))
    def draw(case):
        assert case.logits.abs().max().item() >= 64.0

    draw()


@given(format_values("bfloat16", min_exponent=-3, max_exponent=2))
def test_format_values_are_in_the_format_and_range(value):
    assert torch.tensor(value).to(torch.bfloat16).item() == value
    assert 2.0**-3 <= abs(value) < 2.0**3


@given(near_values("float16", 11.09, max_ulps=2))
def test_near_values_step_in_ulps(value):
    assert abs(value - 11.09) <= 3 * 2.0**-7


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: cases(dtype="fp8"), "unknown dtype"),
        (lambda: cases(regimes=["bogus"]), "unknown regime"),
        (lambda: cases(regimes=[]), "at least one regime"),
        (lambda: cases(max_classes=1), "max_classes"),
        (lambda: cases(regimes=["large_vocab"], max_classes=64), "large_vocab needs"),
        (lambda: cases(regimes=["tiled"], max_classes=256), "tiled needs"),
        (lambda: cases(max_rows=0), "max_rows"),
        (lambda: format_values("float16", min_exponent=3, max_exponent=2), "min_exponent"),
        (lambda: near_values("float16", math.inf), "not finite"),
    ],
)
def test_bad_arguments_give_helpful_errors(make, message):
    with pytest.raises(InvalidArgument, match=message):
        make()


def test_corrupt_case_is_detected():
    case = Case(torch.zeros(1, 3), torch.tensor([0]), "moderate")
    data = case.to_json()
    data["targets"] = [1]
    with pytest.raises(ValueError, match="does not match"):
        Case.from_json(data)


@given(st.data())
def test_cases_accept_several_dtypes(data):
    case = data.draw(cases(dtype=["float16", torch.float64], max_classes=16))
    assert case.dtype in (torch.float16, torch.float64)
