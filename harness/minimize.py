"""Structural shrinking: the smallest case, built from a failing one, on which it still fails.

Hypothesis shrinks the choices it drew; a vocabulary-size row is mostly a seeded
background it cannot shrink, and an audit keeps its cases without their choices. This
works on the tensors themselves, greedily, keeping every step that still fails the same
way (a maintainer's reduction of a bug report):

1. options: a strided or permuted layout becomes contiguous, a K-dimensional case becomes
   (M, C) rows;
2. rows: every row a copy of one (a batch one row describes), the failing sample's row
   alone, then blocks of rows deleted (halves, quarters, ...);
3. classes: aligned tiles of classes deleted, largest first (half the row, then 2**k
   classes), so what is left keeps its tile structure; never a column some row targets;
4. magnitudes: every value outside a few that matter (each row's maximum and target,
   non-finite values) replaced by one fill value, then each remaining value replaced by
   a simpler one (0, the fill, a power of two, an integer, fewer significand bits).

Only the failing implementation runs, through the caller's usual checks. ``seconds``
bounds the whole pass; what was reached by then is returned.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness import interrupts
from strategies import Case

__all__ = ["Minimized", "minimize"]

Fails = Callable[[Case], dict | None]  # the failing record on this case, or None
VALUE_PASS_LIMIT = 64  # positions whose values are simplified one by one
BLOCK_DIVISIONS = 64  # the smallest block deleted is about 1/64 of the extent


@dataclass(frozen=True)
class Minimized:
    case: Case
    record: dict
    attempts: int
    reduced: bool  # some step succeeded
    complete: bool  # every pass ran to its end (no smaller case found by any of them)


class _Deadline(Exception):
    pass


class _Search:
    def __init__(self, case: Case, record: dict, fails: Fails, seconds: float) -> None:
        self.case, self.record, self.fails = case, record, fails
        self.deadline = time.perf_counter() + seconds
        self.attempts = 0
        self.reduced = False
        self.tried: set[str] = {case.case_id}

    def attempt(self, logits: torch.Tensor, targets: torch.Tensor, *, keep_options: bool = True) -> bool:
        """Keep (logits, targets) when the implementation still fails the same way on them.

        The case's drawn options (strategies.contract) go with candidates of the same shape;
        a candidate of another shape, or ``keep_options=False``, is called without them.
        """
        if interrupts.requested():  # a stop request (harness.interrupts): shrink_failures reports it
            raise KeyboardInterrupt
        if time.perf_counter() > self.deadline:
            raise _Deadline
        contract = self.case.contract
        same_shape = logits.shape == self.case.logits.shape and targets.shape == self.case.targets.shape
        candidate = Case(logits, targets, self.case.regime, contract if keep_options and same_shape else None)
        if candidate.case_id in self.tried:
            return False
        self.tried.add(candidate.case_id)
        self.attempts += 1
        record = self.fails(candidate)
        if record is None:
            return False
        self.case, self.record, self.reduced = candidate, record, True
        return True


def _without_options(search: _Search) -> None:
    """Options first: a failure that needs none of the drawn options is shown without them."""
    if search.case.contract is not None:
        search.attempt(search.case.logits, search.case.targets, keep_options=False)


def _contiguous(search: _Search) -> None:
    case = search.case
    if case.logits.ndim > 2 and search.attempt(case.row_logits.contiguous(), case.row_targets.clone()):
        return
    if not search.case.contiguous:
        search.attempt(search.case.logits.contiguous(), search.case.targets)


def _delete_blocks(search: _Search, dim: int, protected: Callable[[int, int], bool]) -> None:
    """Delete aligned blocks along ``dim``: half the extent, then 2**k, down to single entries.

    Blocks stay at least 1/BLOCK_DIVISIONS of the extent, so a long row costs a bounded
    number of tries per block size (whole tiles, not single classes, of a 100k-class row).
    """
    extent = search.case.logits.shape[dim]
    size = 1 << max(0, (extent - 1).bit_length() - 1)
    smallest = 1 << max(0, (extent // BLOCK_DIVISIONS).bit_length() - 1)
    while size >= smallest:
        start = ((search.case.logits.shape[dim] - 1) // size) * size
        while start >= 0:
            extent = search.case.logits.shape[dim]
            stop = min(start + size, extent)
            if start < extent and extent - (stop - start) >= 1 and not protected(start, stop):
                _remove(search, dim, start, stop)
            start -= size
        size //= 2


def _remove(search: _Search, dim: int, start: int, stop: int) -> bool:
    case = search.case
    keep = torch.cat([torch.arange(start), torch.arange(stop, case.logits.shape[dim])])
    logits = case.logits.contiguous().index_select(dim, keep)
    if dim == 1:  # classes: targets past the block move down
        targets = torch.where(case.targets >= stop, case.targets - (stop - start), case.targets)
    else:
        targets = case.targets.index_select(dim if dim == 0 else dim - 1, keep)
    return search.attempt(logits, targets)


def _rows(search: _Search) -> None:
    case = search.case
    sample = max(int(search.record.get("sample", 0)), 0) if search.record.get("reduction") != "mean" else 0
    if case.logits.ndim == 2 and case.logits.shape[0] > 1 and sample < case.logits.shape[0]:
        search.attempt(case.logits[sample : sample + 1].contiguous(), case.targets[sample : sample + 1].clone())
    _delete_blocks(search, 0, lambda start, stop: False)
    for dim in range(2, search.case.logits.ndim):  # the positions of a K-dimensional case
        _delete_blocks(search, dim, lambda start, stop: False)


def _same_rows(search: _Search) -> None:
    """Every row (with its target) a copy of the failing sample's: a batch described by one row."""
    case = search.case
    if case.logits.ndim != 2 or case.logits.shape[0] < 2:
        return
    n = case.logits.shape[0]
    sample = max(int(search.record.get("sample", 0)), 0) if search.record.get("reduction") != "mean" else 0
    for row in dict.fromkeys([min(sample, n - 1), 0]):
        logits = case.logits[row : row + 1].expand(n, -1).contiguous()
        if search.attempt(logits, case.targets[row : row + 1].expand(n).clone()):
            return


