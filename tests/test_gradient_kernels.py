"""Gradient bug classes (tests/implementations/gradients.py) graded directly against the certified oracle.

An implementation is *flagged* on an input when some element of its gradient with respect
to the logits is farther from the oracle's exact gradient than the allowance
(harness.grading.allowance.gradient_allowance), or is NaN/inf where the oracle is finite,
or is not NaN where the oracle is NaN. Each bug class must be flagged on an input where it
bites in every dtype where it bites; the sound ones must pass every input in all four dtypes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.formats import FORMATS
from harness.grading.allowance import gradient_allowance
from harness.oracle.gradient import gradient
from harness.oracle.options import LossOptions
from tests.implementations import gradients

DTYPES = tuple(FORMATS)
INF = math.inf
UPSTREAM = (1.0, 0.5, 0.0, -2.0, 1e-3, 1e3)  # cycled over the rows of a case


@dataclass(frozen=True)
class Case:
    rows: torch.Tensor  # (N, C) float64, values of the case's dtype
    targets: torch.Tensor  # (N,) int64
    upstream: torch.Tensor  # (N,) float64 for reduction "none", () for "sum"/"mean": values of the dtype
    options: LossOptions = LossOptions()


def make_case(rows, targets, dtype: str, upstream=None, options: LossOptions = LossOptions()) -> Case:
    """Rows and upstream gradients rounded to the dtype (the oracle sees exactly what the kernel sees)."""
    torch_dtype = FORMATS[dtype].dtype
    x = torch.as_tensor(rows, dtype=torch.float64).to(torch_dtype).to(torch.float64)
    t = torch.as_tensor(targets, dtype=torch.int64)
    if upstream is None:
        upstream = [UPSTREAM[i % len(UPSTREAM)] for i in range(len(t))]
    g = torch.as_tensor(upstream, dtype=torch.float64).to(torch_dtype).to(torch.float64)
    return Case(x, t, g, options)


def implementation_gradient(fn, case: Case, dtype: str, **kwargs) -> torch.Tensor:
    """∂(Σ_i g_i L_i)/∂x (or g · reduced loss) by torch.autograd.grad, in the logits' dtype."""
    torch_dtype = FORMATS[dtype].dtype
    x = case.rows.to(torch_dtype).requires_grad_()
    out = fn(x, case.targets, **kwargs)
    (grad,) = torch.autograd.grad(out, x, grad_outputs=case.upstream.to(torch_dtype).reshape(out.shape))
    assert grad.dtype == torch_dtype and grad.shape == x.shape
    return grad


def factors(case: Case) -> np.ndarray:
    """Each row's upstream factor g'_i: g_i, g or g / W (0 for ignored samples)."""
    ignored = (case.targets == case.options.ignore_index).numpy()
    if case.options.reduction == "none":
        g = case.upstream.numpy()
    else:
        g = np.full(len(case.targets), float(case.upstream))
        if case.options.reduction == "mean":
            g = g / max(int((~ignored).sum()), 1)
    return np.where(ignored, 0.0, g)


def grade(grad: torch.Tensor, case: Case, dtype: str) -> dict:
    """Elementwise comparison with the oracle: the flagged elements and the worst ratio error / allowance."""
    fmt = FORMATS[dtype]
    oracle = gradient(case.rows, case.targets, None, case.options, case.upstream, fmt)
    assert oracle.certified.all()
    allowance = gradient_allowance(case.rows, case.targets, None, case.options, factors(case), fmt, fmt)
    got = grad.to(torch.float64).numpy()
    exact = oracle.exact
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(got - exact)
        ratio = np.where(np.isfinite(exact), error / allowance, 0.0)
        flagged = np.isfinite(exact) & (~np.isfinite(got) | (error > allowance))
        flagged |= np.isnan(exact) & ~np.isnan(got)
    ratio = np.where(np.isnan(ratio), np.inf, ratio)
    return {"flagged": flagged, "ratio": ratio, "oracle": oracle, "allowance": allowance, "got": got}


def is_flagged(fn, case: Case, dtype: str, **kwargs) -> bool:
    return bool(grade(implementation_gradient(fn, case, dtype, **kwargs), case, dtype)["flagged"].any())


