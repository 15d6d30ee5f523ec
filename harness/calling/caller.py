"""Call an implementation under test defensively.

Every call gets fresh copies of the inputs, laid out as the case's (strides and storage
offset kept, harness.calling.layout.copy_like), on the requested device, in a worker thread
with a timeout. The output is validated (a tensor of the right shape, dtype and device),
the input is compared bit for bit with a pristine copy (in-place writes), and the call
is repeated to catch nondeterminism. Whatever goes wrong becomes a failure outcome.

A call that times out cannot be killed (Python threads cannot be); it is left to finish
in its daemon thread, and later calls of that implementation are skipped, as timeouts,
until it does, so hung calls never pile up.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from harness.calling.layout import copy_like
from harness.calling.registry import Implementation
from harness.formats import format_of
from strategies import Case

__all__ = ["DEFAULT_TIMEOUT", "CallResult", "Caller"]

DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class CallResult:
    output: torch.Tensor | None  # on the CPU; None when the call failed
    failure: str | None  # an outcome name from harness.grading.metrics.OUTCOMES, or None
    message: str
    seconds: float


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.is_floating_point:
        try:
            view = format_of(a.dtype).int_dtype
        except ValueError:  # a float dtype the harness does not grade: compare values
            return torch.equal(a, b)
        return torch.equal(a.contiguous().view(view), b.contiguous().view(view))
    return torch.equal(a, b)


class Caller:
    """Calls implementations with a timeout, on a device, with output and input checks."""

    def __init__(self, timeout: float | None = DEFAULT_TIMEOUT, device: str = "cpu", repeat: bool = True) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = timeout
        self.device = torch.device(device)
        self.repeat = repeat
        self._hung: dict[str, threading.Thread] = {}

    def _run(self, impl: Implementation, logits: torch.Tensor, targets: torch.Tensor):
        """(returned value, exception, timed out?, seconds) of one call in a worker thread."""
        box: dict = {}

        def work() -> None:
            try:
                box["value"] = impl.fn(logits, targets)
            except BaseException as exc:
                box["error"] = exc

        worker = threading.Thread(target=work, name=f"impl-{impl.name}", daemon=True)
        start = time.perf_counter()
        worker.start()
        worker.join(self.timeout)
        seconds = time.perf_counter() - start
        if worker.is_alive():
            self._hung[impl.name] = worker
            return None, None, True, seconds
        return box.get("value"), box.get("error"), False, seconds

    def _fail(self, failure: str, message: str, seconds: float) -> CallResult:
        return CallResult(None, failure, message, seconds)

    def _validate(self, value, case: Case) -> str | None:
        expected = tuple(case.targets.shape)
        if not isinstance(value, torch.Tensor):
            return f"returned {type(value).__name__}, not a tensor"
        if tuple(value.shape) not in (expected, (), (1,)):  # () and (1,) count as a mean
            return f"returned shape {tuple(value.shape)}, expected {expected} or ()"
        if value.dtype != case.dtype:
            return f"returned dtype {value.dtype} for {case.dtype} logits"
        if value.device.type != self.device.type:
            return f"returned a tensor on {value.device}, expected {self.device}"
        return None

    def call(self, impl: Implementation, case: Case) -> CallResult:
        hung = self._hung.get(impl.name)
        if hung is not None and hung.is_alive():
            return self._fail("timeout", "skipped: a call that timed out earlier is still running", 0.0)
        self._hung.pop(impl.name, None)
        # copies laid out exactly as the case's logits (strides, storage offset), not contiguous clones
        pristine = copy_like(case.logits)
        logits, targets = copy_like(case.logits).to(self.device), case.targets.clone().to(self.device)
        value, error, timed_out, seconds = self._run(impl, logits, targets)
        if timed_out:
            return self._fail("timeout", f"no answer within {self.timeout:g} s", seconds)
        if error is not None:
            return self._fail("raised", f"{type(error).__name__}: {error}".strip(), seconds)
        problem = self._validate(value, case)
        if problem:
            return self._fail("bad_output", problem, seconds)
        if not _same_bits(logits.cpu(), pristine):
            return self._fail("mutated_input", "modified its input logits in place", seconds)
        output = value.detach().cpu()
        if self.repeat:
            again, error, timed_out, more = self._run(impl, copy_like(pristine).to(self.device), targets.clone())
            seconds += more
            if timed_out:
                return self._fail("timeout", f"second call: no answer within {self.timeout:g} s", seconds)
            if error is not None or not isinstance(again, torch.Tensor) or not _same_bits(again.detach().cpu(), output):
                return self._fail("nondeterministic", "a second call on the same input answered differently", seconds)
        return CallResult(output, None, "", seconds)
