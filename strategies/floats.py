"""Dtype-aware float strategies built from sign, exponent and mantissa.

Hypothesis has no bfloat16 width, and ``st.floats(width=16)`` mostly draws zeros. Drawing
the three fields separately gives every binade of every format an even chance, and
integer mantissa choices let targeted search move one ULP at a time.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from harness.formats import Format, format_of, parse_dtype

__all__ = ["as_format", "format_values", "near_values", "round_to_format", "ulp_of"]


def as_format(dtype: torch.dtype | str | Format) -> Format:
    """Accept a torch dtype, a dtype name or a Format; InvalidArgument otherwise."""
    if isinstance(dtype, Format):
        return dtype
    try:
        return parse_dtype(dtype) if isinstance(dtype, str) else format_of(dtype)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


def round_to_format(value: float, fmt: Format) -> float:
    """Round a Python float to the nearest value of fmt (ties to even, overflow to inf)."""
    return torch.tensor(value, dtype=torch.float64).to(fmt.dtype).to(torch.float64).item()


def ulp_of(value: float, fmt: Format) -> float:
    """Spacing of fmt at |value| (the subnormal spacing below the smallest normal)."""
    if not math.isfinite(value):
        raise ValueError(f"no ulp at {value}")
    exponent = max(math.frexp(abs(value))[1] - 1, fmt.emin) if value else fmt.emin
    return math.ldexp(1.0, exponent - fmt.precision + 1)


def format_values(
    dtype: torch.dtype | str | Format,
    *,
    min_exponent: int | None = None,
    max_exponent: int | None = None,
    sign: int | None = None,
    subnormals: bool = False,
) -> st.SearchStrategy[float]:
    """Finite values of a format whose binary exponent lies in [min_exponent, max_exponent].

    Values are ``(-1)**s * (1 + m / 2**(p-1)) * 2**e``, returned as Python floats (exact:
    every graded format embeds in float64). Every binade in range is equally likely.
    ``sign`` fixes the sign (+1 or -1); ``subnormals=True`` adds the subnormal binade,
    and zero, to the choices. Exponents default to the whole normal range.
    """
    fmt = as_format(dtype)
    lo = fmt.emin if min_exponent is None else min_exponent
    hi = fmt.emax if max_exponent is None else max_exponent
    if not fmt.emin <= lo <= hi <= fmt.emax:
        raise InvalidArgument(
            f"need {fmt.emin} <= min_exponent <= max_exponent <= {fmt.emax} for {fmt.name}, "
            f"got min_exponent={min_exponent}, max_exponent={max_exponent}"
        )
    if sign not in (None, 1, -1):
        raise InvalidArgument(f"sign must be None, 1 or -1, got {sign!r}")
    # The exponent and the mantissa are separate integer choices: Hypothesis draws a small
    # range (the exponent) close to uniformly but favours small values in a huge one, so a
    # single rank over a float64 range would starve its upper binades. Mantissa steps are
    # ULP steps, so targeted search still moves one float at a time within a binade.
    mantissa_bits = fmt.precision - 1
    first = fmt.emin - 1 if subnormals else lo  # emin - 1 stands for the subnormal binade and zero
    signs = st.just(sign) if sign is not None else st.sampled_from((1, -1))
    fields = st.tuples(signs, st.integers(first, hi), st.integers(0, (1 << mantissa_bits) - 1))

    def build(drawn: tuple[int, int, int]) -> float:
        s, e, m = drawn
        if e < fmt.emin:
            return s * math.ldexp(m, fmt.quantum_exponent)
        return s * math.ldexp((1 << mantissa_bits) + m, e - mantissa_bits)

    return fields.map(build)


def near_values(dtype: torch.dtype | str | Format, center: float, *, max_ulps: int = 4) -> st.SearchStrategy[float]:
    """Values of the format within ``max_ulps`` steps of ``center`` (rounded into the format first).

    Steps are taken on the format's own grid, so targeted search moves one ULP at a time.
    """
    fmt = as_format(dtype)
    if max_ulps < 0:
        raise InvalidArgument(f"max_ulps must be >= 0, got {max_ulps}")
    base = round_to_format(center, fmt)
    if not math.isfinite(base):
        raise InvalidArgument(f"center {center} is not finite in {fmt.name}")
    ordinal = int(torch.tensor(base, dtype=fmt.dtype).view(fmt.int_dtype).item())

    def step(k: int) -> float:
        bits = torch.tensor(ordinal + k * (1 if base >= 0 else -1), dtype=torch.int64).to(fmt.int_dtype)
        value = bits.view(fmt.dtype).to(torch.float64).item()
        return value if math.isfinite(value) else base

    return st.integers(-max_ulps, max_ulps).map(step)