# --- inputs ---------------------------------------------------------------------------------


def confident(dtype: str) -> Case:
    """p_t within a 16-bit half-ULP of 1 (margins 8 to 30); the exact gradient −(1 − p_t) is far from 0."""
    rows = [[8.0, 0.0], [12.0, 0.5], [0.0, 20.0], [30.0, 1.0], [9.0, 0.0], [1.0, 2.0, 16.0, -3.0, 0.0, 2.5]]
    rows = [r + [-30.0] * (6 - len(r)) for r in rows]  # pad to 6 classes with negligible ones
    return make_case(rows, [0, 0, 1, 0, 0, 2], dtype, upstream=[1.0, 1.0, 0.5, -2.0, 1e-3, 1e3])


def masked(dtype: str) -> Case:
    """−inf logits: leading (one, two), scattered, and at the target (loss +inf, gradient finite)."""
    rows = [[-INF, 1.0, 2.0, 0.5], [-INF, -INF, 3.0, 1.0], [1.0, -INF, 2.0, -INF], [1.0, -INF, 2.0, 0.0]]
    return make_case(rows, [2, 3, 0, 1], dtype, upstream=[1.0, -2.0, 0.5, 1.0])


def masked_not_leading(dtype: str) -> Case:
    rows = [[1.0, -INF, 2.0, 0.5], [3.0, -INF, -INF, 1.0], [0.0, 1.0, -INF, -INF]]
    return make_case(rows, [2, 3, 1], dtype)


def large(dtype: str) -> Case:
    """|logits| of 1e4 (finite in every dtype): overflow without the shift, and all-negative rows."""
    rows = [[1e4, 0.0, -1e4], [1e4, 9992.0, 9996.0], [-1e4, -9996.0, -9992.0], [200.0, 199.0, 150.0]]
    return make_case(rows, [0, 2, 1, 1], dtype)


def random_rows(dtype: str, seed: int) -> list[Case]:
    """Seeded batches of 2 to 300 classes, scales 0.5 to 40, a third made confident (margin 6 to 25)."""
    rng = np.random.default_rng(seed)
    cases = []
    for n_classes in (2, 7, 33, 300):
        n_rows = 12
        rows = rng.standard_normal((n_rows, n_classes)) * rng.choice([0.5, 5.0, 40.0], size=(n_rows, 1))
        targets = rng.integers(0, n_classes, size=n_rows)
        for i in range(0, n_rows, 3):
            rows[i, targets[i]] = rows[i].max() + rng.uniform(6.0, 25.0)
        cases.append(make_case(rows.tolist(), targets.tolist(), dtype))
    return cases


def all_cases(dtype: str) -> list[Case]:
    return [confident(dtype), masked(dtype), masked_not_leading(dtype), large(dtype), *random_rows(dtype, 7)]


# --- sound implementations: never flagged ---------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(gradients.SOUND))
def test_sound_implementations_pass_every_input(name, dtype):
    fn = getattr(gradients, name)
    for case in all_cases(dtype):
        graded = grade(implementation_gradient(fn, case, dtype), case, dtype)
        bad = np.argwhere(graded["flagged"])
        assert not len(bad), (
            f"{name} {dtype}: element {tuple(bad[0])} of rows {case.rows.tolist()} got "
            f"{graded['got'][tuple(bad[0])]!r}, exact {graded['oracle'].exact[tuple(bad[0])]!r}, "
            f"allowance {graded['allowance'][tuple(bad[0])]!r}"
        )


def test_sound_implementations_give_nan_only_on_nan_rows():
    """+inf and all −inf rows: the oracle's gradient is NaN, and so are the sound ones' (g ≠ 0)."""
    for dtype in DTYPES:
        case = make_case([[INF, 1.0, 0.0], [-INF, -INF, -INF], [1.0, 2.0, 3.0]], [0, 1, 2], dtype,
                         upstream=[1.0, -2.0, 0.5])  # fmt: skip
        for name in gradients.SOUND:
            graded = grade(implementation_gradient(getattr(gradients, name), case, dtype), case, dtype)
            assert np.isnan(graded["oracle"].exact[:2]).all() and not graded["flagged"].any(), (name, dtype)


