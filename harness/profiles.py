"""Search budgets: named profiles for audit and check, picked by --profile or HARNESS_PROFILE.

Each is also registered as a Hypothesis settings profile (``ce-ci``, ``ce-dev``,
``ce-fuzz``) for users' own ``@given`` tests over ``strategies.cases``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

__all__ = ["PROFILES", "Profile", "resolve_profile"]

ENV_VAR = "HARNESS_PROFILE"
DATABASE_DIR = Path(".hypothesis") / "ce-harness"


@dataclass(frozen=True)
class Profile:
    name: str
    examples: int  # cases per (dtype, regime) cell
    max_classes: int
    database: bool  # keep failing examples between runs (Hypothesis's example database)
    max_rows: int = 4_096  # rows of the largest batch-regime case

    def hypothesis_settings(self, **overrides) -> settings:
        # Every setting that steers generation is explicit, so a user's own Hypothesis
        # profile (loaded in the same process by the pytest fixture) cannot change the
        # cases drawn; the per-cell seed overrides derandomize.
        options = {
            "max_examples": self.examples,
            "backend": "hypothesis",
            "derandomize": False,
            "database": DirectoryBasedExampleDatabase(str(DATABASE_DIR)) if self.database else None,
            "deadline": None,
            "suppress_health_check": list(HealthCheck),
            "print_blob": False,
        }
        return settings(**{**options, **overrides})


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("ci", examples=8, max_classes=32_768, database=False, max_rows=1_024),
        Profile("dev", examples=25, max_classes=131_072, database=False, max_rows=4_096),
        Profile("fuzz", examples=250, max_classes=256_000, database=True, max_rows=16_384),  # 56 cells: 14,000 cases
    )
}

for _profile in PROFILES.values():
    settings.register_profile(f"ce-{_profile.name}", _profile.hypothesis_settings())


def resolve_profile(name: str | None = None) -> Profile:
    """The named profile, else $HARNESS_PROFILE, else dev; ValueError for unknown names."""
    chosen = name or os.environ.get(ENV_VAR) or "dev"
    if chosen not in PROFILES:
        raise ValueError(f"unknown profile {chosen!r}; expected one of {', '.join(PROFILES)}")
    return PROFILES[chosen]
