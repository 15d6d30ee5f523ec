"""Deliberately misbehaving implementations for fault-injection tests."""

import os
import signal
import time

import torch
import torch.nn.functional as F


def _good(logits, targets):
    return F.cross_entropy(logits, targets, reduction="none")


def raises(logits, targets):
    raise RuntimeError("kernel exploded")


def returns_list(logits, targets):
    return _good(logits, targets).tolist()


def wrong_shape(logits, targets):
    return torch.zeros(logits.shape[0], 2, dtype=logits.dtype)


def wrong_dtype(logits, targets):
    return _good(logits, targets).round().to(torch.int64)  # not a float dtype (any float dtype is graded)


def wrong_device(logits, targets):
    return torch.empty(logits.shape[0], dtype=logits.dtype, device="meta")


def hangs(logits, targets):
    time.sleep(3600)


def mutates_input(logits, targets):
    out = _good(logits, targets)
    logits.zero_()
    return out


_calls = {"n": 0}


def nondeterministic(logits, targets):
    _calls["n"] += 1
    return _good(logits, targets) + _calls["n"] * 1e-3


def slow(logits, targets):
    """Correct but slow: lets a test interrupt an audit midway."""
    time.sleep(0.02)
    return _good(logits, targets)


def dies_in_worker(logits, targets):
    """Kills the worker process that runs its cell (SIGKILL, as the out-of-memory killer) on float64 cases.

    It runs in a sandbox process; its parent is the process that runs the cell. That is a
    pool or Dask worker unless it is the process named by $HARNESS_TEST_MAIN_PID (the test's
    own, in-process run), where it is correct; without that variable it never kills. With
    $HARNESS_TEST_DIE_ONCE naming a file, only the first call to find that file missing
    kills (it creates the file), so a retried cell succeeds.
    """
    main = os.environ.get("HARNESS_TEST_MAIN_PID")
    if logits.dtype == torch.float64 and main and os.getppid() != int(main):
        marker = os.environ.get("HARNESS_TEST_DIE_ONCE")
        first = True
        if marker:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                first = False
        if first:
            os.kill(os.getppid(), signal.SIGKILL)
            time.sleep(5)  # the parent-death signal ends this sandbox too
    return _good(logits, targets)
