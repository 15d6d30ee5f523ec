"""Hostile and unusual implementations: what each does to the process it runs in, or to the harness.

Every one of these broke the old thread-based caller (issue 12). Each is correct where it
returns a loss (F.cross_entropy), so any failure recorded is the behaviour itself.
Behaviours at import live in tests/implementations/at_import/.
"""

import ctypes
import os
import sys
import time

import torch
import torch.nn.functional as F


def _good(logits, targets):
    return F.cross_entropy(logits, targets, reduction="none")


# -- what the old caller mis-graded with exit 0 --------------------------------------------

_buffers: dict = {}
_calls = {"n": 0}


def reuses_output_buffer(logits, targets):
    """Writes into one buffer it returns every time; every first answer is loss + 1."""
    loss = _good(logits, targets)
    buffer = _buffers.setdefault((tuple(loss.shape), loss.dtype), torch.empty_like(loss))
    _calls["n"] += 1
    buffer.copy_(loss + 1 if _calls["n"] % 2 else loss)
    return buffer


def flushes_denormals_at_call(logits, targets):
    """Turns on flush-to-zero (a common speed setting) in the process it runs in."""
    torch.set_flush_denormal(True)
    return _good(logits, targets)


_real_exp = torch.exp


def patches_exp_for_large_tensors(logits, targets):
    """Replaces torch.exp with one that is wrong on large tensors, then returns the right loss."""

    def exp(x, *args, **kwargs):
        out = _real_exp(x, *args, **kwargs)
        return out * 2 if x.numel() > 4096 else out

    torch.exp = exp
    return _good(logits, targets)


def changes_default_dtype(logits, targets):
    torch.set_default_dtype(torch.float64)
    return _good(logits, targets)


def holds_the_gil(logits, targets):
    """A C loop that never releases the GIL: a thread cannot be stopped, a process can."""
    return sum(range(10**13))


def changes_directory(logits, targets):
    """os.chdir in the implementation: the report must still go where it was asked to."""
    os.chdir("/")
    return _good(logits, targets)


# -- what killed the old caller's whole run -------------------------------------------------


def hard_exit_zero(logits, targets):
    os._exit(0)


def exits_at_call(logits, targets):
    sys.exit(3)


def crashes_once(logits, targets, *, mark: str):
    """Hard-exits on its first call ever (no file at ``mark`` yet), then answers right: Hypothesis's
    replay of the failing case passes, which it reports as Flaky. Bind ``mark`` with functools.partial."""
    if not os.path.exists(mark):
        open(mark, "w").close()
        os._exit(7)
    return _good(logits, targets)


def segfaults(logits, targets):
    return ctypes.string_at(0)


def recurses_forever(logits, targets):
    """Deep recursion through C (map) with the limit lifted: the C stack overflows, a crash, not RecursionError."""
    sys.setrecursionlimit(10**8)

    def down(n):
        return list(map(down, [n + 1]))

    return down(0)


def runs_away_with_memory(logits, targets):
    """Keeps allocating (64 MiB a step, touched) up to 3 GiB; a memory limit should stop it first."""
    held = []
    for _ in range(48):
        held.append(torch.ones(16 * 1024 * 1024))
        time.sleep(0.02)
    return _good(logits, targets)


# -- odd but legal outputs that crashed whole cells -------------------------------------------


def returns_sparse(logits, targets):
    return _good(logits, targets).to_sparse()


def returns_negative_view(logits, targets):
    """torch._neg_view of -loss: the values are the loss, in a tensor with the negative bit set."""
    return torch._neg_view(-_good(logits, targets))


class Tagged(torch.Tensor):
    """A harmless tensor subclass."""


def returns_subclass(logits, targets):
    return _good(logits, targets).as_subclass(Tagged)


class Refusing(torch.Tensor):
    """A subclass whose __torch_function__ raises on everything, even reading its dtype."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError("no torch functions on this tensor")


def returns_refusing_subclass(logits, targets):
    return _good(logits, targets).as_subclass(Refusing)


def returns_complex(logits, targets):
    return _good(logits, targets).to(torch.complex64)


def returns_conj(logits, targets):
    return _good(logits, targets).to(torch.complex64).conj()


def returns_integers(logits, targets):
    return _good(logits, targets).to(torch.int32)


def returns_meta(logits, targets):
    return torch.empty(logits.shape[0], dtype=logits.dtype, device="meta")


def returns_a_float(logits, targets):
    return float(_good(logits, targets).mean())


class Unprintable(Exception):
    def __str__(self):
        raise ValueError("no message for you")


def raises_unprintable(logits, targets):
    raise Unprintable()


def mutates_targets(logits, targets):
    out = _good(logits, targets)
    targets.fill_(-1)
    return out


def mutates_logits(logits, targets):
    out = _good(logits, targets)
    logits.add_(1)
    return out
