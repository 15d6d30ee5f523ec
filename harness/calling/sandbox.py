"""Sandbox processes in the harness: start, talk to, watch, kill and reuse the workers.

One ``Sandbox`` runs one implementation in a worker (``harness.calling.worker``) started
clean with ``subprocess`` (an exec of the same Python, never a fork of the harness), in
a session of its own so a terminal's Ctrl-C reaches the harness only. ``run`` sends a
request and waits for the replies while it enforces, from outside the worker:

- the time limit of each call, extended while dynamo reports that it compiles and, for a
  call whose compile key the worker has not seen, by the compile allowance;
- the memory limit on the worker's resident set size (psutil), polled while it runs;
- the worker's death (a crash, a signal, a hard exit), read from its exit status.

The worker is killed (its whole process group) on a timeout or memory breach, and started
again lazily by the next request. Loaded workers are kept in a small pool between callers
(``acquire``/``release``), so a process that runs many checks starts each implementation
once; every worker is killed when the harness exits (atexit, and Ctrl-C/SIGTERM through
it), and each worker also exits by itself when its parent dies.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import hashlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import psutil

from harness import interrupts
from harness.calling.protocol import Arena, ProtocolError, decode_reply

__all__ = [
    "SANDBOX_THREADS",
    "Death",
    "LoadFailed",
    "Sandbox",
    "Target",
    "WorkerOptions",
    "acquire",
    "release",
    "sandbox_threads",
    "shutdown_all",
]

HARNESS_ROOT = str(Path(__file__).resolve().parents[2])  # the folder that holds the harness package
LOAD_TIMEOUT = 120.0  # seconds for a worker to start and import its implementation
MEMORY_POLL = 0.05  # seconds between two looks at a running worker's resident memory
MAX_PARKED = 12  # idle loaded workers kept for reuse (each holds torch: about 230 MB); the default audit has 9
# Implementations run single-threaded on the CPU unless OMP_NUM_THREADS says otherwise: a
# reduction's rounding then does not depend on the machine's core count, and a call never
# waits for OpenMP threads to wake (milliseconds per parallel region on a busy machine).
SANDBOX_THREADS = "1"
_MIB = 1 << 20


class LoadFailed(Exception):
    """The worker could not import the implementation; the message is one line."""


@dataclass(frozen=True)
class Target:
    """Where a worker finds the implementation: ('spec', 'module:fn' or '/abs/file.py:fn') or ('pickle', bytes)."""

    kind: str
    payload: str | bytes = field(repr=False)
    label: str = ""  # how messages name it
    stamp: str = ""  # changes when the file behind a spec changes (reloads a reused worker)

    def key(self) -> str:
        payload = self.payload if isinstance(self.payload, bytes) else self.payload.encode()
        return f"{self.kind}:{hashlib.sha1(payload).hexdigest()}:{self.stamp}"


@dataclass(frozen=True)
class WorkerOptions:
    """What a worker must know before it imports the implementation (the pool keys on it)."""

    framework: str = "auto"  # auto, torch, jax or numpy
    triton_interpret: bool = False  # TRITON_INTERPRET=1 before triton is imported
    device: str = "cpu"


@dataclass(frozen=True)
class Death:
    """How a request ended without an answer: the outcome and a one-line message."""

    outcome: str  # timeout, crashed or killed_memory
    message: str


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


_LIVE: set[Sandbox] = set()
_PARKED: collections.OrderedDict[tuple, Sandbox] = collections.OrderedDict()
_LOCK = threading.RLock()


class Sandbox:
    """One worker process for one implementation, restarted on demand."""

    def __init__(self, target: Target, options: WorkerOptions) -> None:
        self.target = target
        self.options = options
        self.process: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.arena: Arena | None = None
        self.info: dict | None = None  # the worker's 'loaded' reply
        self.jit = False  # a compiler (dynamo, JAX, Triton, numba, ...) is loaded in the worker
        self._log = None
        self._init_sent = False
        self.starts = 0

    # -- life cycle ---------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _spawn(self) -> None:
        """A new worker process, up to the point where it waits for its init message."""
        parent_end, child_end = socket.socketpair()
        self.arena = Arena()
        self._log = tempfile.TemporaryFile(mode="a+b", prefix="ce-harness-worker-")  # noqa: SIM115 - kept open
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([HARNESS_ROOT, *filter(None, [env.get("PYTHONPATH")])])
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("OMP_NUM_THREADS", SANDBOX_THREADS)  # see SANDBOX_THREADS
        env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
        if self.options.triton_interpret:
            env["TRITON_INTERPRET"] = "1"
        if self.options.device == "cpu":
            env.setdefault("JAX_PLATFORMS", "cpu")
        deathsig = "1" if threading.current_thread() is threading.main_thread() else "0"
        command = [sys.executable, "-X", "faulthandler", "-c",
                   "import harness.calling.worker as w; w.main()",
                   str(child_end.fileno()), str(self.arena.fd), str(os.getpid()), deathsig]  # fmt: skip
        try:
            self.process = subprocess.Popen(
                command, pass_fds=(child_end.fileno(), self.arena.fd), stdin=subprocess.DEVNULL, stdout=self._log,
                stderr=self._log, start_new_session=True, env=env, close_fds=True, cwd=os.getcwd(),
            )  # fmt: skip
        finally:
            child_end.close()
        self.conn = Connection(os.dup(parent_end.fileno()))
        parent_end.close()
        with _LOCK:
            _LIVE.add(self)

    def _adopt(self, spare: Sandbox) -> None:
        self.process, self.conn, self.arena, self._log = spare.process, spare.conn, spare.arena, spare._log
        spare.process = spare.conn = spare.arena = spare._log = None
        with _LOCK:
            _LIVE.discard(spare)
            _LIVE.add(self)

    def start(self) -> None:
        """Start the worker (returns at once; ``wait_loaded`` waits for its import).

        A spare worker that has imported torch already is used when there is one: this
        process keeps one per options once it has started a few (test suites, audits of
        many implementations, restarts after crashes), so a restart costs the import of
        the implementation, not of torch.
        """
        if self.alive:
            return
        self.kill()
        spare = _take_spare(self.options)
        if spare is not None:
            self._adopt(spare)
        else:
            self._spawn()
        _count_start(self.options)
        self.info = None
        self.jit = False
        self._init_sent = False
        self.starts += 1
        init = pickle.dumps({"sys_path": list(sys.path), "cwd": os.getcwd(),
                             "target": (self.target.kind, self.target.payload),
                             "framework": self.options.framework})  # fmt: skip
        if len(init) < 32 * 1024:  # fits the socket's buffer: no waiting for the worker here
            self.conn.send_bytes(init)
            self._init_sent = True
        else:
            self._init = init

    def wait_loaded(self, timeout: float = LOAD_TIMEOUT) -> dict:
        """The worker's description of the implementation; LoadFailed with a one-line reason."""
        if self.info is not None and self.alive:
            return self.info
        if not self.alive:
            self.start()
        try:
            if not self._init_sent:
                self.conn.send_bytes(self._init)
                self._init_sent = True
            deadline = time.monotonic() + timeout
            while True:
                interrupts.check()  # a stop request ends the wait; the worker goes on loading for later
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise LoadFailed(f"importing it took longer than {timeout:g} s")
                if self.conn.poll(min(left, 0.5)):
                    header, _ = decode_reply(self.conn.recv_bytes())
                    if header.get("kind") != "loaded":
                        raise ProtocolError(f"expected 'loaded', got {header.get('kind')!r}")
                    if not header.get("ok"):
                        self.kill()
                        raise LoadFailed(str(header.get("message", "unknown error")))
                    self.info = header
                    self.jit = bool(header.get("jit"))
                    return header
                if not self.alive:
                    raise EOFError
        except (EOFError, OSError, ProtocolError) as exc:
            code = self._reap()
            detail = f": {exc}" if isinstance(exc, ProtocolError) else ""
            self.kill()
            raise LoadFailed(f"the sandbox {self._exit_words(code)} while importing it{detail}{self._hint()}") from None

    def kill(self) -> None:
        """Kill the worker and everything it started (its process group); idempotent."""
        if self.process is not None:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
        if self.arena is not None:
            self.arena.close()
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
        self.process = self.conn = self.arena = self._log = None
        self.info = None
        with _LOCK:
            _LIVE.discard(self)

    close = kill

    # -- requests -----------------------------------------------------------------------

    def _reap(self) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return None

    @staticmethod
    def _exit_words(code: int | None) -> str:
        if code is None:
            return "stopped answering"
        if code < 0:
            return f"died of signal {-code} ({_signal_name(-code)})"
        return f"exited with code {code}"

    def _hint(self) -> str:
        """The worker's last fatal-error line (faulthandler, abort), if its log has one."""
        if self._log is None:
            return ""
        try:
            self._log.flush()
            self._log.seek(0, os.SEEK_END)
            size = self._log.tell()
            self._log.seek(max(0, size - 8192))
            tail = self._log.read().decode(errors="replace").splitlines()
        except (OSError, ValueError):
            return ""
        for line in reversed(tail):
            if "Fatal Python error" in line or line.startswith(("terminate called", "Segmentation fault")):
                return f" ({line.strip()[:200]})"
        return ""

    def _rss_mib(self) -> float:
        try:
            return psutil.Process(self.process.pid).memory_info().rss / _MIB
        except (psutil.Error, AttributeError):
            return 0.0

    def run(
        self, request: dict, *, timeout: float | None, allowance: float | None, compile_timeout: float | None,
        memory_limit_mib: float | None,
    ) -> tuple[list[tuple[dict, list[bytes]]], Death | None]:  # fmt: skip
        """Send one call request; (replies of the calls, in order; a Death or None).

        ``allowance`` is the first call's time limit (the compile allowance, or ``timeout``);
        later calls get ``timeout``. While dynamo compiles, the limit
        is ``compile_timeout`` from the compile's start. None means no limit.
        """
        replies: list[tuple[dict, list[bytes]]] = []
        try:
            self.conn.send_bytes(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            return replies, self._died("during the call")
        now = time.monotonic()
        limit = allowance
        deadline = None if limit is None else now + limit
        try:
            while True:
                # a stop request (harness.interrupts) abandons the call at once: the worker is
                # killed below, so a hung or slow call never delays an interrupt
                interrupts.check()
                wait = MEMORY_POLL if memory_limit_mib else 0.25
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.kill()
                        return replies, Death("timeout", f"no answer within {limit:g} s; the sandbox was killed")
                    wait = min(wait, left)
                if self.conn.poll(wait):
                    try:
                        header, buffers = decode_reply(self.conn.recv_bytes())
                    except (EOFError, OSError):
                        return replies, self._died("during the call")
                    kind = header.get("kind")
                    if kind == "done":
                        self.handled_seconds = float(header.get("seconds", 0.0))
                        self.jit = bool(header.get("jit"))
                        return replies, None
                    if kind == "compile":
                        limit = compile_timeout if header.get("phase") == "start" else timeout
                        deadline = None if limit is None else time.monotonic() + limit
                    elif kind == "result":
                        replies.append((header, buffers))
                        limit = timeout
                        deadline = None if limit is None else time.monotonic() + limit
                    continue
                if not self.alive:
                    return replies, self._died("during the call")
                if memory_limit_mib:
                    rss = self._rss_mib()
                    if rss > memory_limit_mib:
                        self.kill()
                        return replies, Death(
                            "killed_memory",
                            f"resident memory reached {rss:.0f} MiB, over the limit of {memory_limit_mib:g} MiB; "
                            "the sandbox was killed",
                        )
        except ProtocolError as exc:
            self.kill()
            return replies, Death("crashed", f"the sandbox broke the protocol ({exc}); it was killed")
        except BaseException:  # a stop request or Ctrl-C while waiting: the worker is mid-call, so it goes
            self.kill()
            raise

    def _died(self, when: str) -> Death:
        code = self._reap()
        hint = self._hint()
        self.kill()
        words = self._exit_words(code)
        if code == 0:
            words += " (os._exit or another hard exit in the implementation)"
        return Death("crashed", f"the sandbox {words} {when}{hint}")


def sandbox_threads() -> str:
    """The CPU threads implementations get (OMP_NUM_THREADS, default SANDBOX_THREADS), for manifests."""
    return os.environ.get("OMP_NUM_THREADS", SANDBOX_THREADS)


_SPARES: dict[WorkerOptions, Sandbox] = {}
_STARTS: collections.Counter = collections.Counter()
SPARE_AFTER = 3  # workers started with the same options before a spare is kept ready


def _take_spare(options: WorkerOptions) -> Sandbox | None:
    with _LOCK:
        spare = _SPARES.pop(options, None)
    if spare is not None and spare.alive:
        return spare
    if spare is not None:
        spare.kill()
    return None


def _count_start(options: WorkerOptions) -> None:
    """Count a start; from the SPARE_AFTER-th on, make sure a spare is starting for the next one."""
    with _LOCK:
        _STARTS[options] += 1
        wanted = _STARTS[options] >= SPARE_AFTER and options not in _SPARES
        if wanted:
            spare = Sandbox(Target("spare", b""), options)
            _SPARES[options] = spare
    if wanted:
        spare._spawn()


def acquire(target: Target, options: WorkerOptions) -> Sandbox:
    """A started sandbox for ``target``: a parked one with the same key, or a new one."""
    key = (target.key(), options)
    with _LOCK:
        sandbox = _PARKED.pop(key, None)
    if sandbox is not None and sandbox.alive:
        return sandbox
    sandbox = Sandbox(target, options)
    sandbox.start()
    return sandbox


def release(sandbox: Sandbox) -> None:
    """Park a healthy loaded sandbox for reuse (the oldest parked one goes past MAX_PARKED)."""
    if not sandbox.alive or sandbox.info is None:
        sandbox.kill()
        return
    key = (sandbox.target.key(), sandbox.options)
    evicted = []
    with _LOCK:
        previous = _PARKED.pop(key, None)
        if previous is not None and previous is not sandbox:
            evicted.append(previous)
        _PARKED[key] = sandbox
        while len(_PARKED) > MAX_PARKED:
            evicted.append(_PARKED.popitem(last=False)[1])
    for old in evicted:
        old.kill()


def shutdown_all() -> None:
    """Kill every worker of this process (atexit; also safe to call any time)."""
    with _LOCK:
        live = list(_LIVE)
        _PARKED.clear()
        _SPARES.clear()
    for sandbox in live:
        sandbox.kill()


atexit.register(shutdown_all)
