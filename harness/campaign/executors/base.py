"""The executor interface, the in-process executor, and choosing one by name."""

from __future__ import annotations

import os
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence

from harness import interrupts
from harness.calling.registry import Implementation
from harness.campaign.cells import Cell, CellResult, run_cell
from harness.campaign.settings import AuditSettings, SettingsError

__all__ = ["MAX_ATTEMPTS", "STOP_GRACE", "Executor", "InProcess", "died", "make_executor"]

MAX_ATTEMPTS = 2  # a cell whose worker dies runs once more, on another worker
STOP_GRACE = 5.0  # seconds cells in progress get to return their partial results after a stop request


def died(cell: Cell, causes: Sequence[str]) -> CellResult:
    """The tool error of a cell whose worker died on every attempt."""
    dtype, regime = cell
    how = f"{causes[0]}, each time" if len(set(causes)) == 1 else "; ".join(causes)
    return CellResult(cell, failed=f"{dtype}/{regime}: the worker running it died on each of its {len(causes)} "
                                   f"attempts ({how}); run --resume to try it again")  # fmt: skip


def exit_cause(code: int | None) -> str:
    """A worker process's exit, in words: 'killed by SIGKILL (as the out-of-memory killer does)'."""
    if code is None:
        return "lost"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" (as the out-of-memory killer does)" if -code == signal.SIGKILL else "")
    return f"exited with status {code}"


class Executor(ABC):
    """Runs a campaign's cells; a context manager around its workers' lifetime.

    Nested ``with`` blocks share one start: workers start at the outermost block and stop
    at its end, so one executor (one cluster) can serve several audits.
    """

    name = ""
    remote = True  # its workers load the implementations from their specs
    _depth = 0

    def __enter__(self) -> Executor:
        if self._depth == 0:
            self.start()
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.close()

    def start(self) -> None:  # noqa: B027 - most executors start nothing ahead
        """Start the workers (a cluster, processes); called once before ``run``."""

    def close(self) -> None:  # noqa: B027
        """Stop every worker this executor started; none may outlive it."""

    def describe(self) -> dict:
        """What the manifest records about where the cells ran (nothing that changes records)."""
        return {"name": self.name}

    @abstractmethod
    def run(
        self,
        settings: AuditSettings,
        cells: Sequence[Cell],
        implementations: Sequence[Implementation],
        on_case: Callable[[], None] | None = None,
    ) -> Iterator[CellResult]:
        """Yield one result per cell as each ends, in any order.

        After a stop request (``interrupts.requested()``) it returns within about
        ``STOP_GRACE`` seconds: cells in progress yield their partial results when they
        can, cells not started yield nothing. A worker that dies is replaced and its cell
        retried, ``MAX_ATTEMPTS`` times in all, then reported with ``died``. ``on_case``
        is called per case where the executor can (in this process).
        """


class InProcess(Executor):
    """The cells one after another in this process."""

    name = "inprocess"
    remote = False

    def run(self, settings, cells, implementations, on_case=None):
        for cell in cells:
            if interrupts.requested():
                return
            result = run_cell(settings, cell, implementations, on_case=on_case)
            yield result
            if result.interrupted:
                return


def make_executor(
    executor: str | Executor | None = None, *, workers: int | None = None, scheduler: str | None = None
) -> Executor:
    """The executor named ``executor`` ('inprocess', 'pool', 'dask'), or the one given.

    None picks 'dask' when a ``scheduler`` address is given, 'pool' for ``workers > 1``,
    else 'inprocess'. ``workers``: processes of the pool or of the local Dask cluster
    (default: one per CPU core); with a scheduler the cluster's own workers run the cells.
    Raises SettingsError (one line) for a bad combination, MissingExtra without Dask.
    """
    if isinstance(executor, Executor):
        return executor
    if workers is not None and workers < 1:
        raise SettingsError(f"workers must be >= 1, got {workers}")
    name = executor or ("dask" if scheduler else "pool" if (workers or 1) > 1 else "inprocess")
    if scheduler and name != "dask":
        raise SettingsError(f"a scheduler address needs the dask executor, not {name!r}")
    if name == "inprocess":
        if (workers or 1) > 1:
            raise SettingsError("the inprocess executor runs one cell at a time; use pool or dask for workers")
        return InProcess()
    if name == "pool":
        from harness.campaign.executors.pool import ProcessPool

        return ProcessPool(workers or os.cpu_count() or 1)
    if name == "dask":
        if scheduler and workers is not None:
            raise SettingsError("workers sizes a local Dask cluster; with a scheduler address the cluster's own "
                                "workers run the cells")  # fmt: skip
        from harness.campaign.executors.dask_cluster import DaskExecutor

        return DaskExecutor(workers=workers or os.cpu_count() or 1, scheduler=scheduler)
    raise SettingsError(f"unknown executor {name!r}; expected one of inprocess, pool, dask")
