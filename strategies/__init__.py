"""Hypothesis strategies for extreme cross-entropy inputs.

``cases()`` draws whole cases; ``format_values``, ``near_values`` and ``row_strategy``
are the building blocks for users who write their own ``@given`` tests, and
``strategies.sizes`` the class counts by structure (tile multiples, vocabulary sizes).
"""

from strategies.cases import Case, anchor_cases, cases, class_counts, regime_fits
from strategies.floats import format_values, near_values
from strategies.layouts import LAYOUT_KINDS, apply_layout
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
    "anchor_cases",
    "apply_layout",
    "band_of",
    "cases",
    "class_counts",
    "format_values",
    "near_values",
    "regime_fits",
    "row_strategy",
]