def _classes(search: _Search) -> None:
    def protected(start: int, stop: int) -> bool:
        targets = search.case.targets
        return bool(((targets >= start) & (targets < stop)).any())

    _delete_blocks(search, 1, protected)


def _important(rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(M, C) mask of values that decide the loss: each row's maximum, its target, non-finite values."""
    mask = ~torch.isfinite(rows)
    index = torch.arange(rows.shape[0])
    finite = torch.where(torch.isfinite(rows), rows, torch.tensor(-math.inf, dtype=rows.dtype))
    mask[index, finite.argmax(dim=1)] = True
    mask[index, targets] = True
    return mask


def _from_rows(case: Case, rows: torch.Tensor) -> torch.Tensor:
    if case.logits.ndim == 2:
        return rows
    moved = case.logits.movedim(1, -1).shape
    return rows.reshape(moved).movedim(-1, 1).contiguous()


def _simpler(value: float, fill: float, fmt) -> list[float]:
    """Simpler values to try in place of ``value``, simplest first, each exact in the format."""
    if not math.isfinite(value):
        return [fill, 0.0]
    out = [0.0, fill, math.copysign(1.0, value)]
    if value:
        magnitude = math.log2(abs(value))
        # ldexp, not 2.0 ** k: the power above a float64 near its maximum overflows (an error, not inf)
        powers = (math.floor(magnitude), math.ceil(magnitude))
        out += [math.copysign(math.ldexp(1.0, k), value) for k in powers if k <= 1023]
        out.append(float(round(value)))
        mantissa, exponent = math.frexp(value)
        for bits in (1, 2, 4, 8, 16):
            if bits < fmt.precision:
                with contextlib.suppress(OverflowError):  # a mantissa rounded up past the largest float64
                    out.append(math.ldexp(round(mantissa * 2**bits) / 2**bits, exponent))
    exact = torch.tensor(out, dtype=torch.float64).to(fmt.dtype).to(torch.float64).tolist()
    return [v for v in dict.fromkeys(exact) if v != value and math.isfinite(v)]


def _identical_rows(case: Case) -> bool:
    """A 2-D case of several rows that are all one row (and one target)."""
    if case.logits.ndim != 2 or case.logits.shape[0] < 2:
        return False
    bits = case.logits.contiguous().view(case.format.int_dtype)
    return bool((bits == bits[:1]).all() and (case.targets == case.targets[:1]).all())


def _values(search: _Search) -> None:
    # copies of one row stay copies: their values change together
    shared = _identical_rows(search.case)

    def rows_of(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
        rows, targets = case.row_logits.contiguous(), case.row_targets
        return (rows[:1], targets[:1]) if shared else (rows, targets)

    def attempt(case: Case, rows: torch.Tensor) -> bool:
        full = rows.expand(case.n_samples, -1).contiguous() if shared else rows
        return search.attempt(_from_rows(case, full), case.targets.clone())

    case = search.case
    rows, targets = rows_of(case)
    keep = _important(rows, targets)
    finite = rows[torch.isfinite(rows)]
    if finite.numel():
        values, counts = torch.unique(finite, return_counts=True)
        for fill in dict.fromkeys([float(values[counts.argmax()]), 0.0]):
            filled = torch.where(keep, rows, torch.tensor(fill, dtype=rows.dtype))
            if not torch.equal(filled, rows) and attempt(case, filled):
                break
    case = search.case
    rows, targets = rows_of(case)
    finite = rows[torch.isfinite(rows)]
    fill = 0.0
    if finite.numel():
        values, counts = torch.unique(finite, return_counts=True)
        fill = float(values[counts.argmax()])
    # -inf is as simple as a value gets; every other value unlike the fill may be simplified
    positions = torch.nonzero((rows != fill) & ~torch.isneginf(rows)).tolist()
    if len(positions) > VALUE_PASS_LIMIT:
        important = _important(rows, targets) & ~torch.isneginf(rows)
        positions = torch.nonzero(important).tolist()[:VALUE_PASS_LIMIT]
    for r, c in positions:
        current = search.case
        rows = rows_of(current)[0]
        for simpler in _simpler(float(rows[r, c]), fill, current.format):
            changed = rows.clone()
            changed[r, c] = simpler
            if attempt(current, changed):
                break
    # the fill itself, everywhere at once
    current = search.case
    rows = rows_of(current)[0]
    for simpler in _simpler(fill, fill, current.format):
        if attempt(current, torch.where(rows == fill, torch.tensor(simpler, dtype=rows.dtype), rows)):
            break


def minimize(case: Case, record: dict, fails: Fails, *, seconds: float) -> Minimized:
    """The smallest case found within ``seconds`` on which ``fails`` still returns a record.

    ``record`` is the failing record of ``case``; ``fails(candidate)`` runs the failing
    implementation and returns its record when it fails the same way, else None.
    Rounds of the four passes repeat until one changes nothing or time runs out.
    """
    search = _Search(case, record, fails, seconds)
    complete = False
    try:
        while True:
            before = search.case.case_id
            for step in (_without_options, _contiguous, _same_rows, _rows, _classes, _values):
                step(search)
            if search.case.case_id == before:
                complete = True
                break
    except _Deadline:
        pass
    return Minimized(search.case, search.record, search.attempts, search.reduced, complete)
