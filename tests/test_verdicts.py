import math

import numpy as np
import pytest
import torch

from harness import oracle
from harness.formats import FORMATS
from harness.grading.verdicts import Policy, allowance, judge

FP32 = FORMATS["float32"]


def _judge(outcome, ulps=0.0, abs_error=0.0, allowed=1.0, output=1.0, special=False, policy=Policy(), accept=None):
    verdict, ratio = judge(
        np.array([outcome]), np.array([ulps]), np.array([abs_error]), np.array([allowed]), np.array([output]),
        np.array([special]), policy, None if accept is None else np.array([accept]),
    )  # fmt: skip
    return verdict[0], ratio[0]


def test_allowance_is_shift_invariant_and_catches_rounded_lse():
    # the same row shifted by 1e8: same exact loss, same class count, so the same allowance
    row = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    shifted = row + 1e8
    loss = oracle.evaluate(row, torch.tensor([0]))[0].exact
    assert loss == oracle.evaluate(shifted, torch.tensor([0]))[0].exact
    allowed = allowance(loss, 2, FP32)
    # pytorch#11752: rounding lse = 1e8 + log 2 to float32 first returns 0 or 8, not log 2
    assert abs(0.0 - loss) > 1000 * allowed


def test_allowance_grows_with_loss_and_class_count_and_shrinks_with_precision():
    assert allowance(100.0, 2, FP32) > allowance(1.0, 2, FP32)
    assert allowance(1.0, 100_000, FP32) > allowance(1.0, 2, FP32)
    assert allowance(1.0, 2, FORMATS["float64"]) < allowance(1.0, 2, FP32) < allowance(1.0, 2, FORMATS["bfloat16"])


@pytest.mark.parametrize(
    ("args", "verdict"),
    [
        (dict(outcome="exact"), "ok"),
        (dict(outcome="finite_error", ulps=2, abs_error=0.5, allowed=1.0), "ok"),
        (dict(outcome="finite_error", ulps=9, abs_error=0.5, allowed=1.0), "inaccurate"),
        (dict(outcome="finite_error", ulps=2, abs_error=1.5, allowed=1.0), "unstable"),
        (dict(outcome="spurious_nan", output=math.nan), "unstable"),
        (dict(outcome="spurious_inf", output=math.inf), "unstable"),
        (dict(outcome="missing_nonfinite", output=1e4), "unstable"),
        (dict(outcome="raised", output=math.nan), "unstable"),
        (dict(outcome="uncertified"), "ungraded"),
        # a +inf logit: NaN is accepted where the limit is +inf, a finite answer is not
        (dict(outcome="spurious_nan", output=math.nan, special=True), "ok"),
        (dict(outcome="missing_nonfinite", output=3.0, special=True), "unstable"),
        # a mean whose rows overflow: inf is acceptable, and so is an accurate finite value
        (dict(outcome="spurious_inf", output=math.inf, accept=True), "ok"),
        (dict(outcome="finite_error", ulps=1, abs_error=0.1, accept=True), "ok"),
    ],
)
def test_verdict_rules(args, verdict):
    assert _judge(**args)[0] == verdict


def test_strict_policy_fails_inaccurate():
    assert not Policy().fails("inaccurate") and Policy(strict=True).fails("inaccurate")
    assert Policy().fails("unstable") and not Policy(strict=True).fails("ok")
    assert _judge("finite_error", ulps=3, abs_error=0.1, policy=Policy(max_ulps=2))[0] == "inaccurate"
