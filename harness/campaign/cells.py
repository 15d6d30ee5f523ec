"""One (dtype, regime) cell of a campaign: the unit of work every executor runs.

``run_cell`` is a pure function of the settings and the cell: it draws the cell's cases
from the cell's own seed and grades every implementation on them, wherever it runs (this
process, a pool worker, a Dask worker), so any executor writes the same records.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from harness import interrupts
from harness.calling.registry import Implementation
from harness.campaign.settings import AuditSettings
from harness.formats import FORMATS
from harness.runner import RECORD_COLUMNS
from harness.search import SELF_CHECK_CASES, SELF_CHECK_MAX_ELEMENTS, SearchResult, search, self_check_choice
from reports.stats import worst_cases
from strategies import Case

__all__ = ["Cell", "CellResult", "run_cell", "worker_versions"]

Cell = tuple[str, str]  # (dtype name, regime)

# Cases a cell sends back besides its non-exact ones: the few worst of each (impl, dtype,
# regime) group (the report stores the worst; a case also drawn in an earlier cell is
# kept there, so the next ones stand by) and the small ones the oracle self-check draws from.
_STANDBY_WORST = 3

# Hypothesis's engine and the provider switch of harness.determinism are process-global:
# cells in threads of one process (a Dask worker with several threads) run one at a time.
_ONE_AT_A_TIME = threading.Lock()


@dataclass
class CellResult:
    """What one cell produced; ``failed`` is a tool error that left the cell without results."""

    cell: Cell
    records: list[dict] = field(default_factory=list)
    cases: dict[str, Case] = field(default_factory=dict)  # the cases the report may store or self-check
    errors: list[str] = field(default_factory=list)  # the tool's own failures within the cell
    seconds: float = 0.0
    interrupted: bool = False  # stopped by a stop request before the cell was finished
    failed: str | None = None  # e.g. the worker running it died twice
    worker: str = ""  # host:pid that ran it
    versions: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return not self.interrupted and self.failed is None


def worker_versions() -> dict:
    """Versions that change which cases are drawn or how they are graded."""
    import hypothesis
    import mpmath
    import torch

    return {"hypothesis": hypothesis.__version__, "torch": torch.__version__, "mpmath": mpmath.__version__,
            "mpmath_backend": mpmath.libmp.BACKEND}  # fmt: skip


def _kept_cases(found: SearchResult) -> dict[str, Case]:
    records, cases = found.records, found.cases
    if not records:
        return {}
    frame = pd.DataFrame(records, columns=list(RECORD_COLUMNS))
    keep = set(frame.loc[frame["outcome"].ne("exact"), "case_id"])
    for _ in range(_STANDBY_WORST):
        worst = set(worst_cases(frame)["case_id"])
        keep |= worst
        frame = frame[~frame["case_id"].isin(worst)]
        if frame.empty:
            break
    keep |= {i for i, c in cases.items() if c.logits.numel() <= SELF_CHECK_MAX_ELEMENTS}
    # and the cell's own self-check choice, from every class-count class (large rows too)
    keep |= {r["case_id"] for r in self_check_choice(found, SELF_CHECK_CASES)}
    return {i: c for i, c in cases.items() if i in keep}


def run_cell(
    settings: AuditSettings,
    cell: Cell,
    implementations: Sequence[Implementation] | None = None,
    *,
    on_case: Callable[[], None] | None = None,
) -> CellResult:
    """Run one cell: ``settings.examples`` cases of ``cell``, every implementation on each.

    Never raises for a failure of the tool (it becomes ``failed`` or ``errors``); a stop
    request returns the cases finished so far with ``interrupted`` set.
    """
    dtype, regime = cell
    where = f"{socket.gethostname()}:{os.getpid()}"
    start = time.perf_counter()
    try:
        with _ONE_AT_A_TIME:
            impls = list(implementations) if implementations is not None else settings.load_implementations()
            with settings.sandbox.caller() as caller:  # implementations run in sandboxes on this worker
                found = search(
                    [FORMATS[dtype]], [regime], impls, profile=settings.budget, seed=settings.seed,
                    examples=settings.examples, max_classes=settings.max_classes, policy=settings.policy,
                    caller=caller, self_check=0, progress=False, on_case=on_case,
                )  # fmt: skip
    except interrupts.Interrupted:
        return CellResult(cell, interrupted=True, worker=where, seconds=time.perf_counter() - start)
    except Exception as exc:  # e.g. an implementation that does not import on this worker
        message = f"{dtype}/{regime}: on {where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return CellResult(cell, failed=message.rstrip(": "), worker=where, seconds=time.perf_counter() - start)
    return CellResult(
        cell, records=found.records, cases=_kept_cases(found), errors=found.errors,
        seconds=found.seconds, interrupted=found.interrupted, worker=where, versions=worker_versions(),
    )  # fmt: skip
