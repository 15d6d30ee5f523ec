"""The sandbox worker: a fresh Python process that imports one implementation and calls it on request.

Started by ``harness.calling.sandbox`` as ``python -c "...worker.main()" CONN ARENA PARENT DEATHSIG``
(a clean interpreter, never a fork of the harness). It receives one pickled ``init``
message (sys.path, where the implementation is, framework), imports the implementation,
answers ``loaded``, then serves ``call`` requests until told to ``close`` or until its
parent goes away. User code runs only here: whatever it does to this process (flush
denormals, patch torch, change directory, hold the GIL, exit, crash) stays here.

For each call the worker builds fresh copies of the inputs from the request, exactly as
laid out (strides, storage offset, storage contents), calls the implementation, checks
that no input storage changed (``mutated_input`` names which), turns the answer into an
owned dense tensor or says why it cannot (``bad_output``) and replies before the next call
starts, so an implementation that reuses its output buffer cannot change an answer already
given. With ``repeat`` > 1 the same inputs are called again (the determinism check).
Compilation that torch.compile (dynamo's compile callbacks) or JAX (its monitoring events)
reports is timed apart from run time, and dynamo's start and end are announced to the
harness as they happen, so the harness can allow compile time and kill a hung run.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import pickle
import sys
import threading
import time
from multiprocessing.connection import Connection

import numpy as np
import torch

from harness.calling.frameworks import FRAMEWORKS, NotAnArray, adapter, detect, read_output
from harness.calling.protocol import (
    DTYPES,
    Arena,
    Packer,
    encode_reply,
    owned_tensor,
    storage_bytes,
    storage_extent,
    unpack_bytes,
    unpack_tensor,
)

__all__ = ["describe_exception", "main"]

MESSAGE_LIMIT = 500  # characters of an exception's message kept in a record
# Modules that compile code on first use: with one loaded, a first call may take the compile allowance.
JIT_MODULES = ("torch._dynamo", "jax", "triton", "numba", "cupy", "tensorflow", "mlx", "taichi", "tvm")
_perf_counter = time.perf_counter
_array_equal = np.array_equal


def describe_exception(exc: BaseException) -> str:
    """'Type: message' on one line; an exception whose message cannot be rendered is named by its type."""
    try:
        name = type(exc).__name__
    except Exception:  # pragma: no cover - a metaclass that refuses __name__
        name = "exception"
    try:
        text = str(exc)
        if not isinstance(text, str):
            raise TypeError("__str__ returned a non-string")
    except BaseException as inner:
        text = f"(its message could not be rendered: {type(inner).__name__} in __str__)"
    line = " ".join(f"{name}: {text}".split())
    return line if len(line) <= MESSAGE_LIMIT else line[: MESSAGE_LIMIT - 1] + "…"


class _LoadFailure(Exception):
    pass


class _Channel:
    """The worker's end of the connection; replies may come from dynamo's callbacks mid-call."""

    def __init__(self, fd: int) -> None:
        self.conn = Connection(fd)
        self.lock = threading.Lock()

    def send(self, header: dict, buffers: list[bytes] = ()) -> None:
        with self.lock:
            self.conn.send_bytes(encode_reply(header, buffers))


def _protect(parent: int, deathsig: bool) -> None:
    """Die with the harness: the kernel's parent-death signal (Linux), and a look at the parent when idle.

    No watchdog thread: a second Python thread slows every GIL hand-off of torch's ops
    (measured: 0.1 ms calls became 15 ms on a loaded machine). The parent-death signal is
    asked for only when the harness started the worker from its main thread, since the
    kernel sends it when that *thread* ends.
    """
    try:  # the out-of-memory killer takes this process before the harness
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write("1000")
    except OSError:
        pass
    if deathsig and sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)


def _next_request(channel: _Channel, parent: int) -> bytes:
    """The next request; exits when the harness has gone (its end closed, or this process orphaned)."""
    try:
        while not channel.conn.poll(1.0):
            if os.getppid() != parent:
                os._exit(1)
        return channel.conn.recv_bytes()
    except (EOFError, OSError):
        os._exit(0)


def _import_spec(spec: str):
    """(callable, module) for 'module:function' or '/abs/path/file.py:function'."""
    import importlib

    target, _, attr = spec.rpartition(":")
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = os.path.abspath(target)
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)  # the file's own folder, as when it runs as a script
        name = f"_harness_user_{abs(hash(path))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise _LoadFailure(f"{target} is not a Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        what = target
        loader = module_spec.loader.exec_module
        args = (module,)
    else:
        what = target
        loader, args = importlib.import_module, (target,)
    try:
        loaded = loader(*args)
    except SystemExit as exc:
        raise _LoadFailure(f"importing {what} called sys.exit({exc.code!r})") from None
    except BaseException as exc:
        raise _LoadFailure(f"importing {what} raised {describe_exception(exc)}") from None
    if loaded is not None:
        module = loaded
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise _LoadFailure(f"{target} has no attribute {attr!r}")
    if not callable(fn):
        raise _LoadFailure(f"{attr} is not callable")
    return fn, module


def _load(init: dict):
    """(callable, info) from the init message; _LoadFailure with a one-line reason."""
    kind, payload = init["target"]
    module = None
    if kind == "spec":
        fn, module = _import_spec(payload)
    else:
        try:
            import cloudpickle  # noqa: F401 - registers what cloudpickle's payloads need

            fn = pickle.loads(payload)
        except SystemExit as exc:
            raise _LoadFailure(f"unpickling it called sys.exit({exc.code!r})") from None
        except BaseException as exc:
            raise _LoadFailure(f"unpickling it in the sandbox raised {describe_exception(exc)}") from None
        if not callable(fn):
            raise _LoadFailure(f"{type(fn).__name__} is not callable")
    framework = init.get("framework", "auto")
    if framework not in FRAMEWORKS:
        raise _LoadFailure(f"unknown framework {framework!r}")
    if framework == "auto":
        framework = detect(fn, module)
    try:
        doc = (getattr(fn, "__doc__", None) or "").strip().split("\n")[0]
        k_dimensional = bool(getattr(fn, "k_dimensional", False))
        contiguous_only = bool(getattr(fn, "contiguous_only", False))
    except Exception:
        doc, k_dimensional, contiguous_only = "", False, False
    return fn, {"description": doc if isinstance(doc, str) else "", "k_dimensional": k_dimensional,
                "contiguous_only": contiguous_only,
                "framework": framework, **_contract(fn)}  # fmt: skip


def _contract(fn) -> dict:
    """What fn declares about its contract: op, options (from its signature), soft targets, output dtype."""
    from harness.calling.signature import accepted_options, takes_var_keywords

    def attribute(name, default):
        try:
            return getattr(fn, name, default)
        except Exception:  # a hostile __getattr__ declares nothing
            return default

    op = attribute("op", "cross_entropy")
    output_dtype = attribute("output_dtype", None)
    return {
        "op": op if isinstance(op, str) else "cross_entropy",
        "options": sorted(accepted_options(fn)),
        "var_keywords": takes_var_keywords(fn),
        "soft_targets": bool(attribute("soft_targets", False)),
        "output_dtype": None if output_dtype is None else str(output_dtype).removeprefix("torch."),
    }


def _jit_loaded() -> bool:
    return any(name in sys.modules for name in JIT_MODULES)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``then()`` right after ``name`` is first imported (torch.compile imports dynamo lazily)."""

    def __init__(self, name: str, then) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run, then = spec.loader.exec_module, self.then

        def exec_module(module):
            run(module)
            then()

        spec.loader.exec_module = exec_module
        return spec


