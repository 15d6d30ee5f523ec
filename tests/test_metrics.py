import math

import pytest
import torch

from harness.grading.metrics import measure
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
