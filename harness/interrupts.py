"""Stop requests: Ctrl-C and SIGTERM set a flag that the engine and the search check between cases.

Why a flag (issue 16): a handler that raises ``KeyboardInterrupt`` raises it inside
whatever code runs when the signal lands. When that is a library callback that swallows
exceptions (Hypothesis's garbage-collector callback printed "Exception ignored in:
gc_callback" and the run went on), the interrupt is lost. Here the handler only records
the request; the harness's own code raises ``Interrupted`` at safe points (``check``),
so the signal is never lost and never raised inside foreign code.

Public pieces:

- ``handling()``: installs the handlers for a block (main thread only; elsewhere a no-op,
  and Python's own ``KeyboardInterrupt`` still applies). The CLI passes ``grace``: if the
  run has not ended that many seconds after the first signal (stuck in foreign code), or
  a second signal comes, the process exits at once with 130.
- ``requested()``, ``check()``, ``wait()``: for code that loops or waits (the search
  between cases, the shrinking pass, a caller waiting on a worker process).
- ``watching(token)``: adds a ``threading.Event`` as a stop source for the current
  context (a Dask task's remote stop event, mirrored into a local one).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import threading
import time
from collections.abc import Iterator

__all__ = ["EXIT_INTERRUPTED", "Interrupted", "catch_early", "caught_early", "check", "clear", "handling", "reason",
           "request", "requested", "wait", "watching"]  # fmt: skip

EXIT_INTERRUPTED = 130
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """Raised by the harness's own code at a safe point once a stop was requested.

    A BaseException, as KeyboardInterrupt is: ``except Exception`` (in the search, and in
    Hypothesis, which re-raises it at once without shrinking) lets it through.
    """


# A plain value, set from the signal handler: no lock is taken there (a handler that
# takes a lock the interrupted code holds deadlocks), and reading it costs nothing.
_state: dict = {"stopped_at": None, "reason": ""}
_tokens: contextvars.ContextVar[tuple[threading.Event, ...]] = contextvars.ContextVar("harness_stop", default=())
_installed = {"on": False, "early": False}


def request(why: str = "interrupted") -> None:
    """Ask the run in this process to stop (what the signal handlers do)."""
    if _state["stopped_at"] is None:
        _state["reason"] = why
        _state["stopped_at"] = time.monotonic()


def requested() -> bool:
    """Whether this process, or the current context (``watching``), was asked to stop."""
    return _state["stopped_at"] is not None or any(token.is_set() for token in _tokens.get())


def reason() -> str:
    """The signal's name (SIGINT, SIGTERM) or what asked for the stop; '' when none did."""
    if _state["stopped_at"] is not None:
        return _state["reason"]
    return "stop requested" if requested() else ""


def check() -> None:
    """Raise Interrupted when a stop was requested; call it between units of work."""
    if requested():
        raise Interrupted(reason())


def wait(seconds: float) -> bool:
    """Sleep up to ``seconds``, returning early (True) as soon as a stop is requested."""
    deadline = time.monotonic() + seconds
    while not requested():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, 0.05))
    return True


def clear() -> None:
    """Forget a stop request (a new run in the same process starts clean)."""
    _state["stopped_at"] = None
    _state["reason"] = ""


@contextlib.contextmanager
def watching(token: threading.Event) -> Iterator[None]:
    """Within this block (this thread or task), ``token.set()`` counts as a stop request."""
    reset = _tokens.set((*_tokens.get(), token))
    try:
        yield
    finally:
        _tokens.reset(reset)


def catch_early() -> None:
    """Install flag-setting handlers now, before slow imports (``python -m harness``).

    A signal that comes before the run starts is then a stop request the run sees at its
    first check (an empty partial report, exit 130), never a traceback or a silent kill.
    """
    for signum in SIGNALS:
        signal.signal(signum, lambda signum, frame: request(signal.Signals(signum).name))
    _installed["early"] = True


def caught_early() -> bool:
    """Whether ``catch_early`` installed its handlers in this process."""
    return _installed["early"]


def _say(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, text.encode())  # unbuffered: safe inside a handler, unlike sys.stderr


@contextlib.contextmanager
def handling(*, grace: float | None = None, announce: bool = False, repeat: str = "raise") -> Iterator[None]:
    """Within this block, SIGINT and SIGTERM request a stop instead of raising.

    A second signal: ``repeat="raise"`` (the Python API) raises KeyboardInterrupt, as
    Python does; ``"exit"`` (the CLI) exits at once with 130; ``"ignore"`` (a worker
    process, which its parent signals too) does nothing more. ``grace``: seconds after the
    first signal after which the process exits with 130 even if the run has not returned
    (stuck in code that never checks). ``announce`` prints one line per signal.
    The outermost block starts with no stop requested (unless ``catch_early`` caught
    one) and clears the request when it ends; nested blocks share its handlers and state.
    Off the main thread it does nothing.
    """
    if repeat not in ("raise", "exit", "ignore"):
        raise ValueError(f"repeat must be 'raise', 'exit' or 'ignore', got {repeat!r}")
    if threading.current_thread() is not threading.main_thread() or _installed["on"]:
        yield
        return

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if _state["stopped_at"] is not None:
            if repeat == "raise":
                raise KeyboardInterrupt(f"second {name}")
            if repeat == "exit":
                _say(f"harness: second {name}: stopping now, without writing the report\n")
                os._exit(EXIT_INTERRUPTED)
            return
        request(name)
        if announce:
            _say(f"harness: {name}: stopping; writing the partial report (again to stop at once)\n")

    if not _installed["early"]:
        clear()  # a stop request of an earlier run in this process does not carry over
    previous = {}
    for signum in SIGNALS:
        previous[signum] = signal.signal(signum, handler)
    _installed["on"] = True
    done = threading.Event()
    if grace is not None:
        threading.Thread(target=_watchdog, args=(done, grace), name="harness-stop-watchdog", daemon=True).start()
    try:
        yield
    finally:
        done.set()
        _installed["on"] = False
        for signum, old in previous.items():
            signal.signal(signum, old)
        clear()  # what it stopped has returned: later work in this process (harness.check) starts clean


def _watchdog(done: threading.Event, grace: float) -> None:
    """Exit the process if a stop was requested ``grace`` seconds ago and the run goes on."""
    while not done.wait(0.2):
        stopped_at = _state["stopped_at"]
        if stopped_at is not None and time.monotonic() - stopped_at > grace:
            _say(f"harness: did not stop within {grace:g} s of the {_state['reason']}; exiting; "
                 "the report folder holds the last checkpoint\n")  # fmt: skip
            os._exit(EXIT_INTERRUPTED)
