"""Many rows at once, from a seed: the bulk of batches, K-dimensional cases and strided cases.

Drawing thousands of rows value by value through Hypothesis is slow and overruns its
buffer, so the bulk of a large case comes from a seeded generator that imitates each
regime's extremes, vectorized over rows, and Hypothesis plants a few rows it draws
itself (which it can shrink and target) among them. Every value is exactly
representable in the format.
"""

from __future__ import annotations

import math

import torch

from harness.formats import Format

__all__ = ["BULK_KINDS", "bulk_rows", "round_rows"]

BULK_KINDS: tuple[str, ...] = (
    "moderate", "offset", "huge", "near_overflow", "dominant", "confident_mistake", "ties", "tiny", "masked", "special",
)  # fmt: skip


def round_rows(values: torch.Tensor, fmt: Format) -> torch.Tensor:
    """float64 values rounded to the format (ties to even), kept as float64; overflow clamps to the largest finite."""
    finite = torch.isfinite(values)
    clamped = torch.where(finite, values.clamp(-fmt.max_finite, fmt.max_finite), values)
    return clamped.to(fmt.dtype).to(torch.float64)


def _uniform(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)


def _signs(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=gen).to(torch.float64) * 2 - 1


def _moderate(shape: tuple[int, ...], gen: torch.Generator, top: float = 4.0) -> torch.Tensor:
    """Magnitudes from 1/64 up to 2**top, log-uniform, either sign."""
    return _signs(shape, gen) * torch.exp2(_uniform(shape, -6, top, gen))


def _ulp(value: torch.Tensor, fmt: Format) -> torch.Tensor:
    exponent = torch.floor(torch.log2(value.abs().clamp(min=fmt.smallest_normal)))
    return torch.exp2(exponent - fmt.precision + 1)


def _kind_rows(
    kind: str, fmt: Format, n: int, c: int, gen: torch.Generator, top: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (n, c), targets (n,)) of one kind; ordinary values up to 2**top in magnitude."""
    shape = (n, c)
    targets = torch.randint(0, c, (n,), generator=gen)
    rows = torch.arange(n)
    if kind == "moderate":
        return _moderate(shape, gen, top), targets
    if kind == "offset":
        top = min(fmt.emax - 1, fmt.precision + 12)
        offset = _signs((n, 1), gen) * torch.exp2(_uniform((n, 1), min(8, top), top, gen).floor())
        steps = torch.randint(-4, 5, shape, generator=gen).to(torch.float64)
        return offset + steps * _ulp(offset, fmt), targets
    if kind == "huge":
        low = math.log2(fmt.exp_overflow)
        return _signs(shape, gen) * torch.exp2(_uniform(shape, low, fmt.emax + 0.999, gen)), targets
    if kind == "near_overflow":
        centers = torch.tensor([fmt.exp_overflow, fmt.exp_underflow], dtype=torch.float64)
        center = round_rows(centers[torch.randint(0, 2, shape, generator=gen)], fmt)
        steps = torch.randint(-8, 9, shape, generator=gen).to(torch.float64)
        near = center + steps * _ulp(center, fmt)
        return torch.where(torch.rand(shape, generator=gen) < 0.75, near, _moderate(shape, gen, top)), targets
    if kind in ("dominant", "confident_mistake"):
        values = _moderate(shape, gen, top)
        position = torch.randint(0, c, (n,), generator=gen)
        gap = torch.exp2(_uniform((n,), 3, min(fmt.emax - 5, 11), gen))
        values[rows, position] = values.max(dim=1).values + gap
        if kind == "dominant" or c == 1:
            return values, position
        other = (position + 1 + torch.randint(0, max(c - 1, 1), (n,), generator=gen)) % c
        return values, other
    if kind == "ties":
        values = _moderate(shape, gen, top)
        top = values.max(dim=1, keepdim=True).values
        tied = torch.rand(shape, generator=gen) < _uniform((n, 1), 0.1, 1.0, gen)
        tied[rows, torch.randint(0, c, (n,), generator=gen)] = True
        return torch.where(tied, top, values), targets
    if kind == "tiny":
        quantum = 2.0**fmt.quantum_exponent
        subnormal = torch.randint(0, 2 ** (fmt.precision - 1), shape, generator=gen).to(torch.float64) * quantum
        normal = fmt.smallest_normal * _uniform(shape, 1, 8, gen)
        return _signs(shape, gen) * torch.where(torch.rand(shape, generator=gen) < 0.5, subnormal, normal), targets
    if kind == "masked":
        values = _moderate(shape, gen, top)
        share = _uniform((n, 1), 0.0, 1.0, gen)
        masked = torch.rand(shape, generator=gen) < share
        leading = torch.arange(c).unsqueeze(0) < torch.randint(0, c + 1, (n, 1), generator=gen)
        masked = torch.where(torch.rand((n, 1), generator=gen) < 0.3, leading, masked)
        # the target stays finite where the row has a finite value, nine times in ten (a masked
        # target makes the loss inf, which would hide every other row of a batch's mean)
        finite_first = torch.argmin(masked.to(torch.int8), dim=1)
        move = masked[rows, targets] & ~masked[rows, finite_first] & (torch.rand(n, generator=gen) < 0.9)
        targets = torch.where(move, finite_first, targets)
        return values.masked_fill(masked, -math.inf), targets
    if kind == "special":
        values = _moderate(shape, gen, top)
        specials = torch.tensor([math.inf, math.nan, -math.inf], dtype=torch.float64)
        for _ in range(min(3, c)):
            where = torch.randint(0, c, (n,), generator=gen)
            chosen = specials[torch.randint(0, 3, (n,), generator=gen)]
            keep = torch.rand(n, generator=gen) < 0.5
            values[rows[keep], where[keep]] = chosen[keep]
        return values, targets
    raise ValueError(f"unknown bulk kind {kind!r}; expected one of {', '.join(BULK_KINDS)}")


def bulk_rows(
    fmt: Format,
    kinds: list[str] | tuple[str, ...],
    n_rows: int,
    n_classes: int,
    seed: int,
    weights: list[float] | None = None,
    top: float = 4.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (n_rows, n_classes) float64, exact in ``fmt``; targets (n_rows,) int64).

    Each row imitates one of ``kinds`` (names from ``BULK_KINDS``), chosen per row from
    ``seed`` with probabilities proportional to ``weights`` (default equal), so regimes
    mix within a batch. Ordinary values have magnitudes from 1/64 to ``2**top``.
    """
    unknown = [k for k in kinds if k not in BULK_KINDS]
    if unknown or not kinds:
        raise ValueError(f"bulk kinds must come from {', '.join(BULK_KINDS)}, got {list(kinds)}")
    weights = [1.0] * len(kinds) if weights is None else weights
    if len(weights) != len(kinds) or min(weights) < 0 or not sum(weights) > 0:
        raise ValueError(f"need one non-negative weight per kind, not all 0, got {weights}")
    gen = torch.Generator().manual_seed(seed)
    which = torch.multinomial(torch.tensor(weights, dtype=torch.float64), n_rows, replacement=True, generator=gen)
    values = torch.empty(n_rows, n_classes, dtype=torch.float64)
    targets = torch.empty(n_rows, dtype=torch.int64)
    for index, kind in enumerate(kinds):
        rows = torch.nonzero(which == index).flatten()
        if len(rows):
            values[rows], targets[rows] = _kind_rows(kind, fmt, len(rows), n_classes, gen, top)
    return round_rows(values, fmt), targets
