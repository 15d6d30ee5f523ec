"""Call an implementation under test defensively, in a sandbox process of its own.

``Caller.call(impl, case) -> CallResult`` is what the runner uses. Each implementation
runs in its own worker process (``harness.calling.sandbox``), never in the harness's:
nothing it does can change the harness's arithmetic, and the worker is killed and
restarted when a call times out (even one that holds the GIL), crashes, exits or runs
away with memory. Each of these is an outcome of the record (``timeout``, ``crashed``,
``killed_memory``) and the run goes on.

Every call gets fresh inputs laid out exactly as drawn. The worker checks that no input
was written (``mutated_input`` names which) and reads the answer into an owned dense
tensor before the second call of the determinism check, so a reused output buffer is
caught. Odd answers (sparse, negative views, subclasses, named tensors) are read safely
or recorded as ``bad_output``; the output must have the targets' shape (or be a scalar
mean), the logits' dtype and the requested device.

``Caller.invoke(impl, Request(...))`` is the general form the other calling paths build on:
positional tensors, keyword arguments (tensors, numbers, strings, None) passed by keyword,
and an optional backward step that returns the gradient of the chosen input.

Compiled kernels: while dynamo reports a compile (torch.compile), the time limit is the
compile timeout, counted from the compile's start, and the compile time is reported apart
(``compile_seconds``). Where a compiler is loaded in the worker (dynamo, JAX, Triton,
numba, ...), the first call per compile key (dtype, dimensions, shape class) also gets the
compile timeout, once per implementation; an implementation that times out under that
allowance gets no more of them (it hangs, it does not compile).

After ``MAX_DEATHS`` deaths in a row (timeouts, crashes, memory kills) an implementation's
calls are skipped, recorded with the last death's outcome and a message starting
``skipped:``, and retried after 8, 16, 32 then every 64 skipped calls, so a hung or
crashing implementation costs a run minutes, not hours.
"""

from __future__ import annotations

import contextlib
import math
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from harness.calling.protocol import Packer, ProtocolError, storage_bytes, unpack_tensor
from harness.calling.registry import Implementation
from harness.calling.sandbox import LOAD_TIMEOUT, Death, LoadFailed, Sandbox, Target, WorkerOptions, acquire, release
from strategies import Case
from strategies.upstream import upstream_gradients, upstream_scalar

__all__ = [
    "DEFAULT_COMPILE_TIMEOUT",
    "DEFAULT_MEMORY_LIMIT_MIB",
    "DEFAULT_TIMEOUT",
    "LARGE_CLASSES",
    "MAX_DEATHS",
    "Backward",
    "CallResult",
    "Caller",
    "Request",
    "compile_key",
    "expected_shapes",
    "pickle_callable",
    "request_for",
    "target_of",
]

DEFAULT_TIMEOUT = 5.0  # seconds per call
DEFAULT_COMPILE_TIMEOUT = 300.0  # seconds for the first call per compile key, and while dynamo compiles
DEFAULT_MEMORY_LIMIT_MIB = 8192.0  # a worker's resident memory; 0 or None: no limit
LARGE_CLASSES = 1024  # class counts from here on are another shape class (another kernel, often)
MAX_DEATHS = 3
_BACKOFF = (8, 16, 32, 64)


@dataclass(frozen=True)
class Backward:
    """A backward step after the call: the gradient of input ``wrt`` (positional index) is returned.

    ``grad_output`` is back-propagated from an output of its shape (per-sample losses);
    an output of one element that is not of that shape (a reduced loss) is back-propagated
    with ``grad_scalar``. ``grad_output`` None: every output is back-propagated with
    ``grad_scalar``. Gradients are taken with torch autograd; an implementation of another
    framework, or whose output does not require grad, is answered without one (see
    ``CallResult.grad_message``).
    """

    wrt: int = 0
    grad_output: torch.Tensor | None = None
    grad_scalar: float = 1.0


@dataclass(frozen=True)
class Request:
    """One call of an implementation: ``fn(*args, **kwargs)``, ``repeat`` times, optionally with backward.

    ``args`` are tensors, sent with their exact layout; ``kwargs`` values are tensors,
    numbers, strings, booleans or None; ``names`` name the positional tensors in messages
    (``mutated_input``). ``key`` is the compile key (see ``compile_key``): the first call
    with a new key may take the compile allowance, where a compiler is loaded.
    """

    args: tuple[torch.Tensor, ...]
    kwargs: Mapping[str, object] = field(default_factory=dict)
    names: tuple[str, ...] = ()
    repeat: int = 2
    backward: Backward | None = None
    key: tuple = ()


