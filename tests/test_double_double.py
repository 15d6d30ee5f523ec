"""Double-double primitives against exact rationals and 600-bit mpmath: the error-free
transformations are exact, exp_dd, log1p_dd and the row sums stay within their proved
bounds, and the numba and NumPy kernels compute the same terms bit for bit."""

from fractions import Fraction

import mpmath
import numpy as np
import pytest

from harness.oracle import dd_kernels
from harness.oracle import double_double as dd

RNG = np.random.default_rng(18)


def _spread(count: int, low: int, high: int) -> np.ndarray:
    """Random signed floats with exponents spread over [low, high]."""
    return RNG.choice([-1.0, 1.0], count) * RNG.uniform(1, 2, count) * np.exp2(RNG.integers(low, high, count))


def test_error_free_transformations_are_exact():
    a, b = _spread(3000, -300, 300), _spread(3000, -300, 300)
    s, e = dd.two_sum(a, b)
    p, f = dd.two_prod(a, b)
    big, small = np.maximum(abs(a), abs(b)) * np.sign(a), np.minimum(abs(a), abs(b))
    fs, fe = dd.fast_two_sum(big, small)
    for i in range(len(a)):
        fa, fb = Fraction(a[i]), Fraction(b[i])
        assert Fraction(s[i]) + Fraction(e[i]) == fa + fb and s[i] == a[i] + b[i]
        assert Fraction(p[i]) + Fraction(f[i]) == fa * fb and p[i] == a[i] * b[i]
        assert Fraction(fs[i]) + Fraction(fe[i]) == Fraction(big[i]) + Fraction(small[i])


def _exp_arguments() -> tuple[np.ndarray, np.ndarray]:
    """Differences x - m as exact double-doubles, over the whole range exp_dd takes."""
    x = np.concatenate([RNG.standard_normal(1500) * 300, RNG.standard_normal(700) * 3, _spread(400, -60, 0)])
    gap = np.abs(RNG.standard_normal(x.shape)) * RNG.choice([1e-9, 1.0, 100.0], x.shape)
    m = np.maximum(x, RNG.standard_normal(x.shape) * 300) + gap
    edges = np.array([0.0, -0.0, -1e-300, -708.0, -707.99999, -745.0, -1e4, -np.inf, -np.log(2) / 2048])
    dh, dl = dd.two_sum(x, -m)
    return np.concatenate([dh, edges]), np.concatenate([dl, np.zeros_like(edges)])


def test_exp_dd_is_within_its_bound():
    dh, dl = _exp_arguments()
    assert (dl != 0).mean() > 0.3  # the low parts matter in most of these
    hi, lo = dd.exp_dd(dh, dl)
    worst = mpmath.mpf(0)
    with mpmath.workprec(600):
        for i in range(len(dh)):
            if not dh[i] >= dd.EXP_MIN:
                assert hi[i] == lo[i] == 0.0
                continue
            exact = mpmath.exp(mpmath.mpf(dh[i]) + mpmath.mpf(dl[i]))
            got = mpmath.mpf(hi[i]) + mpmath.mpf(lo[i])
            assert abs(lo[i]) <= dd.U * hi[i]  # normalized
            error = abs(got - exact)
            assert error <= dd.EXP_REL * got + dd.EXP_ABS, (dh[i], dl[i])
            worst = max(worst, (error - dd.EXP_ABS) / got)
    assert worst > 2.0**-100  # the check measures something: far beyond float64, short of the bound
    assert dd.exp_dd(np.array([0.0]))[0][0] == 1.0


@pytest.mark.skipif(dd_kernels.BACKEND != "numba", reason="numba is not installed")
def test_numba_and_numpy_kernels_agree_bit_for_bit():
    x = RNG.standard_normal((5, 3001)) * np.array([[3.0], [300.0], [1e-3], [1e5], [30.0]])
    x[1, :50] = -np.inf
    x[3, 7] = -1e308
    m, skip = x.max(axis=1), x.argmax(axis=1)
    fast = dd_kernels.shifted_exp_terms(x, m, skip, "numba")
    slow = dd_kernels.shifted_exp_terms(x, m, skip, "numpy")
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow))
    assert (fast[0][np.arange(5), skip] == 0).all()


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_row_sums_enclose_the_exact_sum(backend):
    if backend == "numba" and dd_kernels.BACKEND != "numba":
        pytest.skip("numba is not installed")
    for n, scale in [(1, 1.0), (7, 3.0), (4096, 3.0), (4096, 200.0), (70_000, 10.0)]:
        x = RNG.standard_normal((3, n)) * scale
        x[2] = np.where(RNG.random(n) < 0.5, -np.inf, x[2])
        m, skip = x.max(axis=1), x.argmax(axis=1)
        hi, lo = dd_kernels.shifted_exp_terms(x, m, skip, backend)
        s, e, bound = dd_kernels.shifted_exp_sums(x, m, skip, backend)
        s_np, e_np, bound_np = dd.sum_rows(hi, lo)
        for i in range(3):
            exact = sum(map(Fraction, hi[i])) + sum(map(Fraction, lo[i]))
            for got, b in [
                (Fraction(s[i]) + Fraction(e[i]), bound[i]),
                (Fraction(s_np[i]) + Fraction(e_np[i]), bound_np[i]),
            ]:
                assert abs(got - exact) <= Fraction(b)
                assert b <= 2.0**-86 * float(exact) + 2.0**-1000


def test_log1p_dd_is_within_its_bound():
    sh = np.concatenate(
        [[0.0, 2.0**-1000, 1e-300, 2.0**-40, 3.3e-4, 3.4e-4, 0.5, 1.0, 1.7, 2.0**21], _spread(400, -60, 21)]
    )
    sh = np.abs(sh)
    sl = sh * RNG.uniform(-1, 1, sh.shape) * 2.0**-53
    y, yl, bound = dd.log1p_dd(sh, sl)
    with mpmath.workprec(600):
        for i in range(len(sh)):
            exact = mpmath.log1p(mpmath.mpf(sh[i]) + mpmath.mpf(sl[i]))
            error = abs(mpmath.mpf(y[i]) + mpmath.mpf(yl[i]) - exact)
            assert error <= bound[i], sh[i]
            assert bound[i] <= 2.0**-84 * exact + 2.0**-1059  # and far tighter for small s:
            assert sh[i] > 2.0**-20 or bound[i] <= 2.0**-99 * exact + 2.0**-1059
