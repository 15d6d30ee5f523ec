"""The harness's own floating-point state, guarded: IEEE arithmetic whatever the calling script set.

Implementations run in sandbox processes, so their code cannot touch this process. But
the Python API runs inside the user's own script, which may have set, before calling
``harness.check``, things that would silently change the oracle or the strategies:

- flush-to-zero / denormals-are-zero (``torch.set_flush_denormal(True)``, a common speed
  setting): subnormal logits read as 0, and a loss of 3.78e-44 rounds to 0;
- torch's default dtype (``torch.set_default_dtype(torch.float64)``);
- mpmath's working precision, gmpy2's current context (precision, rounding, exponent range);
- torch functions replaced at module level (``torch.exp = my_exp``);
- torch's CPU thread count.

``harness_numerics()`` checks these on entry, puts sane values in place for the duration
and restores the caller's afterwards. It nests (only the outermost level does work), and
costs about 50 µs.

The harness runs its own torch work on ``HARNESS_THREADS`` (1) CPU thread: the oracle's
float64 sums, and so which tier decides a borderline value, then do not depend on the
machine's core count; and a harness that alternates with its sandbox workers would
otherwise wake OpenMP threads for every small reduction, which on a busy machine costs
milliseconds each (measured: a default check took 23–25 s with torch's 2 threads, 13–15 s
with one).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import gmpy2
import mpmath
import torch

__all__ = ["HARNESS_THREADS", "flushes_denormals", "guarded", "harness_numerics"]

HARNESS_THREADS = 1

_state = threading.local()
_BUILTINS = torch._C._VariableFunctions
# torch.<name> attributes that are torch's own builtins when nobody has patched them
_PATCHABLE = tuple(
    name
    for name in dir(_BUILTINS)
    if not name.startswith("_") and getattr(torch, name, None) is getattr(_BUILTINS, name)
)


def flushes_denormals(tiny: float = 2.0**-1070, half: float = 0.5) -> bool:
    """Whether this thread's arithmetic flushes subnormals (FTZ/DAZ), tested on a subnormal product.

    The operands are arguments so the product is computed here, not folded at compile time.
    """
    return tiny * half == 0.0 or bool((torch.tensor(tiny, dtype=torch.float64) * half).item() == 0.0)


@contextlib.contextmanager
def harness_numerics() -> Iterator[None]:
    """IEEE subnormals, float32 default dtype, default mpmath and gmpy2 contexts, torch's own functions
    and HARNESS_THREADS CPU threads.

    The caller's settings are back in place when the block ends.
    """
    if getattr(_state, "depth", 0):
        _state.depth += 1
        try:
            yield
        finally:
            _state.depth -= 1
        return
    flushed = flushes_denormals()
    if flushed:
        torch.set_flush_denormal(False)
    dtype = torch.get_default_dtype()
    if dtype != torch.float32:
        torch.set_default_dtype(torch.float32)
    prec, pretty = mpmath.mp.prec, mpmath.mp.pretty
    mpmath.mp.prec, mpmath.mp.pretty = 53, False
    context = gmpy2.get_context()
    gmpy2.set_context(gmpy2.context())
    threads = torch.get_num_threads()
    if threads != HARNESS_THREADS:
        torch.set_num_threads(HARNESS_THREADS)
    patched = {n: getattr(torch, n) for n in _PATCHABLE if getattr(torch, n) is not getattr(_BUILTINS, n)}
    for name in patched:
        setattr(torch, name, getattr(_BUILTINS, name))
    _state.depth = 1
    try:
        yield
    finally:
        _state.depth = 0
        for name, value in patched.items():
            setattr(torch, name, value)
        gmpy2.set_context(context)
        if threads != HARNESS_THREADS:
            torch.set_num_threads(threads)
        mpmath.mp.prec, mpmath.mp.pretty = prec, pretty
        if dtype != torch.float32:
            torch.set_default_dtype(dtype)
        if flushed:
            torch.set_flush_denormal(True)


F = TypeVar("F", bound=Callable)


def guarded(fn: F) -> F:
    """``fn`` run under ``harness_numerics`` (the oracle's public entry points)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with harness_numerics():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