@dataclass(frozen=True)
class CallResult:
    output: torch.Tensor | None  # on the CPU, dense, owned; None when the call failed
    failure: str | None  # an outcome name from harness.grading.metrics.OUTCOMES, or None
    message: str  # the failure, or notes on how the output was read
    seconds: float  # run time of the calls, compile time excluded
    compile_seconds: float = 0.0  # time the worker reported compiling (torch.compile, JAX)
    grad: torch.Tensor | None = None  # the backward step's gradient, dense, owned
    # the backward step's failure (an outcome name) when the forward succeeded, else None
    grad_failure: str | None = None
    # the backward step's failure, or why there is no gradient ("not differentiable: ...")
    grad_message: str = ""
    info: Mapping[str, object] = field(default_factory=dict)  # what was returned: type, dtype, device, shape


def compile_key(case: Case) -> tuple:
    """(dtype, dimensions, shape class): a compiling kernel's first call for each gets the allowance."""
    return (case.format.name, case.logits.ndim, "large" if case.n_classes >= LARGE_CLASSES else "small")


def pickle_callable(fn, label: str, *, by_value: bool = False) -> bytes:
    """cloudpickle's bytes of ``fn`` (lambdas, closures and ``__main__`` functions by value).

    Raises ValueError (one line) for a callable that cannot be pickled.
    """
    import cloudpickle

    module = None
    if by_value:
        import sys

        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        if module is not None and module.__name__ not in ("__main__", "builtins"):
            cloudpickle.register_pickle_by_value(module)
        else:
            module = None
    try:
        return cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        from harness.calling.worker import describe_exception

        raise ValueError(
            f"cannot send {label} to its sandbox process: {describe_exception(exc)}; "
            "define it in a file and pass 'path/to/file.py:function'"
        ) from None
    finally:
        if module is not None:
            cloudpickle.unregister_pickle_by_value(module)


def _importable_name(fn) -> str | None:
    """'module:qualname' for a module-level function a worker can import by name, else None."""
    import sys
    import types

    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not isinstance(fn, types.FunctionType) or not module or module == "__main__" or "<" in qualname:
        return None
    found = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return f"{module}:{qualname}" if found is fn else None


def target_of(impl: Implementation, *, by_value: bool = False) -> Target:
    """Where a worker finds ``impl``: its spec, the module and name of its function, or its pickled callable.

    A module-level function is imported by name (so it shares a worker with the same
    ``module:function`` spec); anything else is sent with cloudpickle.
    """
    if impl.location:
        path = impl.location.rpartition(":")[0]
        stamp = ""
        if path.endswith(".py"):
            try:
                stamp = str(Path(path).stat().st_mtime_ns)
            except OSError:
                stamp = ""
        return Target("spec", impl.location, label=impl.name, stamp=stamp)
    if impl.fn is None:
        raise ValueError(f"{impl.name} has neither a callable nor a spec to load")
    name = None if by_value or impl.pickle_by_value else _importable_name(impl.fn)
    if name is not None:
        return Target("spec", name, label=impl.name)
    payload = pickle_callable(impl.fn, impl.name, by_value=by_value or impl.pickle_by_value)
    return Target("pickle", payload, label=impl.name)


