"""The entry point of a pool worker process, kept free of heavy imports.

A spawned worker imports the module of its target function before running it; torch
and the harness take seconds to import. Tying the worker's life to its parent's first,
here, means a parent killed during those seconds leaves no orphan either.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

__all__ = ["die_with_parent", "worker_main"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Exit when the parent process dies, even by kill -9 (Linux's parent-death signal, else a watchdog)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    def watch() -> None:  # other systems, and the moment before prctl took effect
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="harness-parent-watch", daemon=True).start()


def worker_main(conn, parent: int) -> None:
    die_with_parent(parent)
    from harness import interrupts  # light: no torch yet

    interrupts.catch_early()  # a terminal's Ctrl-C reaches workers too: a stop request, not a traceback
    from harness.campaign.executors.pool import serve

    serve(conn)
