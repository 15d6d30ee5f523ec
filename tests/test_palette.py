"""Outcome and implementation colours (issue 17): failures warm, accepted and exact cool, implementations apart."""

from __future__ import annotations

import pandas as pd
import pytest

from harness.grading.metrics import ACCEPTED_OUTCOMES, FAILURE_OUTCOMES, OUTCOMES
from reports.palette import (
    CATEGORIES,
    IMPLEMENTATION_COLOURS,
    category,
    category_colour,
    implementation_colours,
    is_warm,
    outcome_colour,
)


def test_failures_are_warm_and_accepted_and_exact_are_cool():
    for outcome in FAILURE_OUTCOMES:
        assert is_warm(outcome_colour(outcome)), outcome
    for outcome in {"exact", "finite_error"} | ACCEPTED_OUTCOMES:
        assert not is_warm(outcome_colour(outcome)), outcome
    for name in ("unstable error", "inaccurate", "spurious inf", "spurious NaN", "missing inf/NaN"):
        assert is_warm(CATEGORIES[name]), name


def test_the_sandbox_outcomes_have_warm_categories_of_their_own():
    records = pd.DataFrame({"outcome": ["crashed", "killed_memory"], "verdict": ["unstable", "unstable"]})
    assert list(category(records)) == ["crashed", "killed memory"]
    assert all(is_warm(CATEGORIES[name]) for name in ("crashed", "killed memory"))


@pytest.mark.parametrize("outcome", ["some_future_failure", "another_one"])
def test_an_outcome_added_later_falls_back_to_a_warm_colour(outcome):
    assert outcome not in OUTCOMES
    assert is_warm(outcome_colour(outcome))
    records = pd.DataFrame({"outcome": [outcome], "verdict": ["unstable"]})
    (name,) = category(records)
    assert is_warm(category_colour(name)) and name == outcome.replace("_", " ")
    assert outcome_colour(outcome) == outcome_colour(outcome)  # the same colour every run


def test_no_implementation_shares_a_failure_colour_or_is_warm():
    failure_colours = {outcome_colour(o).lower() for o in FAILURE_OUTCOMES} | {c.lower() for c in CATEGORIES.values()}
    for colour in IMPLEMENTATION_COLOURS:
        assert not is_warm(colour) and colour.lower() not in failure_colours, colour
    assert len(set(IMPLEMENTATION_COLOURS)) == len(IMPLEMENTATION_COLOURS)
    assert list(implementation_colours(["a", "b"]).values()) == list(IMPLEMENTATION_COLOURS[:2])


def test_categories_split_finite_errors_by_verdict_and_name_accepted_results():
    records = pd.DataFrame({
        "outcome": ["exact", "finite_error", "finite_error", "finite_error", "accepted_nan", "spurious_nan"],
        "verdict": ["ok", "ok", "inaccurate", "unstable", "ok", "unstable"],
    })  # fmt: skip
    assert list(category(records)) == [
        "exact", "within allowance", "inaccurate", "unstable error", "accepted NaN", "spurious NaN"
    ]  # fmt: skip


def test_warmth_test_itself():
    assert is_warm("#d73027") and is_warm("#fdb863") and is_warm("#8c510a")
    assert not is_warm("#08519c") and not is_warm("#1b7837") and not is_warm("#9e9e9e")
