"""Structural shrinking: rows, tiles of classes, magnitudes and layout, keeping the same failure."""

from __future__ import annotations

import math

import torch

from harness.calling.caller import Caller
from harness.calling.loading import load_implementation
from harness.calling.registry import Implementation
from harness.grading.verdicts import Policy
from harness.minimize import minimize
from harness.runner import run_case
from harness.shrinking import same_failure
from strategies import Case, apply_layout

POLICY = Policy()


def _shrink(spec: str, case: Case, seconds: float = 20.0):
    impl = load_implementation(spec)
    record = next(r for r in _records(impl, case) if POLICY.fails(r["verdict"]))
    fails = same_failure(impl, record["outcome"], POLICY, Caller())
    return minimize(case, record, fails, seconds=seconds), record


def _records(impl, case):
    return run_case(case, [impl], POLICY)


def test_a_masked_leading_tile_shrinks_to_one_row_of_one_tile_and_a_class():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6_000, generator=gen)
    logits[:, :2_500] = -math.inf
    case = Case(logits, torch.tensor([10, 3_000, 5_999]), "tiled")
    found, record = _shrink("tests.implementations.tiled:no_inf_guard_1024", case)
    assert record["outcome"] == "spurious_nan" and found.record["outcome"] == "spurious_nan"
    shape = tuple(found.case.logits.shape)
    assert shape[0] == 1 and 1_025 <= shape[1] <= 1_024 + 1_024  # the masked tile, and what must follow it
    row = found.case.logits[0]
    assert torch.isneginf(row[:1_024]).all() and torch.isfinite(row).any()
    finite = row[torch.isfinite(row)]
    assert len(torch.unique(finite)) <= 2  # one fill value, at most one other: magnitudes simplified
    assert found.reduced and found.attempts > 0


def test_an_overflow_shrinks_to_a_tiny_row_of_simple_values():
    logits = torch.tensor([[91.37, -3.25, 100.5, 0.1], [1.0, 2.0, 3.0, 4.0], [250.0, 7.0, -1.0, 88.8]])
    found, _ = _shrink("naive", Case(logits, torch.tensor([1, 2, 3]), "huge"))
    assert found.case.logits.shape[0] == 1 and found.case.logits.shape[1] <= 2
    value = float(found.case.logits.abs().max())
    assert math.log2(value) == int(math.log2(value))  # a power of two, past exp's overflow
    assert found.complete


def test_the_layout_stays_only_when_the_failure_needs_it():
    values = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    strided = Case(apply_layout(values, "transposed"), torch.tensor([0, 1, 2, 3]), "strided")
    found, _ = _shrink("tests.implementations.mutants:ignores_strides", strided)
    assert not found.case.contiguous  # contiguous logits would pass: the stride is the bug
    huge = values.clone()
    huge[0, 0] = 1e4
    found, _ = _shrink("naive", Case(apply_layout(huge, "transposed"), torch.tensor([0, 1, 2, 3]), "strided"))
    assert found.case.contiguous and found.case.logits.shape[0] == 1


def _naive_any_rank(logits, targets):
    probs = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    return -torch.log(probs.gather(1, targets.unsqueeze(1)).squeeze(1))


def test_k_dimensional_cases_become_rows_unless_the_positions_matter():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 4, 5, generator=gen)
    targets = torch.randint(0, 5, (2, 4, 5), generator=gen)
    found, _ = _shrink("tests.implementations.mutants:blocked_positions", Case(logits, targets, "layout"))
    assert found.case.logits.ndim > 2 and math.prod(found.case.logits.shape[2:]) >= 16  # 16 positions needed
    logits[1, :, 2, 3] = torch.tensor([1e4, 0.0, 0.0, 0.0, 0.0])
    impl = Implementation("naive_any_rank", _naive_any_rank, k_dimensional=True)
    case = Case(logits, targets, "layout")
    record = next(r for r in run_case(case, [impl], POLICY) if POLICY.fails(r["verdict"]))
    found = minimize(case, record, same_failure(impl, record["outcome"], POLICY, Caller()), seconds=20)
    assert found.case.logits.ndim == 2 and found.case.logits.shape[0] == 1


def test_a_batch_failure_becomes_copies_of_one_row():
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(3_000, 4, generator=gen) * 0.5).to(torch.bfloat16)
    case = Case(logits, torch.randint(0, 4, (3_000,), generator=gen), "batch")
    found, _ = _shrink("tests.implementations.mutants:low_precision_batch_mean", case)
    rows = found.case.logits
    assert rows.shape[0] < 3_000 and bool((rows == rows[:1]).all())
    assert bool((found.case.targets == found.case.targets[0]).all())


def test_no_time_means_the_case_as_it_came():
    case = Case(torch.tensor([[1e4, 1.0, 2.0]]), torch.tensor([1]), "huge")
    found, _ = _shrink("naive", case, seconds=0.0)
    assert found.case.case_id == case.case_id and not found.reduced and not found.complete


def test_simpler_values_of_the_largest_floats_do_not_overflow():
    """2.0 ** ceil(log2 |v|) overflows (an OverflowError) for float64 values above 2**1023."""
    from harness.formats import FORMATS
    from harness.minimize import _simpler

    for value in (1.7976931348623157e308, -1.7e308, 2.0**1023, 3.0e38):
        for fmt in FORMATS.values():
            if abs(value) > fmt.max_finite:
                continue
            simpler = _simpler(value, 0.0, fmt)
            assert simpler[0] == 0.0 and all(math.isfinite(v) and v != value for v in simpler)
