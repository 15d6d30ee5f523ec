"""The pytest plugin, run as a user would: a test file in a fresh pytest process."""

from __future__ import annotations

import importlib.util

import pytest

USER_TESTS = """
import pytest
import torch.nn.functional as F


def sound(logits, targets):
    return F.cross_entropy(logits, targets, reduction="none")


def naive(logits, targets):
    p = logits.exp() / logits.exp().sum(dim=1, keepdim=True)
    return -p[torch_arange(logits.shape[0]), targets].log()


def torch_arange(n):
    import torch
    return torch.arange(n)


@pytest.mark.ce_stability
def test_sound(ce_stability):
    result = ce_stability(sound, dtypes=["float32"], regimes=["moderate", "huge"])
    assert result.counts["unstable"] == 0


def test_naive(ce_stability):
    ce_stability(naive, dtypes=["float32"], regimes=["huge"])
"""


def test_fixture_passes_sound_code_and_fails_naive_code(pytester):
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("--ce-examples", "3", "--ce-max-classes", "64", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*counterexample*", "*FAILED*test_naive*"])


@pytest.mark.skipif(importlib.util.find_spec("xdist") is None, reason="pytest-xdist is not installed")
def test_fixture_works_under_xdist(pytester):
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-n", "2", "--ce-examples", "3", "--ce-max-classes", "64",
                                           "-p", "no:cacheprovider")  # fmt: skip
    result.assert_outcomes(passed=1, failed=1)


SLOW_USER_TEST = """
import time
import torch.nn.functional as F


def slow(logits, targets):
    time.sleep(3)
    return F.cross_entropy(logits, targets, reduction="none")


def test_slow(ce_stability):
    ce_stability(slow, dtypes=["float32"], regimes=["moderate"])
"""


def test_sandbox_options_reach_every_check(pytester):
    pytester.makepyfile(test_user=SLOW_USER_TEST)
    result = pytester.runpytest_subprocess("--ce-examples", "1", "--ce-timeout", "0.5", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*unstable, timeout*", "*no answer within 0.5 s*"])


GRADIENT_USER_TEST = """
import torch.nn.functional as F


def sound(logits, targets):
    return F.cross_entropy(logits.float(), targets, reduction="none").to(logits.dtype)


def doubled_gradient(logits, targets):
    x = logits.float()
    x = 2 * x - x.detach()  # the same value; twice the gradient
    return F.cross_entropy(x, targets, reduction="none").to(logits.dtype)


def test_doubled(ce_stability):
    ce_stability(doubled_gradient, dtypes=["float32"], regimes=["moderate"])


def test_graded_quantities(ce_stability):
    result = ce_stability(sound, dtypes=["float32"], regimes=["moderate"])
    print("QUANTITIES", ",".join(sorted(set(result.records["quantity"]))))


def test_own_choice_wins(ce_stability):
    result = ce_stability(sound, dtypes=["float32"], regimes=["moderate"], grad=False)
    assert set(result.records["quantity"]) == {"loss"}
"""


def test_gradient_options_choose_what_is_graded(pytester):
    pytester.makepyfile(test_user=GRADIENT_USER_TEST)
    base = ("-s", "--ce-examples", "1", "--ce-max-classes", "16", "-p", "no:cacheprovider")
    graded = pytester.runpytest_subprocess(*base)
    graded.assert_outcomes(passed=2, failed=1)
    graded.stdout.fnmatch_lines(["*QUANTITIES grad,loss*", "*in the gradient*"])
    no_grad = pytester.runpytest_subprocess(*base, "--ce-no-grad")
    no_grad.assert_outcomes(passed=3)
    no_grad.stdout.fnmatch_lines(["*QUANTITIES loss*"])
    grad_only = pytester.runpytest_subprocess(*base, "--ce-grad-only")
    grad_only.assert_outcomes(passed=2, failed=1)  # a test's own grad=False overrides --ce-grad-only
    grad_only.stdout.fnmatch_lines(["*QUANTITIES grad"])
    both = pytester.runpytest_subprocess(*base, "--ce-no-grad", "--ce-grad-only")
    assert both.ret != 0
    both.stderr.fnmatch_lines(["*--ce-no-grad and --ce-grad-only exclude each other*"])
