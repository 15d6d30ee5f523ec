"""Certified oracle for softmax cross entropy: the exact value, correctly rounded, with a proof.

``cross_entropy`` and ``evaluate`` are the entry points; the tiers behind them live in
``fast_tier`` (float64 with a rigorous bound) and ``mpfr_tier`` (MPFR enclosures).
"""

from harness.oracle.core import cross_entropy, evaluate, mean_loss
from harness.oracle.mpfr_tier import row_loss
from harness.oracle.value import MAX_PRECISION, TIERS, OracleValue

__all__ = ["MAX_PRECISION", "TIERS", "OracleValue", "cross_entropy", "evaluate", "mean_loss", "row_loss"]
