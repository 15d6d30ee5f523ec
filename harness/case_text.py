"""Cases as text: the values of a small case, the positions that matter in a large one.

A 100,000-class row is summarised by what decides its loss: the maximum and where it
is, the target, the most common value and how often it occurs, runs of -inf (with the
tile sizes they align to), and the positions of NaN and +inf.
"""

from __future__ import annotations

import torch

from strategies import Case

__all__ = ["SMALL_CASE", "case_lines", "row_summary"]

SMALL_CASE = 64  # cases with at most this many logits are printed in full
_LISTED = 6  # positions listed before "..."


def _positions(index: torch.Tensor) -> str:
    shown = ", ".join(str(int(i)) for i in index[:_LISTED])
    return f"[{shown}{', ...' if len(index) > _LISTED else ''}]"


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """[start, stop) of each run of True."""
    if not bool(mask.any()):
        return []
    edges = torch.diff(torch.cat([torch.tensor([0]), mask.to(torch.int8), torch.tensor([0])]))
    starts, stops = torch.nonzero(edges == 1).flatten(), torch.nonzero(edges == -1).flatten()
    return list(zip(starts.tolist(), stops.tolist()))


def _aligned(start: int, stop: int, n: int) -> str:
    """The largest power-of-two tile (128 to 8,192) whose boundaries the run starts and ends on."""
    for tile in (8192, 4096, 2048, 1024, 512, 256, 128):
        if start % tile == 0 and (stop % tile == 0 or stop == n):
            return f", {tile}-aligned"
    return ""


def row_summary(row: torch.Tensor, target: int) -> str:
    """One line: the positions that decide a row's loss (see the module docstring)."""
    x = row.to(torch.float64)
    n = x.numel()
    finite = torch.isfinite(x)
    parts = [f"{n:,} classes"]
    if bool(finite.any()):
        top = x[finite].max().item()
        at = torch.nonzero(x == top).flatten()
        parts.append(f"max {top!r} at {_positions(at)}" + (f" ({len(at)} tied)" if len(at) > 1 else ""))
        values, counts = torch.unique(x[finite], return_counts=True)
        common = int(counts.argmax())
        if int(counts[common]) > 1:
            parts.append(f"{values[common].item()!r} at {int(counts[common]):,} positions")
        parts.append(f"{len(values):,} distinct finite values from {x[finite].min().item()!r}")
    else:
        parts.append("no finite value")
    parts.append(f"target {target} = {x[target].item()!r}")
    runs = _runs(torch.isneginf(x))
    if runs:
        shown = ", ".join(f"[{a}:{b}){_aligned(a, b, n)}" for a, b in runs[:4])
        count = f"{len(runs)} run{'s' * (len(runs) != 1)}"
        parts.append(f"-inf at {sum(b - a for a, b in runs):,} positions in {count} {shown}"
                     + (", ..." if len(runs) > 4 else ""))  # fmt: skip
    for name, mask in (("nan", torch.isnan(x)), ("+inf", torch.isposinf(x))):
        if bool(mask.any()):
            parts.append(f"{name} at {_positions(torch.nonzero(mask).flatten())}")
    return "; ".join(parts)


def _value_list(t: torch.Tensor) -> str:
    if t.ndim == 1:
        return "[" + ", ".join(repr(v) for v in t.to(torch.float64).tolist()) + "]"
    return "[" + ", ".join(_value_list(r) for r in t) + "]"


def case_lines(case: Case, sample: int = 0, *, rows: int = 3) -> list[str]:
    """Lines describing the logits: every value of a small case, else a summary of the rows that
    matter (``sample``'s first, up to ``rows`` in all) and how many rows there are."""
    lines = []
    if case.logits.numel() <= SMALL_CASE:
        lines.append(f"logits  = {_value_list(case.logits)}")
    else:
        size = f"{case.n_samples:,} sample{'s' * (case.n_samples != 1)} of {case.n_classes:,} classes"
        lines.append(f"logits  = shape {tuple(case.logits.shape)}, {size}")
        order = [sample] + [i for i in range(case.n_samples) if i != sample]
        for i in order[:rows]:
            lines.append(f"  sample {i}: {row_summary(case.row_logits[i], int(case.row_targets[i]))}")
        if case.n_samples > rows:
            lines.append(f"  ... and {case.n_samples - rows:,} more samples")
    if not case.contiguous:
        lines.append(f"layout  = {case.layout} (storage offset and strides as the implementation received them)")
    return lines
