"""Colours and words of the reports: one palette for outcomes, another for implementations.

Outcomes: failures are warm (reds, oranges, browns), results the verdicts accept are cool
(blues and teals), an ungraded result is grey. An outcome this module does not know (a
failure added later, e.g. by a new caller) falls back to a warm colour, chosen from its
name so it stays the same from run to run. Implementations get colours from a separate
palette of greens, purples, teals and greys that holds no warm colour, so no
implementation is ever drawn in a failure's colour (issue 17).
"""

from __future__ import annotations

import colorsys
import zlib
from collections.abc import Iterable

import matplotlib.colors as mcolors
import pandas as pd

from harness.grading.metrics import FAILURE_OUTCOMES, OUTCOME_MEANINGS

__all__ = [
    "CATEGORIES",
    "CATEGORY_MEANINGS",
    "IMPLEMENTATION_COLOURS",
    "category",
    "category_colour",
    "implementation_colours",
    "is_failure_outcome",
    "is_warm",
    "ordered_categories",
    "outcome_colour",
]

# Report categories, best to worst: an outcome, with finite errors split by verdict.
CATEGORIES: dict[str, str] = {
    "exact": "#08519c",
    "within allowance": "#6baed6",
    "accepted NaN": "#41b6c4",
    "accepted inf": "#a1dab4",
    "inaccurate": "#fdb863",
    "unstable error": "#f46d43",
    "missing inf/NaN": "#8c510a",
    "spurious inf": "#d73027",
    "spurious NaN": "#a50026",
    "raised": "#7f2704",
    "timeout": "#e08214",
    "killed memory": "#d95f0e",
    "crashed": "#67001f",
    "bad output": "#b35806",
    "mutated input": "#cc4c02",
    "nondeterministic": "#fe9929",
    "uncertified oracle": "#9e9e9e",
}
CATEGORY_MEANINGS: dict[str, str] = {
    "exact": OUTCOME_MEANINGS["exact"],
    "within allowance": "finite, off by one ULP or more, within the stability allowance and --max-ulps",
    "accepted NaN": OUTCOME_MEANINGS["accepted_nan"],
    "accepted inf": OUTCOME_MEANINGS["accepted_inf"],
    "inaccurate": "finite, within the stability allowance but more than --max-ulps ULPs off",
    "unstable error": "finite, with an error beyond the stability allowance",
    "missing inf/NaN": OUTCOME_MEANINGS["missing_nonfinite"],
    "spurious inf": OUTCOME_MEANINGS["spurious_inf"],
    "spurious NaN": OUTCOME_MEANINGS["spurious_nan"],
    "raised": OUTCOME_MEANINGS["raised"],
    "timeout": OUTCOME_MEANINGS["timeout"],
    "killed memory": OUTCOME_MEANINGS["killed_memory"],
    "crashed": OUTCOME_MEANINGS["crashed"],
    "bad output": OUTCOME_MEANINGS["bad_output"],
    "mutated input": OUTCOME_MEANINGS["mutated_input"],
    "nondeterministic": OUTCOME_MEANINGS["nondeterministic"],
    "uncertified oracle": OUTCOME_MEANINGS["uncertified"],
}
_CATEGORY_OF_OUTCOME = {
    "exact": "exact", "accepted_nan": "accepted NaN", "accepted_inf": "accepted inf",
    "missing_nonfinite": "missing inf/NaN", "spurious_inf": "spurious inf", "spurious_nan": "spurious NaN",
    "raised": "raised", "timeout": "timeout", "killed_memory": "killed memory", "crashed": "crashed",
    "bad_output": "bad output", "mutated_input": "mutated input",
    "nondeterministic": "nondeterministic", "uncertified": "uncertified oracle",
}  # fmt: skip
_FINITE_BY_VERDICT = {"ok": "within allowance", "inaccurate": "inaccurate", "unstable": "unstable error"}
# warm colours for failures nobody has named here yet, picked by a stable hash of the name
_WARM_FALLBACK = ("#b2182b", "#d6604d", "#e66101", "#993404", "#ec7014", "#bf812d")

# Implementations: greens, purples, teals and greys only, none warm, none an outcome's colour.
IMPLEMENTATION_COLOURS = (
    "#1b7837",  # green
    "#762a83",  # purple
    "#252525",  # near black
    "#35978f",  # teal
    "#7fbc41",  # yellow-green
    "#9970ab",  # lavender
    "#4d4d9f",  # indigo
    "#878787",  # grey
)


def _fallback(name: str) -> str:
    return _WARM_FALLBACK[zlib.crc32(name.encode()) % len(_WARM_FALLBACK)]


def category(records: pd.DataFrame) -> pd.Series:
    """One report category per record: its outcome, with finite errors split by verdict.

    An outcome without a category of its own (a failure added after this module) is
    its own name, with underscores as spaces; ``category_colour`` makes it warm.
    """
    finite = records["outcome"].eq("finite_error")
    named = records["outcome"].map(_CATEGORY_OF_OUTCOME)
    unknown = records["outcome"].astype(str).str.replace("_", " ")
    by_verdict = records["verdict"].map(_FINITE_BY_VERDICT).fillna("unstable error")
    return named.fillna(unknown).where(~finite, by_verdict)


def category_colour(name: str) -> str:
    """The colour of a report category; an unknown one is a failure, so warm."""
    return CATEGORIES.get(name) or _fallback(name)


def outcome_colour(outcome: str) -> str:
    """The colour of an outcome name (finite_error: within the allowance); unknown outcomes are warm."""
    if outcome == "finite_error":
        return CATEGORIES["within allowance"]
    named = _CATEGORY_OF_OUTCOME.get(outcome)
    return CATEGORIES[named] if named else _fallback(outcome)


def ordered_categories(present: Iterable[str]) -> list[str]:
    """The categories in ``present``: known ones in their order, then unknown ones (failures) by name."""
    present = set(present)
    return [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))


def implementation_colours(names: Iterable[str]) -> dict[str, str]:
    """A colour per implementation, in the order given, from the implementation palette."""
    return {name: IMPLEMENTATION_COLOURS[i % len(IMPLEMENTATION_COLOURS)] for i, name in enumerate(names)}


def is_warm(colour: str) -> bool:
    """Red, orange, yellow or brown: a hue within 70 degrees of red, saturated enough to read as a colour."""
    r, g, b = mcolors.to_rgb(colour)
    hue, _, saturation = colorsys.rgb_to_hls(r, g, b)
    degrees = hue * 360
    return saturation > 0.25 and (degrees <= 70 or degrees >= 330)


def is_failure_outcome(outcome: str) -> bool:
    """Every outcome that is neither exact, a finite error, accepted, nor uncertified, known or not."""
    return outcome in FAILURE_OUTCOMES or outcome not in OUTCOME_MEANINGS
