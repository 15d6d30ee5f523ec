"""Floating-point formats the harness grades: constants, correct rounding, ULP ordinals.

Every value of the four formats is exactly representable in float64, so a Python
float carries any input or output of the harness without loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

__all__ = [
    "FORMATS",
    "Format",
    "bit_pattern",
    "format_of",
    "parse_dtype",
    "round_rational",
    "round_scaled",
    "ulp_distance",
]


@dataclass(frozen=True)
class Format:
    """A binary floating-point format: p significand bits, normal exponents emin..emax."""

    name: str
    dtype: torch.dtype
    precision: int  # significand bits, implicit bit included
    emin: int  # exponent of the smallest normal number
    emax: int  # exponent of the largest finite number
    bits: int  # storage width
    int_dtype: torch.dtype  # same-width integer type, for bit patterns

    @property
    def unit_roundoff(self) -> float:
        return 2.0**-self.precision

    @property
    def max_finite(self) -> float:
        return (2.0 - 2.0 ** (1 - self.precision)) * 2.0**self.emax

    @property
    def smallest_normal(self) -> float:
        return 2.0**self.emin

    @property
    def smallest_subnormal(self) -> float:
        return 2.0**self.quantum_exponent

    @property
    def quantum_exponent(self) -> int:
        """Exponent of the spacing of subnormals (the finest grid of the format)."""
        return self.emin - self.precision + 1

    @property
    def exp_overflow(self) -> float:
        """exp(x) rounds to +inf in this format for x >= this value (ln of the overflow boundary)."""
        return math.log(2.0 - 2.0**-self.precision) + self.emax * math.log(2.0)

    @property
    def exp_underflow(self) -> float:
        """exp(x) rounds to 0 in this format for x < this value (ln of half the smallest subnormal)."""
        return (self.quantum_exponent - 1) * math.log(2.0)

    @property
    def max_ordinal(self) -> int:
        """Ordinal of +inf: one past the largest finite value."""
        return int(torch.tensor(math.inf, dtype=self.dtype).view(self.int_dtype).item())


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("float16", torch.float16, 11, -14, 15, 16, torch.int16),
        Format("bfloat16", torch.bfloat16, 8, -126, 127, 16, torch.int16),
        Format("float32", torch.float32, 24, -126, 127, 32, torch.int32),
        Format("float64", torch.float64, 53, -1022, 1023, 64, torch.int64),
    )
}
_BY_DTYPE = {f.dtype: f for f in FORMATS.values()}
_ALIASES = {
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "fp32": "float32",
    "float": "float32",
    "fp64": "float64",
    "double": "float64",
}


def format_of(dtype: torch.dtype) -> Format:
    """The Format of a torch dtype; ValueError for dtypes the harness does not grade."""
    try:
        return _BY_DTYPE[dtype]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype}; expected one of {', '.join(FORMATS)}") from None


def parse_dtype(name: str) -> Format:
    """Format from a user-facing name such as 'float16', 'bf16' or 'torch.float32'."""
    key = name.strip().lower().removeprefix("torch.")
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(FORMATS)}")
    return FORMATS[key]


def round_scaled(man: int, exp: int, fmt: Format, *, sticky: bool = False) -> float:
    """Round the exact non-negative value man * 2**exp to fmt, to nearest, ties to even.

    Subnormals are kept, and results beyond the largest finite value become +inf
    (IEEE 754 overflow: round with unbounded exponent, then compare).
    ``sticky`` says the true value is a positive infinitesimal above man * 2**exp,
    which decides exact ties upward and nothing else.
    """
    if man < 0:
        raise ValueError("round_scaled takes non-negative values")
    if man == 0:
        return 0.0
    top = exp + man.bit_length() - 1  # exponent of the leading bit
    if top > 1024:  # at least 2**1025: beyond every format's range
        return math.inf
    quantum = max(top, fmt.emin) - fmt.precision + 1
    shift = quantum - exp
    if shift > man.bit_length():  # below half the quantum: 0 (and 1 << shift could take gigabytes)
        return 0.0
    if shift <= 0:
        kept = man << -shift
    else:
        kept = man >> shift
        rest = man - (kept << shift)
        half = 1 << (shift - 1)
        if rest > half or (rest == half and (sticky or kept & 1)):
            kept += 1
    value = math.ldexp(kept, quantum) if quantum + kept.bit_length() <= 1024 else math.inf
    return math.inf if value > fmt.max_finite else value


def round_rational(value: Fraction, fmt: Format) -> float:
    """Round an exact rational to fmt, to nearest, ties to even (subnormals kept, overflow to ±inf).

    Used where a quantity is rational and may sit exactly on a rounding midpoint (the
    gradient of tied logits, 1/n times dyadic factors), which no interval enclosure decides.
    """
    if value == 0:
        return 0.0
    sign = -1.0 if value < 0 else 1.0
    num, den = abs(value.numerator), value.denominator
    top = num.bit_length() - den.bit_length()  # the leading bit's exponent, within 1
    exp = max(top, fmt.emin) - fmt.precision - 3  # at least two bits below the quantum
    scaled, rest = divmod(num << -exp, den) if exp < 0 else divmod(num, den << exp)
    return sign * round_scaled(scaled, exp, fmt, sticky=rest != 0)


def bit_pattern(value: torch.Tensor) -> str:
    """Hex bit pattern of a 0-d tensor in its own dtype, e.g. '0x7c00' for float16 inf."""
    fmt = format_of(value.dtype)
    raw = int(value.detach().cpu().reshape(()).view(fmt.int_dtype).item())
    return f"0x{raw & ((1 << fmt.bits) - 1):0{fmt.bits // 4}x}"


def ordinals(values: torch.Tensor) -> np.ndarray:
    """Map floats to integers that count representable values: +0 and -0 both map to 0."""
    fmt = format_of(values.dtype)
    raw = values.detach().cpu().contiguous().view(fmt.int_dtype).to(torch.int64).numpy()
    magnitude = raw & ((1 << (fmt.bits - 1)) - 1)
    return np.where(raw < 0, -magnitude, magnitude)


def ulp_distance(computed: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """Number of floats of the dtype between two same-dtype tensors, as float64.

    0 and -0 are equal; two NaNs are equal; a NaN against a number counts as the
    largest distance the format has (2**bits).
    """
    if computed.dtype != reference.dtype:
        raise ValueError(f"dtype mismatch: {computed.dtype} vs {reference.dtype}")
    fmt = format_of(computed.dtype)
    a, b = ordinals(computed), ordinals(reference)
    # Unsigned subtraction of the larger minus the smaller is exact below 2**64.
    hi, lo = np.maximum(a, b).view(np.uint64), np.minimum(a, b).view(np.uint64)
    distance = (hi - lo).astype(np.float64)
    nan_a = torch.isnan(computed).cpu().numpy()
    nan_b = torch.isnan(reference).cpu().numpy()
    distance = np.where(nan_a | nan_b, float(2**fmt.bits), distance)
    return np.where(nan_a & nan_b, 0.0, distance)
