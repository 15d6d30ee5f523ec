"""Hypothesis strategies for extreme cross-entropy inputs.

``cases()`` draws whole cases; ``format_values``, ``near_values`` and ``row_strategy``
are the building blocks for users who write their own ``@given`` tests.
"""

from strategies.cases import Case, anchor_cases, cases, class_counts
from strategies.floats import format_values, near_values
from strategies.regimes import LARGE_VOCABULARIES, REGIMES, row_strategy

__all__ = [
    "LARGE_VOCABULARIES",
    "REGIMES",
    "Case",
    "anchor_cases",
    "cases",
    "class_counts",
    "format_values",
    "near_values",
    "row_strategy",
]
