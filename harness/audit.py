"""Drive Hypothesis over (dtype, regime) cells, run every implementation on each case.

Each cell gets its own derived seed, so adding a dtype or a regime does not change the
cases drawn for the others, and the same seed always reproduces the same audit.
"""

from __future__ import annotations

import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, given, settings, target
from hypothesis import seed as hypothesis_seed
from tqdm import tqdm

from harness.formats import Format
from harness.registry import Implementation
from harness.runner import run_case
from strategies import Case, cases

__all__ = ["AuditResult", "cell_seed", "explore", "run_audit"]


@dataclass
class AuditResult:
    records: list[dict] = field(default_factory=list)
    cases: dict[str, Case] = field(default_factory=dict)
    seconds: float = 0.0


def cell_seed(seed: int, fmt: Format, regime: str) -> int:
    """A stable per-(dtype, regime) seed derived from the run's seed."""
    return zlib.crc32(f"{seed}/{fmt.name}/{regime}".encode())


def _score(records: list[dict]) -> float:
    """What targeted search climbs: the worst bits of error, finite by construction."""
    bits = [r["bits"] for r in records if r["bits"] == r["bits"]]
    return max(bits, default=0.0)


def explore(
    strategy,
    examples: int,
    seed: int,
    visit: Callable[[Case], float],
) -> None:
    """Run Hypothesis's generate and target phases over ``strategy``, calling ``visit`` per case."""

    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate, Phase.target],
        suppress_health_check=list(HealthCheck),
        derandomize=False,
        print_blob=False,
    )
    @hypothesis_seed(seed)
    @given(strategy)
    def body(case: Case) -> None:
        target(visit(case), label="bits of error")

    body()


def run_audit(
    formats: Sequence[Format],
    regimes: Sequence[str],
    implementations: Sequence[Implementation],
    *,
    examples: int,
    seed: int,
    max_classes: int,
    progress: bool | None = None,
) -> AuditResult:
    """Every implementation on ``examples`` cases per (dtype, regime) cell."""
    result = AuditResult()
    start = time.perf_counter()
    cells = [(fmt, regime) for fmt in formats for regime in regimes]
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=len(cells) * examples, disable=not show, unit="case", desc="audit") as bar:
        for fmt, regime in cells:

            def visit(case: Case) -> float:
                bar.update(1)
                if case.case_id in result.cases:  # Hypothesis may replay a case
                    return 0.0
                records = run_case(case, implementations)
                result.cases[case.case_id] = case
                result.records.extend(records)
                return _score(records)

            strategy = cases(dtype=fmt, regimes=[regime], max_classes=max_classes)
            explore(strategy, examples, cell_seed(seed, fmt, regime), visit)
    result.seconds = time.perf_counter() - start
    return result