# --- bug classes: flagged where they bite, and only there ------------------------------------------

# bug class → the input where it bites (upstream gradients, confident rows, masked or large logits)
BITING_INPUT = {
    "grad_pt_rounded_to_16_bits": confident,
    "backward_in_low_precision": confident,
    "ignores_grad_output": confident,
    "nan_at_masked_logits": masked,
    "unshifted_softmax_backward": large,
    "forgets_one_hot": lambda dtype: random_rows(dtype, 7)[1],
    "doubled_one_hot": lambda dtype: random_rows(dtype, 7)[1],
}


@pytest.mark.parametrize("name", list(BITING_INPUT))
def test_bug_class_flagged_in_every_dtype_where_it_bites(name):
    assert set(BITING_INPUT) | {"mean_over_ignored_rows"} == set(gradients.BUG_CLASSES)
    fn = getattr(gradients, name)
    flagged = {dtype for dtype in DTYPES if is_flagged(fn, BITING_INPUT[name](dtype), dtype)}
    assert flagged == set(gradients.BITES[name])


@pytest.mark.parametrize("name", ["grad_pt_rounded_to_16_bits", "backward_in_low_precision"])
def test_sixteen_bit_backwards_are_sound_in_float32_and_float64(name):
    """Rounding to the logits' dtype is harmless when that dtype is the working precision."""
    for dtype in ("float32", "float64"):
        assert not any(is_flagged(getattr(gradients, name), case, dtype) for case in all_cases(dtype))


def test_confident_row_gets_zero_from_the_rounded_p_t():
    """The mechanism: p_t = 1 − 3.4e-4 rounds to 1 in bfloat16, so the target entry is 0, not −3.4e-4."""
    case = make_case([[8.0, 0.0]], [0], "bfloat16", upstream=[1.0])
    graded = grade(implementation_gradient(gradients.grad_pt_rounded_to_16_bits, case, "bfloat16"), case, "bfloat16")
    assert graded["got"][0, 0] == 0.0 and graded["oracle"].value[0, 0] == pytest.approx(-3.35e-4, rel=1e-2)
    assert graded["flagged"].tolist() == [[True, False]]  # the other entry is rounded once: right


def spread_rows(dtype: str) -> Case:
    """Rows spread over tens of nats with no confident prediction (every p_t < 0.5)."""
    rng = np.random.default_rng(11)
    rows = rng.standard_normal((12, 40)) * 8.0
    targets = [int(np.argsort(r)[-3]) for r in rows]  # the third largest logit
    return make_case(rows.tolist(), targets, dtype)


