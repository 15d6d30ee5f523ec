"""Dask distributed (``--executor dask [--scheduler ADDRESS]``), from the ``cluster`` extra.

Each (dtype, regime) cell is one Dask task, computed by ``run_cell`` on whichever worker
the scheduler picks; the results come back to this process, which alone writes the
report. Without an address a ``LocalCluster`` of single-threaded worker processes is
started here (and closed at the end); with one, any running cluster is used (dask-jobqueue
on SLURM, Kubernetes, ``dask scheduler`` + ``dask worker`` by hand). The workers need
the harness and the implementations' modules installed, at the same versions.

A worker that dies mid-cell (the out-of-memory killer) is replaced by Dask and the cell
rescheduled: the local cluster allows one retry (``distributed.scheduler.allowed-failures``
= 1), a cluster of your own applies its scheduler's setting. Then the cell is reported as
a tool error (``KilledWorker``) and the others go on. A stop request is passed to the
running tasks through a Dask ``Event``: they return their partial cells within seconds.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence

from harness import interrupts
from harness.calling.registry import Implementation
from harness.campaign.cells import Cell, CellResult, run_cell
from harness.campaign.executors.base import MAX_ATTEMPTS, STOP_GRACE, Executor
from harness.campaign.executors.pool import cell_cost
from harness.campaign.settings import AuditSettings, SettingsError
from harness.extras import require

__all__ = ["DaskExecutor"]


def _cell_task(payload: dict, cell: list[str], stop_name: str) -> CellResult:
    """One Dask task: run the cell, stopping early when the client sets the stop event."""
    from distributed import Event, get_client
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())  # not a semaphore left to the resource tracker by a killed worker
    token = threading.Event()
    done = threading.Event()
    try:
        remote = Event(stop_name, client=get_client())
    except Exception:
        remote = None

    def poll() -> None:
        while remote is not None and not done.is_set():
            try:
                if remote.wait(timeout=0.5):
                    token.set()
                    return
            except Exception:  # the scheduler went away: the client is gone too
                token.set()
                return

    threading.Thread(target=poll, name="harness-stop-poll", daemon=True).start()
    try:
        # Dask's own threads use the global random module while Hypothesis draws; the cases
        # do not (each cell has its own seed), so Hypothesis's warning about it is noise here.
        # Set for the worker process (catch_warnings is not thread-safe).
        warnings.filterwarnings("ignore", message="Do not use the `random` module", category=Warning)
        with interrupts.watching(token):
            return run_cell(AuditSettings.from_json(payload), (cell[0], cell[1]))
    finally:
        done.set()


class DaskExecutor(Executor):
    """Cells as Dask tasks on a ``LocalCluster`` of ``workers`` processes, or on the cluster at ``scheduler``."""

    name = "dask"

    def __init__(self, workers: int | None = None, scheduler: str | None = None) -> None:
        self.distributed = require("distributed", "cluster")
        require("dask", "cluster")
        self.workers = workers
        self.scheduler = scheduler
        self.cluster = None
        self.client = None
        self._levels: dict[str, int] = {}

    def describe(self) -> dict:
        info = {"name": self.name, "scheduler": self.scheduler or "LocalCluster"}
        if self.client is not None:
            with contextlib.suppress(Exception):
                info["workers"] = len(self.client.scheduler_info(n_workers=-1).get("workers", {}))
        return info

    def start(self) -> None:
        import dask

        distributed = self.distributed
        if self.scheduler:
            try:  # Dask's own connect timeout (distributed.comm.timeouts.connect, 30 s by default)
                self.client = distributed.Client(self.scheduler)
            except (OSError, TimeoutError, ValueError) as exc:
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise SettingsError(f"cannot reach the Dask scheduler at {self.scheduler}: {why}") from None
            return
        self._quiet()
        # one retry of a cell whose worker died, as the pool does; a worker holds one task at
        # a time (no task queued behind a cell that kills its worker); workers ignore a
        # terminal's Ctrl-C (dask_preload: this process passes the stop on); quiet logs; the
        # scheduler's HTTP server (the dashboard, with bokeh) on a free port, not 8787
        with dask.config.set({"distributed.scheduler.allowed-failures": MAX_ATTEMPTS - 1,
                              "distributed.scheduler.worker-saturation": 1.0,
                              "distributed.worker.preload": ["harness.campaign.executors.dask_preload"]}):  # fmt: skip
            self.cluster = distributed.LocalCluster(
                n_workers=self.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                silence_logs=logging.CRITICAL,
            )  # fmt: skip
        self.client = distributed.Client(self.cluster)
        self._quiet()

    def _quiet(self) -> None:
        """The local cluster's INFO logs (start, close) stay off the terminal; restored by close()."""
        for name in ("distributed", "dask"):
            logger = logging.getLogger(name)
            self._levels.setdefault(name, logger.level)
            logger.setLevel(logging.CRITICAL)

    def close(self) -> None:
        if self.cluster is not None:
            self._quiet()
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close(timeout=10)
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close(timeout=10)
        self.client = self.cluster = None
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        self._levels = {}

    def run(
        self,
        settings: AuditSettings,
        cells: Sequence[Cell],
        implementations: Sequence[Implementation],
        on_case: Callable[[], None] | None = None,
    ):
        distributed = self.distributed
        run_id = uuid.uuid4().hex[:12]
        stop = distributed.Event(f"harness-stop-{run_id}", client=self.client)
        payload = settings.to_json()
        queue = sorted(cells, key=lambda c: -cell_cost(c))
        futures: dict = {}
        pending: set = set()
        try:
            while pending or queue:
                if interrupts.requested():
                    yield from self._stop(stop, pending, futures)
                    return
                # no more cells in flight than the cluster has threads: a worker then holds one
                # cell at a time, and its death costs (and counts against) that cell alone
                while queue and len(pending) < self._threads():
                    cell = queue.pop(0)
                    key = f"harness-cell-{cell[0]}-{cell[1]}-{run_id}"
                    future = self.client.submit(_cell_task, payload, list(cell), stop.name, key=key, pure=False)
                    futures[future] = cell
                    pending.add(future)
                try:
                    done = distributed.wait(pending, timeout=0.2, return_when="FIRST_COMPLETED").done
                except TimeoutError:
                    continue
                for future in done:
                    pending.discard(future)
                    yield self._result(future, futures[future])
        finally:
            for future in pending:
                future.cancel()
            with contextlib.suppress(Exception):
                stop.clear()

    def _threads(self) -> int:
        """The cluster's worker threads now (it may scale), at least 1."""
        try:
            return max(1, sum(self.client.nthreads().values()))
        except Exception:
            return 1

    def _result(self, future, cell: Cell) -> CellResult:
        if future.status == "finished":
            try:
                return future.result()
            except Exception as exc:  # the result could not be fetched (a worker lost meanwhile)
                return CellResult(cell, failed=f"{cell[0]}/{cell[1]}: {type(exc).__name__}: {exc}")
        exc = future.exception() if future.status == "error" else None
        if isinstance(exc, self.distributed.KilledWorker):
            return CellResult(cell, failed=f"{cell[0]}/{cell[1]}: the worker running it died on every attempt the "
                                           "scheduler allows (KilledWorker); run --resume to try it again")  # fmt: skip
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}" if exc else future.status
        return CellResult(cell, failed=f"{cell[0]}/{cell[1]}: the Dask task ended with {reason}")

    def _stop(self, stop, pending: set, futures: dict):
        """Tell running tasks to stop, take their partial cells for a few seconds, cancel the rest."""
        with contextlib.suppress(Exception):
            stop.set()
        deadline = time.monotonic() + STOP_GRACE
        running = self._running(pending)
        for future in pending - running:
            future.cancel()
        while running and time.monotonic() < deadline:
            try:
                done = self.distributed.wait(running, timeout=0.2, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                continue
            for future in done:
                running.discard(future)
                if future.status == "finished":
                    with contextlib.suppress(Exception):
                        yield future.result()
        for future in running:
            future.cancel()

    def _running(self, pending: set) -> set:
        """The futures whose tasks are on a worker now (cancelling the others loses nothing)."""
        keys = [f.key for f in pending]

        def states(dask_scheduler, keys=keys):
            return {k: getattr(dask_scheduler.tasks.get(k), "state", None) for k in keys}

        try:
            now = self.client.run_on_scheduler(states)
        except Exception:
            return set(pending)
        return {f for f in pending if now.get(f.key) == "processing"}
