"""Resolve an IMPL spec: a built-in name, ``module:function`` or ``path/to/file.py:function``.

User code is imported only in a sandbox worker, never in the harness: loading starts a
worker, which imports the spec (a file path made absolute against the current folder,
with the file's folder and the harness's sys.path importable) and describes what it
found. The worker is kept for the run's calls. An import that raises, calls
``sys.exit`` or ``os._exit``, hangs or crashes is a one-line ``LoadError``.

A user function that also takes (N, C, d1, ..., dk) logits says so with an attribute,
``fn.k_dimensional = True``; it then gets layout-regime cases too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import harness.calling.implementations  # noqa: F401 - declares the built-ins
from harness.calling.caller import target_of
from harness.calling.registry import REGISTRY, Implementation, check_name
from harness.calling.sandbox import LoadFailed, Target, WorkerOptions, acquire, release

__all__ = ["LoadError", "load_implementation", "probe"]


class LoadError(ValueError):
    """An IMPL spec that does not name a usable callable; the message is one line."""


def _location(spec: str, target: str, attr: str) -> str:
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise LoadError(f"cannot load {spec!r}: no file {path}")
        return f"{path.resolve()}:{attr}"
    return f"{target}:{attr}"


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
    location = _location(spec, target, attr)
    try:
        info = _describe(Target("spec", location, label=spec), options or WorkerOptions())
    except LoadFailed as exc:
        raise LoadError(f"cannot load {spec!r}: {exc}") from None
    return Implementation(
        spec,
        None,
        source=spec,
        description=str(info.get("description", "")),
        k_dimensional=bool(info.get("k_dimensional", False)),
        location=location,
        framework=str(info.get("framework", "torch")),
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
    return dataclasses.replace(impl, framework=str(info.get("framework", impl.framework)))