def test_low_precision_backward_also_errs_on_spread_out_rows():
    """In 16 bits the shift x − m rounds, so exp(x − m) errs by |x − m| u: caught without confident rows."""
    for dtype in ("float16", "bfloat16"):
        case = spread_rows(dtype)
        assert (torch.softmax(case.rows, dim=1)[torch.arange(12), case.targets] < 0.5).all()
        assert is_flagged(gradients.backward_in_low_precision, case, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ignores_grad_output_passes_only_with_unit_upstream(dtype):
    for case in all_cases(dtype):
        ones = make_case(case.rows, case.targets, dtype, upstream=[1.0] * len(case.targets))
        assert not is_flagged(gradients.ignores_grad_output, ones, dtype)
    for g in (0.0, 0.5, -2.0, 1e-3, 1e3):
        case = make_case([[0.5, 1.0, -1.0]], [1], dtype, upstream=[g])
        assert is_flagged(gradients.ignores_grad_output, case, dtype), g


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_only_after_a_leading_masked_logit(dtype):
    case = masked(dtype)
    graded = grade(implementation_gradient(gradients.nan_at_masked_logits, case, dtype), case, dtype)
    assert graded["flagged"].any(axis=1).tolist() == [True, True, False, False]  # the rows starting with −inf
    assert np.isnan(graded["got"][:2]).all() and np.isfinite(graded["oracle"].exact).all()
    off_target = torch.isneginf(case.rows) & (torch.arange(4) != case.targets.unsqueeze(1))
    assert (graded["oracle"].value[off_target.numpy()] == 0).all()  # 0 at masked logits (−g at a masked target)
    assert not is_flagged(gradients.nan_at_masked_logits, masked_not_leading(dtype), dtype)
    x = case.rows.to(FORMATS[dtype].dtype)  # the forward is right
    assert torch.equal(
        gradients.nan_at_masked_logits(x, case.targets), gradients.custom_float32_backward(x, case.targets)
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_unshifted_backward_fails_only_on_large_magnitudes(dtype):
    case = large(dtype)
    graded = grade(implementation_gradient(gradients.unshifted_softmax_backward, case, dtype), case, dtype)
    assert graded["flagged"].any(axis=1).tolist()[:3] == [True, True, True]  # overflow, overflow, underflow
    assert not any(is_flagged(gradients.unshifted_softmax_backward, case, dtype) for case in random_rows(dtype, 3)[:2])


@pytest.mark.parametrize("name", ["forgets_one_hot", "doubled_one_hot"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_hot_bugs_flag_every_row_with_nonzero_upstream(name, dtype):
    case = random_rows(dtype, 5)[2]
    graded = grade(implementation_gradient(getattr(gradients, name), case, dtype), case, dtype)
    assert graded["flagged"].any(axis=1).tolist() == (case.upstream != 0).tolist()


# --- mean over ignored rows ------------------------------------------------------------------


def mean_case(dtype: str, g: float, ignore: bool) -> Case:
    rng = np.random.default_rng(1)
    rows = (rng.standard_normal((6, 5)) * 3).tolist()
    targets = [0, 4, -100, 2, -100, 1] if ignore else [0, 4, 3, 2, 1, 1]
    return make_case(rows, targets, dtype, upstream=g, options=LossOptions(reduction="mean"))


def sound_mean(logits, targets, ignore_index=-100, reduction="mean"):
    wide = logits.double() if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(wide, targets, ignore_index=ignore_index, reduction=reduction).to(logits.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mean_over_ignored_rows_flagged_only_when_targets_are_ignored(dtype):
    for g in (1.0, -0.5):
        assert is_flagged(gradients.mean_over_ignored_rows, mean_case(dtype, g, ignore=True), dtype)
        assert not is_flagged(gradients.mean_over_ignored_rows, mean_case(dtype, g, ignore=False), dtype)
        for case in (mean_case(dtype, g, ignore=True), mean_case(dtype, g, ignore=False)):
            assert not is_flagged(sound_mean, case, dtype)
    for reduction, g in (("sum", 0.5), ("none", None)):
        case = mean_case(dtype, 1.0, ignore=True)
        upstream = g if g is not None else [UPSTREAM[i] for i in range(6)]
        case = make_case(case.rows, case.targets, dtype, upstream=upstream, options=LossOptions(reduction=reduction))
        assert not is_flagged(gradients.mean_over_ignored_rows, case, dtype, reduction=reduction)
    # the forward is right: the mean over the four non-ignored rows
    case = mean_case(dtype, 1.0, ignore=True)
    x = case.rows.to(FORMATS[dtype].dtype)
    assert torch.equal(gradients.mean_over_ignored_rows(x, case.targets), sound_mean(x, case.targets))


# --- an underflowing softmax times a large upstream ------------------------------------------------


@pytest.mark.parametrize("dtype, row", [("float32", [0.0, -104.0]), ("float32", [0.0, -100.0]),
                                        ("float64", [0.0, -745.0])])  # fmt: skip
def test_sound_backward_with_an_underflowing_softmax_and_a_large_upstream(dtype, row):
    """p_j = e^-104 underflows in float32 (to 0 or 2^-149) before the product with g = 1e3: the
    sound float32 backward errs by about 1e3 · 2^-149 = 1.4e-42, the allowance is 1.4e-45."""
    case = make_case([row], [0], dtype, upstream=[1e3])
    assert not any(is_flagged(getattr(gradients, name), case, dtype) for name in gradients.SOUND)
