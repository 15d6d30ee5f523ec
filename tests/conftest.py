"""Shared test settings. Under CI=true Hypothesis loads its built-in derandomized `ci` profile."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run deeper fuzzing tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="deeper fuzzing: pass --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
