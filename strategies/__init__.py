"""Hypothesis strategies for extreme cross-entropy inputs.

``cases()`` draws whole cases; ``format_values``, ``near_values`` and ``row_strategy``
are the building blocks; ``with_contract`` adds drawn options to cases, for users who write their own ``@given`` tests.
"""

from strategies.cases import Case, anchor_cases, cases, class_counts
from strategies.contract import Contract, with_contract
from strategies.floats import format_values, near_values
from strategies.options import class_weights, loss_options, probability_rows
from strategies.regimes import LARGE_VOCABULARIES, REGIMES, row_strategy

__all__ = [
    "LARGE_VOCABULARIES",
    "REGIMES",
    "Case",
    "Contract",
    "anchor_cases",
    "cases",
    "class_counts",
    "class_weights",
    "format_values",
    "loss_options",
    "near_values",
    "probability_rows",
    "row_strategy",
    "with_contract",
]
