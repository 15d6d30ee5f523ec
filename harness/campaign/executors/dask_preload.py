"""Preloaded into the worker processes of the local Dask cluster (``distributed.worker.preload``).

A terminal's Ctrl-C goes to the whole process group, the local cluster's workers included;
there it would end the worker with a KeyboardInterrupt traceback. The audit's own process
passes the stop on to the tasks (a Dask ``Event``), so the workers ignore SIGINT.
"""

from __future__ import annotations

import signal
import threading


def dask_setup(worker) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
