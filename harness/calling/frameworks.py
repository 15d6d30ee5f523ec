"""Inside a sandbox worker: hand an implementation arrays of its own framework, read its answer back.

``torch`` implementations get tensors as drawn (exact layout). ``numpy`` ones get NumPy
arrays sharing the tensors' memory (so an in-place write is still caught); bfloat16 goes
through ``ml_dtypes``. ``jax`` ones get JAX arrays (through DLPack, or NumPy where DLPack
refuses a layout); a float64 case runs inside ``jax.enable_x64(True)``, so JAX keeps the
dtype, and other cases get int32 targets, JAX's default integer. Answers are read back
from any of the three, whatever the framework.

``detect`` guesses the framework of a loaded callable from the modules its globals
reference: torch wins, then JAX (optax, flax), then NumPy (SciPy).
"""

from __future__ import annotations

import contextlib
import sys
from types import ModuleType
from typing import Any

import torch

__all__ = ["FRAMEWORKS", "Adapter", "NotAnArray", "adapter", "detect", "read_output"]

FRAMEWORKS = ("auto", "torch", "jax", "numpy")
_ROOTS = {"torch": "torch", "jax": "jax", "jaxlib": "jax", "optax": "jax", "flax": "jax", "equinox": "jax",
          "numpy": "numpy", "scipy": "numpy"}  # fmt: skip


class NotAnArray(TypeError):
    """The implementation returned something that is not a tensor or an array."""


def _roots(namespace: dict) -> set[str]:
    found = set()
    for value in list(namespace.values()):
        try:
            name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        except Exception:  # an object whose attribute lookup raises says nothing
            continue
        if isinstance(name, str):
            root = _ROOTS.get(name.split(".")[0])
            if root:
                found.add(root)
    return found


def detect(fn: Any, module: ModuleType | None = None) -> str:
    """'torch', 'jax' or 'numpy': the framework ``fn`` (or its module) imports; torch when unsure."""
    namespace = dict(getattr(fn, "__globals__", None) or {})
    if module is not None:
        namespace.update(vars(module))
    wrapped = getattr(fn, "__wrapped__", None)
    if wrapped is not None:
        namespace.update(getattr(wrapped, "__globals__", None) or {})
    found = _roots(namespace)
    for framework in ("torch", "jax", "numpy"):
        if framework in found:
            return framework
    return "torch"


def _numpy_dtype(dtype: torch.dtype):
    import numpy as np

    if dtype == torch.bfloat16:
        try:
            import ml_dtypes
        except ImportError:
            raise ImportError(
                "bfloat16 NumPy arrays need ml_dtypes: pip install 'ce-harness[jax]' (or ml_dtypes)"
            ) from None
        return np.dtype(ml_dtypes.bfloat16)
    return torch.empty((), dtype=dtype).numpy().dtype


def _as_numpy(t: torch.Tensor):
    """A NumPy array sharing ``t``'s memory, strides and offset (bfloat16 via ml_dtypes)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_numpy_dtype(torch.bfloat16))
    return t.numpy()


def read_output(value: Any) -> Any:
    """A torch tensor for a NumPy or JAX answer; a torch tensor (or anything else) is returned as it is."""
    if isinstance(value, torch.Tensor):
        return value
    module = type(value).__module__ or ""
    numpy = sys.modules.get("numpy")
    if module.startswith(("jax", "jaxlib")):
        import numpy

        value = numpy.asarray(value)  # blocks until JAX has computed it
    if numpy is not None and isinstance(value, numpy.generic):
        value = numpy.asarray(value)
    if numpy is not None and isinstance(value, numpy.ndarray):
        if any(stride < 0 for stride in value.strides):
            # a one-element array counts as contiguous whatever its stride, but torch refuses negative ones
            value = value.copy()
        if value.dtype.name == "bfloat16":
            return torch.from_numpy(numpy.ascontiguousarray(value).view(numpy.int16)).view(torch.bfloat16)
        try:
            return torch.from_numpy(numpy.ascontiguousarray(value))
        except TypeError as exc:
            raise NotAnArray(f"returned a NumPy array of dtype {value.dtype}, unreadable by torch ({exc})") from None
    return value


class Adapter:
    """Converts inputs for one framework and scopes each call (JAX's x64 mode)."""

    name = "torch"

    def inputs(self, tensors: list[torch.Tensor], dtype: torch.dtype) -> list[Any]:
        return tensors

    def scope(self, dtype: torch.dtype):
        return contextlib.nullcontext()


class _NumpyAdapter(Adapter):
    name = "numpy"

    def inputs(self, tensors, dtype):
        return [_as_numpy(t.detach()) if t.device.type == "cpu" else t.detach().cpu().numpy() for t in tensors]


class _JaxAdapter(Adapter):
    name = "jax"

    def __init__(self) -> None:
        import jax

        self.jax = jax

    def _one(self, t: torch.Tensor, x64: bool):
        if not x64 and t.dtype == torch.int64:
            t = t.to(torch.int32)  # JAX's integers are 32-bit unless x64 is on
        try:
            return self.jax.dlpack.from_dlpack(t.detach())
        except Exception:  # a layout DLPack will not take: go through NumPy
            import jax.numpy as jnp

            return jnp.asarray(_as_numpy(t.detach().cpu()))

    def inputs(self, tensors, dtype):
        x64 = dtype == torch.float64
        with self.scope(dtype):
            return [self._one(t, x64) for t in tensors]

    def scope(self, dtype):
        return self.jax.enable_x64(True) if dtype == torch.float64 else contextlib.nullcontext()


def adapter(framework: str) -> Adapter:
    """The adapter of a framework named in FRAMEWORKS (not 'auto')."""
    if framework == "numpy":
        return _NumpyAdapter()
    if framework == "jax":
        return _JaxAdapter()
    return Adapter()
