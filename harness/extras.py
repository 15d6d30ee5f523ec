"""Optional extras: a missing one is a one-line usage error (exit 2) naming what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from harness.campaign.settings import SettingsError

__all__ = ["EXTRAS", "MissingExtra", "require"]

# extra name -> what it is for; pyproject.toml declares the packages of each.
EXTRAS = {
    "jax": "JAX implementations (--framework jax)",
    "triton": "Triton kernels on the CPU (--triton-interpret)",
    "cluster": "Dask executors (--executor dask)",
}


class MissingExtra(SettingsError):
    """An optional dependency is not installed; the message says which extra provides it."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module``, or raise MissingExtra naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        purpose = EXTRAS.get(extra, extra)
        raise MissingExtra(
            f"{purpose} need the '{extra}' extra ({exc.name or module} is not installed): "
            f"pip install 'ce-harness[{extra}]', or bash scripts/setup.sh {extra}"
        ) from None
