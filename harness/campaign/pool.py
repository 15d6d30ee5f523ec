"""A local pool of worker processes: each (dtype, regime) cell is one task, merged at the end."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import multiprocessing
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.calling.registry import Implementation
from harness.campaign.merge import merge_reports
from harness.campaign.report import EXIT_INTERRUPTED, AuditReport
from harness.campaign.settings import AuditSettings, SettingsError
from harness.shrinking import Reproducers, shrink_failures
from reports.store import load_cases

__all__ = ["run_in_pool"]


def _cell_cost(cell: tuple[str, str]) -> int:
    """A rough rank of a cell's cost, so the pool starts the slowest cells first."""
    dtype, regime = cell
    return (regime in ("large_vocab", "tiled", "batch")) * 2 + (dtype == "float64")


def _run_cell(settings: dict, folder: str, command: str) -> int:
    """One pool task: a one-cell audit in this worker process, output silenced."""
    from harness.campaign.engine import run_audit

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return run_audit(AuditSettings.from_json(settings), Path(folder), command=command).exit_code
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED


def run_in_pool(
    settings: AuditSettings,
    out: Path,
    implementations: Sequence[Implementation],
    *,
    workers: int,
    command: str = "",
) -> AuditReport:
    """Spread the campaign's cells (this shard's) over ``workers`` processes, then merge them into ``out``.

    Each cell is one task, handed to whichever process is free, costliest first, so one slow
    cell (float64 at vocabulary sizes) holds up one process, not a fixed shard of cells.
    Minimal reproducers are shrunk once, after the merge, as in a single run.
    """
    if any(impl.source == "python" for impl in implementations):
        raise SettingsError("a pool of workers needs implementations given as names or module:function specs")
    cells = settings.cells()
    mine = list(range(len(cells)))[settings.shard[0] - 1 :: settings.shard[1]]
    folders = {i: out / "cells" / f"{i + 1}-of-{len(cells)}" for i in mine}
    tasks = sorted(mine, key=lambda i: -_cell_cost(cells[i]))
    interrupted = False
    lost: list[str] = []
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch's threads
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        futures = {}
        for i in tasks:
            task = settings.replace(shard=(i + 1, len(cells)), shrink_seconds=0).to_json()
            futures[i] = pool.submit(_run_cell, task, str(folders[i]), command)
        codes = []
        for i, future in futures.items():
            try:
                codes.append(future.result())
            except concurrent.futures.process.BrokenProcessPool as exc:  # a pool process died: its cells are lost
                lost.append(f"{cells[i][0]}/{cells[i][1]}: the pool process running it died ({exc})")
        interrupted = EXIT_INTERRUPTED in codes
    except KeyboardInterrupt:
        interrupted = True
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a running cell finishes or writes its partial report
    finished = [folders[i] for i in mine if (folders[i] / "manifest.json").is_file()]
    if not finished:
        if lost:
            raise SettingsError(f"every cell was lost: {lost[0]}")
        raise KeyboardInterrupt("interrupted before any cell finished; nothing to merge")

    def shrink(records: pd.DataFrame) -> Reproducers | None:
        if settings.shrink_seconds <= 0 or interrupted:
            return None
        stored = {}
        for folder in finished:  # every failing case of a cell is stored in its folder
            stored.update(load_cases(folder))
        with settings.sandbox.caller() as caller:
            return shrink_failures(records, implementations, stored, policy=settings.policy, caller=caller,
                                   seconds=settings.shrink_seconds)  # fmt: skip

    report = merge_reports(finished, out, cells=[cells[i] for i in mine], shrink=shrink, shard=settings.shard)
    report.interrupted = report.interrupted or interrupted
    report.tool_errors.extend(lost)
    return report