class _Compiles:
    """Compile time inside the current call: dynamo's callbacks and JAX's compile events."""

    JAX_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration")  # fmt: skip

    def __init__(self, channel: _Channel) -> None:
        self.channel = channel
        self.seconds = 0.0
        self._started: float | None = None
        self._dynamo = self._jax = False

    def watch(self) -> None:
        """Register with dynamo as soon as anything imports it, even in the middle of a call."""
        if "torch._dynamo" in sys.modules:
            self._hook_dynamo()
        else:
            sys.meta_path.insert(0, _AfterImport("torch._dynamo", self._hook_dynamo))

    def _hook_dynamo(self) -> None:
        if self._dynamo:
            return
        self._dynamo = True
        try:
            from torch._dynamo.callback import callback_handler

            callback_handler.register_start_callback(self._start)
            callback_handler.register_end_callback(self._end)
        except (ImportError, AttributeError):
            pass

    def hook(self) -> None:
        """Register with JAX once it has been imported (by the implementation)."""
        if not self._jax and "jax" in sys.modules:
            try:
                from jax import monitoring

                monitoring.register_event_duration_secs_listener(self._jax_event)
            except (ImportError, AttributeError):
                pass
            self._jax = True

    def _start(self, *args) -> None:
        self._started = _perf_counter()
        self.channel.send({"kind": "compile", "phase": "start"})

    def _end(self, *args) -> None:
        if self._started is not None:
            self.seconds += _perf_counter() - self._started
            self._started = None
        self.channel.send({"kind": "compile", "phase": "end"})

    def _jax_event(self, event: str, duration: float, **kwargs) -> None:
        if event in self.JAX_EVENTS:
            self.seconds += float(duration)


