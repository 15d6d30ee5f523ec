"""A pool of local worker processes (``--workers N``): each (dtype, regime) cell is one task.

Not ``concurrent.futures.ProcessPoolExecutor``: when one of its workers dies (the
out-of-memory killer's SIGKILL), every pending future fails with ``BrokenProcessPool``
and nothing tells which cell was lost. Here each worker runs one cell at a time over its
own pipe, so a death is pinned to its cell: that cell is retried once in a fresh process,
then reported as a tool error for that cell alone, and the other cells go on.

Workers never outlive the run: they are stopped when it ends, they die with the parent
(Linux's parent-death signal, and a watchdog thread elsewhere) when it is killed, and on a
stop request they get SIGTERM, return their partial cell and exit.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait

from tqdm import tqdm

from harness import interrupts
from harness.calling.registry import Implementation
from harness.campaign.cells import Cell, CellResult, run_cell
from harness.campaign.executors.base import MAX_ATTEMPTS, STOP_GRACE, Executor, died, exit_cause
from harness.campaign.settings import AuditSettings
from harness.campaign.worker_boot import worker_main

__all__ = ["ProcessPool", "cell_cost", "serve"]


def cell_cost(cell: Cell) -> int:
    """A rough rank of a cell's cost, so the slowest cells start first."""
    dtype, regime = cell
    return (regime == "large_vocab") * 2 + (dtype == "float64")


def serve(conn) -> None:
    """A worker's loop: run the cells the parent sends, one at a time, until told to stop."""
    # tqdm's default lock is a multiprocessing semaphore: a worker killed by SIGKILL would
    # leave it to the resource tracker, which warns at exit; a thread lock does here
    tqdm.set_lock(threading.RLock())
    loaded: dict[str, list[Implementation]] = {}
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with interrupts.handling(repeat="ignore"), quiet[0], quiet[1]:
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send_bytes(pickle.dumps(_READY))  # imports done
        while True:
            try:
                task = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                return
            if task is None or interrupts.requested():
                return
            payload, cell = task
            settings = AuditSettings.from_json(payload)
            key = repr(payload["implementations"]) + repr(payload.get("precision"))
            if key not in loaded:
                with contextlib.suppress(Exception):  # else run_cell reports the failure as the cell's tool error
                    loaded[key] = settings.load_implementations()
            result = run_cell(settings, tuple(cell), loaded.get(key))
            try:
                conn.send_bytes(pickle.dumps(result))
            except (BrokenPipeError, OSError):
                return


_READY = "ready"


class _Worker:
    def __init__(self, context) -> None:
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=worker_main, args=(child, os.getpid()), daemon=True,
                                       name="harness-cell-worker")  # fmt: skip
        self.process.start()
        child.close()
        self.cell: Cell | None = None
        self.ready = False

    def send(self, payload: dict | None, cell: Cell | None = None) -> bool:
        try:
            self.conn.send_bytes(pickle.dumps(None if payload is None else (payload, cell)))
        except (BrokenPipeError, OSError):
            return False
        self.cell = cell
        return True

    def receive(self) -> CellResult | str | None:
        """The finished cell's result, ``_READY`` once started, or None when the worker died."""
        try:
            message = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError, pickle.UnpicklingError):
            return None
        if message == _READY:
            self.ready = True
        return message

    def stop(self, timeout: float = 2.0) -> None:
        self.send(None)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)
        self.conn.close()


class ProcessPool(Executor):
    """``workers`` local processes; cells handed to whichever is free, costliest first."""

    name = "pool"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")  # no fork of a process holding torch's threads
        self._all: list[_Worker] = []

    def describe(self) -> dict:
        return {"name": self.name, "workers": self.workers}

    def start(self) -> None:
        """Start every worker and wait until each has imported the harness (seconds each, in parallel)."""
        starting = [self._spawn() for _ in range(self.workers)]
        while starting and not interrupts.requested():
            ready = set(wait([w.conn for w in starting] + [w.process.sentinel for w in starting], timeout=0.2))
            for worker in list(starting):
                if worker.conn in ready or worker.process.sentinel in ready:
                    starting.remove(worker)
                    if (worker.receive() if worker.conn.poll() else None) != _READY:
                        self._retire(worker)  # died starting: run() starts another when needed

    def close(self) -> None:
        for worker in self._all:
            worker.stop()
        self._all = []

    def _spawn(self) -> _Worker:
        worker = _Worker(self._context)
        self._all.append(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        worker.stop(timeout=0)
        self._all.remove(worker)

    def run(
        self,
        settings: AuditSettings,
        cells: Sequence[Cell],
        implementations: Sequence[Implementation],
        on_case: Callable[[], None] | None = None,
    ):
        payload = settings.to_json()
        queue = deque(sorted(cells, key=lambda c: -cell_cost(c)))
        causes: dict[Cell, list[str]] = {}
        idle: list[_Worker] = [w for w in self._all if w.cell is None]
        busy: list[_Worker] = []
        while queue or busy:
            if interrupts.requested():
                yield from self._stop(busy)
                return
            while queue and (idle or len(self._all) < self.workers):
                worker = idle.pop() if idle else self._spawn()
                cell = queue.popleft()
                if worker.send(payload, cell):
                    busy.append(worker)
                else:  # died while idle: replace it, the cell goes back
                    self._retire(worker)
                    queue.appendleft(cell)
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=0.2))
            for worker in list(busy):
                if worker.conn not in ready and worker.process.sentinel not in ready:
                    continue
                result = worker.receive() if worker.conn.poll() else None
                if result == _READY:  # a replacement worker has started; its cell is under way
                    continue
                busy.remove(worker)
                if result is not None:
                    worker.cell = None
                    idle.append(worker)
                    yield result
                    continue
                cell = worker.cell
                worker.process.join(1.0)
                causes.setdefault(cell, []).append(exit_cause(worker.process.exitcode))
                self._retire(worker)
                if len(causes[cell]) < MAX_ATTEMPTS:
                    queue.appendleft(cell)  # next, in a fresh process: another worker
                else:
                    yield died(cell, causes[cell])

    def _stop(self, busy: list[_Worker]):
        """After a stop request: SIGTERM to the busy workers, their partial cells, then the rest killed."""
        for worker in busy:
            with contextlib.suppress(OSError):
                os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while busy and time.monotonic() < deadline:
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=0.2))
            for worker in list(busy):
                if worker.conn in ready or worker.process.sentinel in ready:
                    result = worker.receive() if worker.conn.poll() else None
                    if result == _READY:
                        continue
                    busy.remove(worker)
                    if result is not None:
                        yield result
        for worker in busy:
            worker.process.kill()
