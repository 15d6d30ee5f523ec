"""Upstream gradients (``grad_output``) for the backward pass of a case (issue 15).

A kernel that computes its gradient in the forward pass and never scales it by
``grad_output`` is right whenever the upstream gradient is all ones, so the harness never
back-propagates only ones. Each case carries its own upstream gradients, a function of
its content hash (``Case.case_id``): every case, stored case, shrunk case and replay
gets the same ones again, and the patterns are spread evenly over a run's cases.

Patterns (values exactly representable in the case's dtype, so no rounding happens on
the way in; the mean's 1/N is rounded to the dtype first):

- ``ones``: 1 for every sample (what ``loss.backward()`` of a sum gives);
- ``mean``: 1/N for every sample (what a mean taken after the call gives);
- ``weights``: per-sample weights from {0, 1/4, 1/2, 1, 2}, zeros included;
- ``tiny``: 2**-12 (16-bit dtypes) or 2**-40;
- ``huge``: 2**8 (16-bit dtypes) or 2**20;
- ``negative``: −1 and −3, alternating.

A reduced (scalar) output is back-propagated with one scalar from {1, 1/2, −2, tiny, huge}.
"""

from __future__ import annotations

import hashlib

import torch

from strategies.cases import Case

__all__ = ["PATTERNS", "upstream_gradients", "upstream_pattern", "upstream_scalar"]

PATTERNS = ("ones", "mean", "weights", "tiny", "huge", "negative")
_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)


def _small(case: Case) -> bool:
    return case.format.precision <= 11


def _hash(case: Case, salt: bytes) -> bytes:
    return hashlib.sha256(salt + case.case_id.encode()).digest()


def upstream_pattern(case: Case) -> str:
    """The name of the case's upstream pattern (one of ``PATTERNS``)."""
    return PATTERNS[_hash(case, b"upstream")[0] % len(PATTERNS)]


def upstream_gradients(case: Case) -> torch.Tensor:
    """Per-sample upstream gradients: float64, the targets' shape, exact in the case's dtype."""
    n = case.n_samples
    pattern = upstream_pattern(case)
    tiny, huge = (2.0**-12, 2.0**8) if _small(case) else (2.0**-40, 2.0**20)
    if pattern == "ones":
        values = torch.ones(n, dtype=torch.float64)
    elif pattern == "mean":
        values = torch.full((n,), 1.0 / max(n, 1), dtype=torch.float64).to(case.dtype).double()
    elif pattern == "weights":
        picks = _hash(case, b"weights")
        values = torch.tensor([_WEIGHTS[picks[i % len(picks)] % len(_WEIGHTS)] for i in range(n)], dtype=torch.float64)
    elif pattern == "tiny":
        values = torch.full((n,), tiny, dtype=torch.float64)
    elif pattern == "huge":
        values = torch.full((n,), huge, dtype=torch.float64)
    else:
        values = torch.tensor([-1.0 if i % 2 == 0 else -3.0 for i in range(n)], dtype=torch.float64)
    return values.reshape(case.targets.shape)


def upstream_scalar(case: Case) -> float:
    """The upstream gradient of a reduced (scalar) output: never 0, so the whole gradient is graded."""
    tiny, huge = (2.0**-12, 2.0**8) if _small(case) else (2.0**-40, 2.0**20)
    choices = (1.0, 0.5, -2.0, tiny, huge)
    return choices[_hash(case, b"scalar")[0] % len(choices)]