def _dense(value) -> tuple[torch.Tensor | None, dict, str | None]:
    """(owned dense CPU tensor or None, what was returned, why it cannot be graded or None)."""
    info: dict = {}
    try:
        info["type"] = f"{type(value).__module__}.{type(value).__qualname__}"
    except Exception:
        info["type"] = "object"
    try:
        value = read_output(value)
    except NotAnArray as exc:
        return None, info, str(exc)
    if not isinstance(value, torch.Tensor):
        return None, info, f"returned {type(value).__name__}, not a tensor"
    notes = []
    try:
        with torch._C.DisableTorchFunctionSubclass():  # a subclass's __torch_function__ is user code
            t = value
            if type(t) is not torch.Tensor:
                notes.append(f"a {type(t).__name__} (tensor subclass) read as a plain tensor")
                t = torch.Tensor.as_subclass(t, torch.Tensor)
            info.update(dtype=str(t.dtype).removeprefix("torch."), device=t.device.type, shape=list(t.shape))
            if t.device.type == "meta":
                return None, info, None  # no values; the harness reports the device
            if t.is_nested:
                return None, info, "returned a nested tensor"
            if t.layout != torch.strided:
                notes.append(f"{str(t.layout).removeprefix('torch.')} converted to dense")
                t = t.to_dense()
            if any(name is not None for name in getattr(t, "names", None) or ()):  # torch < 2.13 only
                notes.append("names dropped")
                t = t.rename(None)
            t = t.detach()
            if t.is_neg():
                notes.append("negative view resolved")
                t = t.resolve_neg()
            if t.is_conj():
                t = t.resolve_conj()
            if t.device.type != "cpu":
                t = t.cpu()
            if t.dtype not in DTYPES.values():
                return None, info, None  # the harness reports the dtype
            t = t.contiguous()
    except Exception as exc:
        return None, info, f"its {info['type']} output could not be read: {describe_exception(exc)}"
    info["notes"] = notes
    return t, info, None


