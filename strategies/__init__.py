"""Hypothesis strategies for extreme cross-entropy inputs.

``cases()`` draws whole cases; ``format_values``, ``near_values`` and ``row_strategy``
are the building blocks for users who write their own ``@given`` tests,
``strategies.sizes`` the class counts by structure (tile multiples, vocabulary sizes), and
``with_contract`` adds drawn options (strategies.contract) to cases.
"""

from strategies.cases import Case, anchor_cases, cases, class_counts, regime_fits
from strategies.contract import Contract, with_contract
from strategies.floats import format_values, near_values
from strategies.layouts import LAYOUT_KINDS, apply_layout
from strategies.options import class_weights, loss_options, probability_rows
from strategies.regimes import LARGE_VOCABULARIES, REGIMES, row_strategy
from strategies.sizes import BANDS, TILE_SIZES, VOCABULARIES, band_of

__all__ = [
    "BANDS",
    "LARGE_VOCABULARIES",
    "LAYOUT_KINDS",
    "REGIMES",
    "TILE_SIZES",
    "VOCABULARIES",
    "Case",
    "Contract",
    "anchor_cases",
    "apply_layout",
    "band_of",
    "cases",
    "class_counts",
    "class_weights",
    "format_values",
    "loss_options",
    "near_values",
    "probability_rows",
    "regime_fits",
    "row_strategy",
    "with_contract",
]
