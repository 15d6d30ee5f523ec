"""Deliberately misbehaving implementations for fault-injection tests."""

import multiprocessing
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
    return _good(logits.double(), targets)  # float64 whatever came in


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
    """Kills its own process on float64 cases (SIGKILL, as the out-of-memory killer), in a worker process only.

    In the main process (``multiprocessing.parent_process()`` is None) it is correct. With
    $HARNESS_TEST_DIE_ONCE naming a file, only the first call to find that file missing
    dies (it creates the file), so a retried cell succeeds.
    """
    if logits.dtype == torch.float64 and multiprocessing.parent_process() is not None:
        marker = os.environ.get("HARNESS_TEST_DIE_ONCE")
        first = True
        if marker:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                first = False
        if first:
            os.kill(os.getpid(), signal.SIGKILL)
    return _good(logits, targets)
