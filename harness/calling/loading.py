"""Resolve an IMPL spec: a built-in name, ``module:function`` or ``path/to/file.py:function``.

A user function that also takes (N, C, d1, ..., dk) logits says so with an attribute,
``fn.k_dimensional = True``; it then gets layout-regime cases too. One that needs
contiguous logits says ``fn.contiguous_only = True``; it then gets no strided case.
A ``file.py:function`` spec is resolved against the working directory it is loaded from:
the implementation's name and source are ``/absolute/path/file.py:function``, so reports
(which store them) replay, resume and merge from any working directory.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import harness.calling.implementations  # noqa: F401 - declares the built-ins
from harness.calling.registry import REGISTRY, Implementation

__all__ = ["LoadError", "load_implementation"]


class LoadError(ValueError):
    """An IMPL spec that does not name a usable callable; the message is one line."""


def _load_file(path: Path, spec: str):
    if not path.is_file():
        raise LoadError(f"cannot load {spec!r}: no file {path}")
    name = f"_harness_user_{abs(hash(path.resolve()))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise LoadError(f"cannot load {spec!r}: {path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise LoadError(f"cannot load {spec!r}: importing {path} raised {type(exc).__name__}: {exc}") from None
    return module


def load_implementation(spec: str) -> Implementation:
    """The registry entry for a built-in name, or a new Implementation for a user callable."""
    if spec in REGISTRY:
        return REGISTRY.get(spec)
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise LoadError(
            f"unknown implementation {spec!r}: use a built-in name ({', '.join(REGISTRY.names())}), "
            "module:function or path/to/file.py:function"
        )
    source = spec
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _load_file(Path(target), spec)
        source = f"{Path(target).resolve()}:{attr}"
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise LoadError(f"cannot load {spec!r}: importing {target} raised {type(exc).__name__}: {exc}") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise LoadError(f"cannot load {spec!r}: {target} has no attribute {attr!r}")
    if not callable(fn):
        raise LoadError(f"cannot load {spec!r}: {attr} is not callable")
    return Implementation(
        source,
        fn,
        source=source,
        description=(fn.__doc__ or "").strip().split("\n")[0],
        k_dimensional=bool(getattr(fn, "k_dimensional", False)),
        contiguous_only=bool(getattr(fn, "contiguous_only", False)),
    )