def _validated_seconds(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


def _same_bits(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Bit-for-bit equality of two owned dense outputs (NaN payloads and -0 included)."""
    if a is None or b is None:
        return a is b
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(np.array_equal(storage_bytes(a.contiguous()), storage_bytes(b.contiguous())))


class Caller:
    """Calls implementations in sandbox processes with time, compile and memory limits, on a device.

    ``timeout``: seconds per call (None: none). ``compile_timeout``: seconds for the first
    call per compile key and while dynamo compiles. ``memory_limit_mib``: the worker's
    resident memory (0 or None: none). ``framework``: auto, torch, jax or numpy.
    ``triton_interpret``: run Triton kernels under Triton's CPU interpreter. Raises
    ValueError for a bad limit. Use it as a context manager, or call ``close()``: the
    workers go back to a pool the next Caller reuses (all are killed at exit).
    """

    def __init__(
        self,
        timeout: float | None = DEFAULT_TIMEOUT,
        device: str = "cpu",
        repeat: bool = True,
        *,
        compile_timeout: float | None = DEFAULT_COMPILE_TIMEOUT,
        memory_limit_mib: float | None = DEFAULT_MEMORY_LIMIT_MIB,
        framework: str = "auto",
        triton_interpret: bool = False,
    ) -> None:
        from harness.calling.frameworks import FRAMEWORKS

        self.timeout = _validated_seconds(timeout, "timeout")
        compile_timeout = _validated_seconds(compile_timeout, "compile timeout")
        if compile_timeout is not None and self.timeout is not None:
            compile_timeout = max(compile_timeout, self.timeout)
        self.compile_timeout = compile_timeout if self.timeout is not None else None
        if memory_limit_mib is not None and not (math.isfinite(memory_limit_mib) and memory_limit_mib >= 0):
            raise ValueError(f"memory limit must be a non-negative number of MiB, got {memory_limit_mib!r}")
        self.memory_limit_mib = memory_limit_mib or None
        if framework not in FRAMEWORKS:
            raise ValueError(f"unknown framework {framework!r}; expected one of {', '.join(FRAMEWORKS)}")
        self.device = torch.device(device)
        self.repeat = repeat
        self.options = WorkerOptions(framework=framework, triton_interpret=bool(triton_interpret),
                                     device=self.device.type)  # fmt: skip
        self._sandboxes: dict[str, Sandbox] = {}
        self._targets: dict[str, Target] = {}
        self._trouble: dict[str, list] = {}  # name -> [deaths in a row, last Death, skipped, retry index]
        self._granted: dict[str, set] = {}  # name -> compile keys that had their allowance
        self._hung_compiling: set[str] = set()  # timed out under an allowance: none again

    # -- workers ------------------------------------------------------------------------

    def _target(self, impl: Implementation) -> Target:
        if impl.name not in self._targets:
            self._targets[impl.name] = target_of(impl)
        return self._targets[impl.name]

    def start(self, implementations: Iterable[Implementation]) -> None:
        """Start the workers of these implementations now, side by side (calls wait for them)."""
        for impl in implementations:
            if impl.name not in self._sandboxes:
                with contextlib.suppress(ValueError):  # not picklable: its calls say so
                    self._sandboxes[impl.name] = acquire(self._target(impl), self.options)

    def _ready(self, impl: Implementation) -> Sandbox:
        sandbox = self._sandboxes.get(impl.name)
        if sandbox is None:
            sandbox = self._sandboxes[impl.name] = acquire(self._target(impl), self.options)
        sandbox.wait_loaded(max(LOAD_TIMEOUT, self.compile_timeout or 0))
        return sandbox

    def close(self) -> None:
        """Hand the workers back to the pool (healthy ones are reused; the rest are killed)."""
        for sandbox in self._sandboxes.values():
            release(sandbox)
        self._sandboxes.clear()

    def __del__(self) -> None:
        try:  # noqa: SIM105 - at interpreter exit even contextlib may be gone already
            self.close()
        except Exception:
            pass

    def __enter__(self) -> Caller:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- calls --------------------------------------------------------------------------

    def _encode(self, request: Request, sandbox: Sandbox) -> dict:
        packer = Packer(sandbox.arena)
        args = [packer.pack(t) for t in request.args]
        kwargs = {}
        for name, value in request.kwargs.items():
            if isinstance(value, torch.Tensor):
                kwargs[name] = ("tensor", packer.pack(value))
            elif value is None or isinstance(value, bool | int | float | str):
                kwargs[name] = ("value", value)
            else:
                raise TypeError(f"keyword argument {name!r}: expected a tensor, number, string or None")
        backward = None
        if request.backward is not None:
            grad = request.backward.grad_output
            backward = {"wrt": request.backward.wrt, "grad_output": None if grad is None else packer.pack(grad),
                        "grad_scalar": float(request.backward.grad_scalar)}  # fmt: skip
        names = list(request.names) + [f"argument {i}" for i in range(len(request.names), len(request.args))]
        return {
            "op": "call", "args": args, "kwargs": kwargs, "names": names[: len(args)],
            "repeat": max(1, int(request.repeat)), "backward": backward, "device": str(self.device),
            "buffers": packer.buffers, "out_base": -(-packer.cursor // 64) * 64,
        }  # fmt: skip

    def _skip(self, impl: Implementation) -> CallResult | None:
        trouble = self._trouble.get(impl.name)
        if trouble is None or trouble[0] < MAX_DEATHS:
            return None
        deaths, last, skipped, step = trouble
        if skipped < _BACKOFF[min(step, len(_BACKOFF) - 1)]:
            trouble[2] += 1
            message = f"skipped: the sandbox died on its last {deaths} calls (last: {last.message})"
            return CallResult(None, last.outcome, message, 0.0)
        trouble[2], trouble[3] = 0, step + 1  # retry this call
        return None

    def _record_death(self, impl: Implementation, death: Death | None) -> None:
        if death is None:
            self._trouble.pop(impl.name, None)
            return
        trouble = self._trouble.setdefault(impl.name, [0, death, 0, 0])
        trouble[0] += 1
        trouble[1] = death

    def invoke(self, impl: Implementation, request: Request) -> CallResult:
        """Run ``request`` on ``impl`` in its sandbox: the first call's owned output, or the failure."""
        skipped = self._skip(impl)
        if skipped is not None:
            return skipped
        try:
            sandbox = self._ready(impl)
        except LoadFailed as exc:
            death = Death("crashed", f"the sandbox could not load it: {exc}")
            self._record_death(impl, death)
            return CallResult(None, death.outcome, death.message, 0.0)
        granted = self._granted.setdefault(impl.name, set())
        allow = sandbox.jit and request.key not in granted and impl.name not in self._hung_compiling
        if allow:
            granted.add(request.key)
        replies, death = sandbox.run(
            self._encode(request, sandbox), timeout=self.timeout,
            allowance=self.compile_timeout if allow else self.timeout,
            compile_timeout=self.compile_timeout, memory_limit_mib=self.memory_limit_mib,
        )  # fmt: skip
        self._record_death(impl, death)
        if allow and not replies and death is not None and death.outcome == "timeout":
            self._hung_compiling.add(impl.name)  # it hangs rather than compiles: no more allowances
        try:
            return self._result(replies, death, request, sandbox)
        except ProtocolError as exc:
            sandbox.kill()
            return CallResult(None, "crashed", f"the sandbox sent an unreadable answer ({exc}); it was killed", 0.0)

    def _result(self, replies, death: Death | None, request: Request, sandbox: Sandbox) -> CallResult:
        seconds = sum(float(h.get("seconds", 0.0)) for h, _ in replies)
        compiled = sum(float(h.get("compile_seconds", 0.0)) for h, _ in replies)
        if not replies:
            return CallResult(None, death.outcome, death.message, seconds, compiled)
        header, buffers = replies[0]
        if not header.get("ok"):
            return CallResult(None, header["failure"], str(header.get("message", "")), seconds, compiled,
                              info=header.get("info") or {})  # fmt: skip
        arena = sandbox.arena
        output = unpack_tensor(header["output"], buffers, arena) if header.get("output") else None
        grad = unpack_tensor(header["grad"], buffers, arena) if header.get("grad") else None
        grad_failure, grad_message = header.get("grad_failure"), str(header.get("grad_message") or "")
        info = header.get("info") or {}
        notes = "; ".join(info.get("notes") or [])
        message = f"output: {notes}" if notes else ""
        expected = max(1, int(request.repeat))
        if expected > 1:
            if death is not None:
                return CallResult(None, death.outcome, f"second call: {death.message}", seconds, compiled)
            if len(replies) < 2:
                return CallResult(None, "crashed", "the sandbox ended the request before the second call", seconds,
                                  compiled)  # fmt: skip
            again, again_buffers = replies[1]
            if not again.get("ok"):
                if again["failure"] in ("mutated_input", "crashed"):
                    return CallResult(None, again["failure"], f"second call: {again.get('message', '')}", seconds,
                                      compiled)  # fmt: skip
                return CallResult(None, "nondeterministic",
                                  f"the second call on the same input failed: {again.get('message', '')}", seconds,
                                  compiled)  # fmt: skip
            other = unpack_tensor(again["output"], again_buffers, arena) if again.get("output") else None
            other_grad = unpack_tensor(again["grad"], again_buffers, arena) if again.get("grad") else None
            same_info = {k: v for k, v in (again.get("info") or {}).items() if k != "notes"} == {
                k: v for k, v in info.items() if k != "notes"
            }
            if not (same_info and _same_bits(output, other)):
                return CallResult(None, "nondeterministic", "a second call on the same input answered differently",
                                  seconds, compiled)  # fmt: skip
            if grad_failure is None and (not _same_bits(grad, other_grad) or again.get("grad_failure")):
                grad, grad_failure = None, "nondeterministic"
                grad_message = "a second backward on the same input answered differently"
        return CallResult(output, None, message, seconds, compiled, grad=grad, info=info, grad_failure=grad_failure,
                          grad_message=grad_message)  # fmt: skip

    def call(self, impl: Implementation, case: Case, *, gradients: bool = False) -> CallResult:
        """``impl`` on the case, as its contract says, checked: the owned output, or a failure outcome.

        cross_entropy: ``fn(logits, targets, **options)`` (targets: class indices, with the
        ignored samples' set to ignore_index, or probability targets); the softmax family:
        ``fn(logits)``. See ``request_for`` and ``expected_shapes``. ``gradients``: a
        cross-entropy output is back-propagated with the case's upstream gradients
        (strategies.upstream) and ``grad`` holds the gradient with respect to the logits.
        """
        request = request_for(impl, case, repeat=2 if self.repeat else 1, gradients=gradients)
        result = self.invoke(impl, request)
        if result.failure:
            return result
        problem = self._validate(result, impl, case)
        if problem:
            return CallResult(None, "bad_output", problem, result.seconds, result.compile_seconds, info=result.info)
        if result.grad is not None and tuple(result.grad.shape) != tuple(case.logits.shape):
            shape, wanted = tuple(result.grad.shape), tuple(case.logits.shape)
            message = f"the gradient has shape {shape}, expected {wanted}"
            return replace(result, grad=None, grad_failure="bad_output", grad_message=message)
        return result

    def _validate(self, result: CallResult, impl: Implementation, case: Case) -> str | None:
        info = result.info
        shapes = expected_shapes(impl, case)
        shape = tuple(info.get("shape", ()))
        if shape not in shapes:
            return f"returned shape {shape}, expected {' or '.join(str(s) for s in shapes)}"
        dtype = f"torch.{info.get('dtype')}"
        if impl.output_dtype is not None and dtype != str(impl.output_dtype):
            return f"returned dtype {dtype} for {case.dtype} logits; the required output dtype is {impl.output_dtype}"
        if dtype not in _FLOAT_DTYPES:
            return (
                f"returned dtype {dtype} for {case.dtype} logits; expected a float dtype ({', '.join(_FLOAT_DTYPES)})"
            )
        if info.get("device") != self.device.type:
            return f"returned a tensor on {info.get('device')}, expected {self.device}"
        if result.output is None or str(result.output.dtype) != dtype or tuple(result.output.shape) != shape:
            return "returned a tensor whose values could not be read"
        return None


_FLOAT_DTYPES = ("torch.float16", "torch.bfloat16", "torch.float32", "torch.float64")


def request_for(impl: Implementation, case: Case, repeat: int = 2, *, gradients: bool = False) -> Request:
    """The call of ``impl`` on ``case``: positional logits (and targets), options by keyword.

    ``gradients``: a cross-entropy call gets a backward step with respect to the logits,
    with the case's upstream gradients (``strategies.upstream``) in the logits' dtype.
    """
    if impl.op != "cross_entropy":
        return Request((case.logits,), names=("logits",), repeat=repeat, key=compile_key(case))
    contract = case.contract.restricted(impl.options) if case.contract is not None else None
    if contract is None:
        targets, kwargs = case.targets, {}
    else:
        targets = contract.probs if contract.probs is not None else contract.targets_for(case.targets)
        kwargs = contract.kwargs(case.dtype)
    backward = None
    if gradients:
        backward = Backward(0, upstream_gradients(case).to(case.dtype), upstream_scalar(case))
    return Request((case.logits, targets), kwargs=kwargs, names=("logits", "targets"), repeat=repeat,
                   backward=backward, key=compile_key(case))  # fmt: skip


def expected_shapes(impl: Implementation, case: Case) -> tuple[tuple[int, ...], ...]:
    """The output shapes ``impl`` may return on ``case``: () and (1,) stand for a reduced (scalar) loss."""
    if impl.op == "logsumexp":
        return ((case.logits.shape[0],),)
    if impl.op != "cross_entropy":
        return (tuple(case.logits.shape),)
    per_sample = tuple(case.targets.shape)
    if case.contract is not None and "reduction" in impl.options and "reduction" in case.contract.names:
        return (per_sample,) if case.contract.options.reduction == "none" else ((), (1,))
    return (per_sample, (), (1,))
