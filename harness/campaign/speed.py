"""`python -m harness bench --executors`: one campaign on every executor, side by side in one run.

The same campaign (same settings, same records) is run in this process, on a pool and on
a local Dask cluster, at 1 and 2 workers; each executor's workers are started before its
clock starts (their start-up is shown apart), and the runs alternate executor by executor
over the repeats, the fastest of each kept. Ratios are against the in-process run.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
import time
from pathlib import Path

from harness.campaign import engine
from harness.campaign.executors import Executor, make_executor
from harness.campaign.settings import audit_settings

__all__ = ["BENCH_CAMPAIGN", "executor_speedups"]

# big enough that a cell's work outweighs handing it out: 2 dtypes x 10 regimes, 12 cases each
BENCH_CAMPAIGN = {"dtypes": ["float32", "float64"], "examples": 12, "max_classes": 4096, "shrink_seconds": 0}


def _timed(settings, implementations, executor: Executor, root: Path, name: str) -> float:
    out = root / name
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        report = engine.run_audit(settings, out, implementations=implementations, executor=executor,
                                  progress=False, force=True)  # fmt: skip
    seconds = time.perf_counter() - start
    if report.status != "complete":
        raise RuntimeError(f"bench campaign on {name} did not complete: {report.tool_errors}")
    return seconds


def executor_speedups(workers: tuple[int, ...] = (1, 2), repeats: int = 1, dask: bool = True) -> str:
    """A table of wall times and speed-ups of one campaign on each executor."""
    settings, implementations = audit_settings(["stable", "naive", "torch"], **BENCH_CAMPAIGN)
    names = ["inprocess"] + [f"pool-{n}" for n in workers] + ([f"dask-{n}" for n in workers] if dask else [])
    executors: dict[str, Executor] = {}
    startup: dict[str, float] = {}
    for name in names:
        kind, _, count = name.partition("-")
        executors[name] = make_executor(kind, workers=int(count) if count else None)
        start = time.perf_counter()
        executors[name].__enter__()
        startup[name] = time.perf_counter() - start
    best = {name: math.inf for name in names}
    try:
        with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
            for _ in range(repeats):
                for name in names:
                    best[name] = min(best[name], _timed(settings, implementations, executors[name], Path(tmp), name))
    finally:
        for executor in executors.values():
            executor.__exit__(None, None, None)
    cells = len(settings.cells())
    lines = [f"campaign executors: {cells} cells x {settings.examples} cases ({', '.join(settings.dtypes)}, up to "
             f"{settings.max_classes} classes, 3 built-ins), best of {repeats}; workers started first", ""]  # fmt: skip
    base = best["inprocess"]
    for name in names:
        kind, _, count = name.partition("-")
        label = kind if not count else f"{kind}, {count} worker{'s' if count != '1' else ''}"
        extra = f"   (start-up {startup[name]:.1f} s)" if count else ""
        lines.append(f"{label:<20} {best[name]:7.1f} s   speed-up {base / best[name]:5.2f}x{extra}")
    return "\n".join(lines)
