import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.grading.metrics import ACCEPTED_OUTCOMES, FAILURE_OUTCOMES, OUTCOMES, accept_outcomes, measure
from harness.oracle import OracleValue


def _oracle(*values: float) -> list[OracleValue]:
    return [OracleValue(v, v, True, 93, "mpmath") for v in values]


def _measure(outputs, oracle_values, dtype=torch.float16):
    return measure(torch.tensor(outputs, dtype=dtype), _oracle(*oracle_values), dtype)


def test_exact_and_signed_zero():
    m = _measure([-0.0], [0.0])
    assert m["outcome"] == "exact" and m["ulps"] == 0 and m["bits"] == 0


def test_errors_in_ulps_bits_and_relative_terms():
    m = _measure([1.0 + 2**-10 * 3], [1.0])
    assert m["outcome"] == "finite_error"
    assert m["ulps"] == 3 and m["bits"] == pytest.approx(2.0)
    assert m["abs_error"] == pytest.approx(3 * 2**-10) and m["rel_error"] == pytest.approx(3 * 2**-10)


def test_subnormal_ulps():
    tiny = 2.0**-24
    assert _measure([5 * tiny], [2 * tiny])["ulps"] == 3


@pytest.mark.parametrize(
    ("output", "oracle", "outcome"),
    [
        (math.inf, 1.0, "spurious_inf"),
        (-math.inf, 1.0, "spurious_inf"),
        (math.nan, 1.0, "spurious_nan"),
        (math.nan, math.inf, "spurious_nan"),
        (65504.0, math.inf, "missing_nonfinite"),
        (1.0, math.nan, "missing_nonfinite"),
        (math.inf, math.inf, "exact"),
        (math.nan, math.nan, "exact"),
    ],
)
def test_outcome_categories(output, oracle, outcome):
    assert _measure([output], [oracle])["outcome"] == outcome


def test_worst_sample_is_reported():
    m = _measure([1.0, math.nan, 1.0 + 2**-10], [1.0, 1.0, 1.0])
    assert m["sample"] == 1 and m["outcome"] == "spurious_nan" and m["ulps"] == 2**16


def test_uncertified_oracle_is_not_graded():
    values = [OracleValue(1.0, 1.0, False, 4096, "mpmath")]
    assert measure(torch.tensor([2.0]), values, torch.float32)["outcome"] == "uncertified"


def test_errors_are_measured_against_the_exact_value():
    oracle = [OracleValue(1.0, 1.0 + 2**-12, True, 93, "mpmath")]  # exact value inside the rounding interval
    m = measure(torch.tensor([1.0], dtype=torch.float16), oracle, torch.float16)
    assert m["ulps"] == 0 and m["abs_error"] == 2**-12


@pytest.mark.parametrize(
    ("output", "oracle", "accepted"),
    [(math.nan, math.inf, "accepted_nan"), (math.inf, math.nan, "accepted_inf"), (math.inf, 1.0, "accepted_inf")],
)
def test_accepted_nonfinite_results_get_an_outcome_of_their_own(output, oracle, accepted):
    """Issue 17: an inf/NaN the verdicts accept is never labelled a failure."""
    special = measure(torch.tensor([output]), _oracle(oracle), torch.float32, special_input=np.array([True]))
    assert special["verdict"] == "ok" and special["outcome"] == accepted
    plain = measure(torch.tensor([output]), _oracle(oracle), torch.float32)
    assert plain["verdict"] == "unstable" and plain["outcome"] in FAILURE_OUTCOMES


def test_accepted_outcomes_for_an_overflowing_mean():
    accept = np.array([True])
    m = measure(torch.tensor([math.inf]), _oracle(1e38), torch.float32, accept_nonfinite=accept)
    assert m["verdict"] == "ok" and m["outcome"] == "accepted_inf"


@given(
    st.lists(st.sampled_from([0.0, 1.0, 1.5, 65504.0, math.inf, -math.inf, math.nan]), min_size=1, max_size=4),
    st.lists(st.sampled_from([0.0, 1.0, 65504.0, math.inf, math.nan]), min_size=4, max_size=4),
    st.lists(st.booleans(), min_size=4, max_size=4),
    st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_no_ok_verdict_carries_a_failure_outcome(outputs, oracles, special, accept):
    """Whatever the inputs, a failure outcome is unstable, and ok/inaccurate come with a non-failure outcome."""
    n = len(outputs)
    flags = {"special_input": np.array(special[:n]), "accept_nonfinite": np.array(accept[:n])}
    m = measure(torch.tensor(outputs, dtype=torch.float16), _oracle(*oracles[:n]), torch.float16,
                allowed=np.full(n, 1e-3), **flags)  # fmt: skip
    assert m["outcome"] in OUTCOMES
    if m["outcome"] in FAILURE_OUTCOMES:
        assert m["verdict"] == "unstable"
    if m["verdict"] in ("ok", "inaccurate"):
        assert m["outcome"] in {"exact", "finite_error"} | ACCEPTED_OUTCOMES


def test_accept_outcomes_renames_only_accepted_spurious_results():
    outcomes = np.array(["spurious_nan", "spurious_nan", "spurious_inf", "missing_nonfinite", "exact"])
    verdicts = np.array(["ok", "unstable", "ok", "unstable", "ok"])
    renamed = accept_outcomes(outcomes, verdicts)
    assert list(renamed) == ["accepted_nan", "spurious_nan", "accepted_inf", "missing_nonfinite", "exact"]
