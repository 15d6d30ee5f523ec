"""Gradient bug classes through check (issue 15): each flagged where it bites, the sound backwards spared.

tests/test_gradient_kernels.py proves each kernel against the oracle on hand-picked rows;
here they go through ``harness.check`` as a user's kernel would: drawn cases, the case's
upstream gradients (strategies.upstream), the sandbox's backward step and the verdicts.
The fast tests run each bug class on a regime that reaches it; the default budget, all
regimes and dtypes, is the slow sweep (``--run-slow``).
"""

from __future__ import annotations

import pytest

import harness
from tests.implementations import gradients

SPEC = "tests.implementations.gradients:{}"
# a regime whose cases reach each bug (where it bites: tests/implementations/gradients.py)
REGIME = {
    "grad_pt_rounded_to_16_bits": "dominant",
    "backward_in_low_precision": "moderate",
    "ignores_grad_output": "moderate",
    "nan_at_masked_logits": "tiled",
    "unshifted_softmax_backward": "huge",
    "forgets_one_hot": "moderate",
    "doubled_one_hot": "moderate",
    "mean_over_ignored_rows": "batch",
}
FAST_EXAMPLES = 12


def _flagged_dtypes(result) -> set[str]:
    grads = result.records[result.records["quantity"] == "grad"]
    return set(grads.loc[grads["verdict"] == "unstable", "dtype"])


@pytest.mark.parametrize("bug", list(gradients.BUG_CLASSES))
def test_each_gradient_bug_class_is_flagged_where_it_bites(bug):
    result = harness.check(SPEC.format(bug), dtypes=list(gradients.BITES[bug]), regimes=[REGIME[bug]],
                           examples=FAST_EXAMPLES, grad_only=True)  # fmt: skip
    assert not result.passed
    assert set(gradients.BITES[bug]) <= _flagged_dtypes(result), result.describe()
    assert result.records.loc[result.records["quantity"] == "loss", "verdict"].ne("unstable").all()


@pytest.mark.parametrize("name", list(gradients.SOUND))
def test_sound_backwards_pass_where_the_bugs_bite(name):
    regimes = sorted(set(REGIME.values()) | {"masked", "near_overflow", "confident_mistake", "special"})
    result = harness.check(SPEC.format(name), regimes=regimes, examples=FAST_EXAMPLES // 2, grad_only=True)
    assert result.passed, result.describe()
    assert set(result.records["quantity"]) == {"grad"}


@pytest.mark.slow
@pytest.mark.parametrize("bug", list(gradients.BUG_CLASSES))
def test_check_flags_gradient_bug_class_on_its_default_budget(bug):
    result = harness.check(SPEC.format(bug))
    assert not result.passed
    assert set(gradients.BITES[bug]) <= _flagged_dtypes(result), result.describe()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(gradients.SOUND))
def test_check_passes_sound_backward_on_its_default_budget(name):
    result = harness.check(SPEC.format(name))
    assert result.passed, result.describe()
