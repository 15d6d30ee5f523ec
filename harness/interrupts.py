"""A Ctrl-C or SIGTERM that must not be lost: the CLI's signal handlers also set a flag here.

A KeyboardInterrupt raised by a signal handler can be swallowed when the signal lands
inside a callback whose exceptions Python ignores (a garbage-collector callback, which
Hypothesis installs, prints "Exception ignored" and goes on). The search checks
``pending()`` before every case and raises KeyboardInterrupt again, so the run still stops
and writes its partial report.
"""

from __future__ import annotations

import threading

__all__ = ["clear", "pending", "request"]

_requested = threading.Event()


def request() -> None:
    """Note that the user asked the run to stop (called by the CLI's signal handlers)."""
    _requested.set()


def pending() -> bool:
    return _requested.is_set()


def clear() -> None:
    _requested.clear()