class _Inputs:
    """The request's tensors kept pristine; fresh, exactly laid out copies for each call."""

    def __init__(self, specs: list[dict], names: list[str], buffers, arena: Arena, device: torch.device) -> None:
        self.names = names
        self.device = device
        self.layouts, self.raw = [], []
        for spec in specs:
            dtype, shape, stride, offset, raw = unpack_bytes(spec, buffers, arena)
            self.layouts.append((dtype, shape, stride, offset))
            # pristine: the request's own bytes, or the arena's (the harness leaves them alone
            # until the request is answered, and the implementation only ever gets copies)
            self.raw.append(raw)
        self.dtypes = [layout[0] for layout in self.layouts]

    def release(self) -> None:
        for raw in self.raw:
            if isinstance(raw, memoryview):
                raw.release()
        self.raw = []

    def fresh(self) -> list[torch.Tensor]:
        """New tensors over private copies of the pristine storages, on the device."""
        out = []
        for (dtype, shape, stride, offset), raw in zip(self.layouts, self.raw):
            t = owned_tensor(raw, dtype, shape, stride, offset)
            if self.device.type != "cpu":
                storage = t.as_strided((len(raw) // max(t.element_size(), 1),), (1,), 0).to(self.device)
                t = storage.as_strided(shape, stride, offset)
            out.append(t)
        return out

    def mutated(self, used: list[torch.Tensor]) -> str | None:
        """The name of the first input whose storage no longer holds its pristine bytes."""
        for name, raw, after in zip(self.names, self.raw, used):
            now = storage_bytes(after)
            if now.size != len(raw) or (now.size and not _array_equal(now, np.frombuffer(raw, dtype=np.uint8))):
                return name
        return None


def _forward(fn, fw, used: list[torch.Tensor], n_args: int, tensor_kwargs: dict, plain_kwargs: dict, dtype):
    with fw.scope(dtype):
        converted = fw.inputs(used, dtype)
        args = converted[:n_args]
        kwargs = dict(zip(tensor_kwargs, converted[n_args:]))
        value = fn(*args, **kwargs, **plain_kwargs)
        return read_output(value)  # JAX computes here


def _watch(used: list[torch.Tensor], wrt: int) -> torch.Tensor:
    """Make input ``wrt`` a leaf that requires grad, in its exact layout; returns the view the call gets."""
    watched = used[wrt]
    if not watched.dtype.is_floating_point:
        raise TypeError(f"cannot differentiate with respect to a {watched.dtype} input")
    base = watched.detach().as_strided((storage_extent(watched),), (1,), 0).requires_grad_(True)
    watched = base.as_strided(watched.shape, watched.stride(), watched.storage_offset())
    used[wrt] = watched
    return watched


def _backward(value, watched: torch.Tensor, backward: dict, grad_output: torch.Tensor | None, name: str):
    """(gradient or None, failure outcome or None, message): the backward step of one call.

    No gradient and no failure: the output is not differentiable with torch autograd.
    """
    if not isinstance(value, torch.Tensor) or not value.requires_grad:
        return None, None, f"not differentiable: the output does not require grad with respect to {name}"
    if grad_output is not None and tuple(value.shape) == tuple(grad_output.shape):
        upstream = grad_output.to(dtype=value.dtype, device=value.device, copy=True)  # a backward may write it
    elif value.numel() == 1:
        upstream = torch.full_like(value.detach(), float(backward.get("grad_scalar", 1.0)))
    else:
        return None, None, ""  # a wrong shape: the forward's check reports it
    try:
        (grad,) = torch.autograd.grad(value, watched, grad_outputs=upstream, allow_unused=True)
    except SystemExit as exc:
        return None, "crashed", f"the backward called sys.exit({exc.code!r})"
    except BaseException as exc:
        return None, "raised", f"the backward raised {describe_exception(exc)}"
    if grad is None:  # the output has a graph, but its backward gave no gradient for the logits
        return None, "bad_output", f"the backward returned no gradient (None) for {name}"
    if grad.layout != torch.strided:  # a sparse gradient: read densely, as outputs are
        grad = grad.to_dense()
    return grad, None, ""


def _call(fn, request: dict, buffers, arena: Arena, channel: _Channel, compiles: _Compiles, state: dict) -> _Inputs:
    """Serve one call request: up to ``repeat`` calls, one reply each, stopping at the first failure.

    With a backward step, the input ``wrt`` requires grad and the output is back-propagated
    (``Backward`` in harness.calling.caller): a failed backward is reported beside the
    forward's output (``grad_failure``), and a forward that fails only because its input
    requires grad is run again without, and answered as not differentiable.
    Returns the request's inputs, to be released once the request is answered.
    """
    device = torch.device(request.get("device", "cpu"))
    names = list(request["names"])
    tensor_kwargs = {k: v for k, v in request["kwargs"].items() if v[0] == "tensor"}
    plain_kwargs = {k: v[1] for k, v in request["kwargs"].items() if v[0] == "value"}
    specs = list(request["args"]) + [v[1] for v in tensor_kwargs.values()]
    inputs = _Inputs(specs, names + list(tensor_kwargs), buffers, arena, device)
    n_args = len(request["args"])
    backward = request.get("backward")
    grad_output = None
    if backward is not None and backward.get("grad_output") is not None:
        grad_output = unpack_tensor(backward["grad_output"], buffers, arena).to(device)
    fw = state["adapter"]
    dtype = inputs.dtypes[0] if inputs.dtypes else torch.float32
    packer = Packer(arena, base=int(request.get("out_base", 0)))
    for index in range(int(request.get("repeat", 1))):
        compiles.hook()
        compiles.seconds = 0.0
        used = inputs.fresh()
        grad, grad_failure, grad_message = None, None, ""
        start = _perf_counter()
        try:
            watched = None
            if backward is not None and fw.name == "torch":
                wrt = int(backward.get("wrt", 0))
                watched = _watch(used, wrt)
            elif backward is not None:
                grad_message = (
                    f"not differentiable: a {fw.name} implementation (gradients are taken with torch autograd)"
                )
            try:
                value = _forward(fn, fw, used, n_args, tensor_kwargs, plain_kwargs, dtype)
            except (NotAnArray, SystemExit):
                raise
            except BaseException as exc:
                if watched is None or isinstance(exc, KeyboardInterrupt):
                    raise
                # it may only refuse inputs that require grad (a .numpy() call): try again without
                used, watched = inputs.fresh(), None
                value = _forward(fn, fw, used, n_args, tensor_kwargs, plain_kwargs, dtype)
                grad_message = f"not differentiable: with logits that require grad it raised {describe_exception(exc)}"
            if watched is not None:
                grad, grad_failure, grad_message = _backward(value, watched, backward, grad_output, names[wrt])
        except SystemExit as exc:
            seconds = _perf_counter() - start - compiles.seconds
            channel.send({"kind": "result", "call": index, "ok": False, "failure": "crashed",
                          "message": f"the implementation called sys.exit({exc.code!r})", "seconds": seconds,
                          "compile_seconds": compiles.seconds})  # fmt: skip
            return inputs
        except NotAnArray as exc:
            seconds = _perf_counter() - start - compiles.seconds
            channel.send({"kind": "result", "call": index, "ok": False, "failure": "bad_output", "message": str(exc),
                          "seconds": seconds, "compile_seconds": compiles.seconds})  # fmt: skip
            return inputs
        except BaseException as exc:
            seconds = _perf_counter() - start - compiles.seconds
            channel.send({"kind": "result", "call": index, "ok": False, "failure": "raised",
                          "message": describe_exception(exc), "seconds": seconds,
                          "compile_seconds": compiles.seconds})  # fmt: skip
            return inputs
        seconds = _perf_counter() - start - compiles.seconds
        mutated = inputs.mutated(used)
        if mutated is not None:
            channel.send({"kind": "result", "call": index, "ok": False, "failure": "mutated_input",
                          "message": f"modified its input {mutated} in place", "seconds": seconds,
                          "compile_seconds": compiles.seconds})  # fmt: skip
            return inputs
        dense, info, problem = _dense(value)
        if problem is not None:
            channel.send({"kind": "result", "call": index, "ok": False, "failure": "bad_output", "message": problem,
                          "seconds": seconds, "compile_seconds": compiles.seconds, "info": info})  # fmt: skip
            return inputs
        packer.buffers = []
        reply = {"kind": "result", "call": index, "ok": True, "seconds": seconds, "compile_seconds": compiles.seconds,
                 "info": info, "output": None if dense is None else packer.pack(dense, exact_layout=False),
                 "grad_failure": grad_failure, "grad_message": grad_message}  # fmt: skip
        if grad is not None:
            reply["grad"] = packer.pack(grad.detach(), exact_layout=False)
        channel.send(reply, packer.buffers)
        del value, dense, used, grad
    return inputs


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    conn_fd, arena_fd, parent, deathsig = int(argv[0]), int(argv[1]), int(argv[2]), argv[3] == "1"
    _protect(parent, deathsig)
    channel = _Channel(conn_fd)
    compiles = _Compiles(channel)
    compiles.watch()  # before the implementation is imported: torch.compile at import compiles later
    arena = Arena(arena_fd)
    init = pickle.loads(_next_request(channel, parent))
    os.chdir(init.get("cwd") or os.getcwd())
    # '' (the harness's current folder) made absolute: user code may change folders
    sys.path[:] = [p or init.get("cwd") or os.getcwd() for p in init["sys_path"]]
    try:
        fn, info = _load(init)
        state = {"adapter": adapter(info["framework"])}
    except _LoadFailure as exc:
        channel.send({"kind": "loaded", "ok": False, "message": str(exc)})
        os._exit(0)
    except BaseException as exc:
        channel.send({"kind": "loaded", "ok": False, "message": describe_exception(exc)})
        os._exit(0)
    channel.send({"kind": "loaded", "ok": True, **info, "jit": _jit_loaded()})
    while True:
        request = pickle.loads(_next_request(channel, parent))
        if request["op"] == "close":
            os._exit(0)
        if request["op"] == "call":
            start = _perf_counter()
            inputs = _call(fn, request, request.get("buffers", []), arena, channel, compiles, state)
            inputs.release()
            channel.send({"kind": "done", "seconds": _perf_counter() - start, "jit": _jit_loaded()})
