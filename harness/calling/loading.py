"""Resolve an IMPL spec: a built-in name, ``module:function`` or ``path/to/file.py:function``.

User code is imported only in a sandbox worker, never in the harness: loading starts a
worker, which imports the spec (a file path made absolute against the current folder,
with the file's folder and the harness's sys.path importable) and describes what it
found. The worker is kept for the run's calls. An import that raises, calls
``sys.exit`` or ``os._exit``, hangs or crashes is a one-line ``LoadError``.

A user function that also takes (N, C, d1, ..., dk) logits says so with an attribute,
``fn.k_dimensional = True``; it then gets layout-regime cases too. One that needs
contiguous logits says ``fn.contiguous_only = True``; it then gets no strided case.
A ``file.py:function`` spec is resolved against the working directory it is loaded from:
the implementation's name and source are ``/absolute/path/file.py:function``, so reports
(which store them) replay, resume and merge from any working directory.
Its contract (issue 14)
is read the same way: the option keywords its signature names (``weight``,
``ignore_index``, ``reduction``, ``label_smoothing``, ``z_loss``, ``softcap``), and the
attributes ``fn.op`` (``log_softmax``, ``softmax``, ``logsumexp``; default
``cross_entropy``), ``fn.soft_targets = True`` (it takes float (N, C) probability
targets) and ``fn.output_dtype`` (the dtype its output must have, e.g. ``torch.float32``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from harness.calling.caller import target_of
from harness.calling.implementations import REFERENCES  # declares the built-ins too
from harness.calling.registry import REGISTRY, Implementation, check_name
from harness.calling.sandbox import LoadFailed, Target, WorkerOptions, acquire, release

__all__ = ["LoadError", "contract_fields", "load_implementation", "probe"]


class LoadError(ValueError):
    """An IMPL spec that does not name a usable callable; the message is one line."""


def _location(spec: str, target: str, attr: str) -> str:
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise LoadError(f"cannot load {spec!r}: no file {path}")
        return f"{path.resolve()}:{attr}"
    return f"{target}:{attr}"


def contract_fields(info: dict, label: str) -> dict:
    """Implementation fields (op, options, soft_targets, output_dtype) from a worker's load report.

    Raises LoadError (one line) for an op or output dtype the harness does not know.
    """
    from harness.calling.signature import OPS
    from harness.formats import FORMATS

    op = str(info.get("op", "cross_entropy"))
    if op not in OPS:
        raise LoadError(f"{label} declares op {op!r}; expected one of {', '.join(OPS)}")
    output_dtype = info.get("output_dtype")
    if output_dtype is not None:
        fmt = FORMATS.get(str(output_dtype))
        if fmt is None:
            raise LoadError(f"{label} declares output_dtype {output_dtype!r}; expected one of {', '.join(FORMATS)}")
        output_dtype = fmt.dtype
    cross_entropy = op == "cross_entropy"
    return {
        "op": op,
        "options": frozenset(info.get("options", ())) if cross_entropy else frozenset(),
        "soft_targets": bool(info.get("soft_targets", False)) and cross_entropy,
        "output_dtype": output_dtype,
        "var_keywords": bool(info.get("var_keywords", False)) and cross_entropy,
    }


def _describe(target: Target, options: WorkerOptions) -> dict:
    sandbox = acquire(target, options)
    try:
        info = sandbox.wait_loaded()
    except LoadFailed:
        sandbox.kill()
        raise
    release(sandbox)  # kept loaded for the run's calls
    return info


def load_implementation(spec: str, options: WorkerOptions | None = None) -> Implementation:
    """The registry entry for a built-in name, or a new Implementation for a user spec.

    ``options`` are the sandbox's (framework, Triton's interpreter, device), which the
    import may depend on. Raises LoadError (one line).
    """
    if spec in REGISTRY:
        return REGISTRY.get(spec)
    if spec in REFERENCES:  # what check compares with (e.g. "torch (options)"): replay loads it by name
        return REFERENCES.get(spec)
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise LoadError(
            f"unknown implementation {spec!r}: use a built-in name ({', '.join(REGISTRY.names())}), "
            "module:function or path/to/file.py:function"
        )
    try:
        check_name(spec)
    except ValueError as exc:
        raise LoadError(str(exc)) from None
    location = _location(spec, target, attr)  # a file's path made absolute: reports replay from anywhere
    try:
        info = _describe(Target("spec", location, label=spec), options or WorkerOptions())
    except LoadFailed as exc:
        raise LoadError(f"cannot load {spec!r}: {exc}") from None
    return Implementation(
        location,
        None,
        source=location,
        description=str(info.get("description", "")),
        k_dimensional=bool(info.get("k_dimensional", False)),
        contiguous_only=bool(info.get("contiguous_only", False)),
        location=location,
        framework=str(info.get("framework", "torch")),
        **contract_fields(info, spec),
    )


def probe(impl: Implementation, options: WorkerOptions | None = None) -> Implementation:
    """``impl`` after its sandbox has loaded it (its framework filled in); LoadError when it cannot be.

    A callable whose module the worker cannot import by name is sent again by value.
    """
    options = options or WorkerOptions()
    try:
        info = _describe(target_of(impl), options)
    except ValueError as exc:  # cannot be pickled
        raise LoadError(str(exc)) from None
    except LoadFailed as exc:
        if impl.location or impl.fn is None:
            raise LoadError(f"cannot load {impl.name!r}: {exc}") from None
        try:
            info = _describe(target_of(impl, by_value=True), options)
        except (LoadFailed, ValueError) as again:
            raise LoadError(f"cannot load {impl.name!r} in its sandbox: {again}") from None
        impl = dataclasses.replace(impl, pickle_by_value=True)  # what works: callers pickle it so too
    contract = contract_fields(info, impl.name) if impl.source == "python" else {}
    return dataclasses.replace(impl, framework=str(info.get("framework", impl.framework)), **contract)
