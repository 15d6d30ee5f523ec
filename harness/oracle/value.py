"""The oracle's answer for one quantity: a correctly rounded value and how it was decided."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_PRECISION", "TIERS", "OracleValue"]

TIERS = ("float64", "double-double", "mpmath")  # cheapest first
MAX_PRECISION = 4096  # working bits past which a value is returned uncertified


@dataclass(frozen=True)
class OracleValue:
    """The exact loss rounded to a format, plus how it was decided."""

    value: float  # correctly rounded to the format (nan/inf allowed); a best estimate if not certified
    exact: float  # the exact loss rounded to float64 (nan/inf allowed)
    certified: bool
    precision: int  # working bits that decided it (0 for special values)
    method: str  # "special", "exact", "float64", "double-double" or "mpmath"
