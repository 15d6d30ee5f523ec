"""Non-contiguous (N, C) logits: the strides kernels are handed in real programs.

- ``transposed``: a column-major (C, N) buffer seen as (N, C), strides (1, N);
- ``strided``: every 2nd or 3rd class of a wider buffer, strides (step * C, step);
- ``offset``: a slice of a padded buffer (rows padded to a multiple of 64, or by a few
  classes) starting a row or a few classes in, so the storage offset is not 0;
- ``expanded``: one row expanded to N rows, strides (0, 1): every row shares storage.

The values are the same whatever the layout (``expanded`` repeats the first row); only
what an implementation reads from memory changes. Storage a view does not reach is 0,
as ``harness.calling.layout.copy_like`` lays it out, so a case rebuilt from its stored
bits is the same case.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from harness.calling.layout import copy_like

__all__ = ["LAYOUT_KINDS", "apply_layout", "layouts"]

LAYOUT_KINDS = ("transposed", "strided", "offset", "expanded")


def apply_layout(values: torch.Tensor, kind: str, *, step: int = 2, pad: int = 0, row: int = 0,
                 column: int = 1) -> torch.Tensor:  # fmt: skip
    """(N, C) contiguous ``values`` in the layout ``kind`` (see the module docstring).

    ``step``: the class stride of ``strided``; ``pad``, ``row``, ``column``: the row
    padding and the first row and class of ``offset``'s slice. Raises ValueError for an
    unknown kind or a layout that would not be what its name says.
    """
    if values.ndim != 2:
        raise ValueError(f"layouts apply to (N, C) logits, got shape {tuple(values.shape)}")
    n, c = values.shape
    if kind == "transposed":
        view = values.t().contiguous().t()
    elif kind == "strided":
        if step < 2:
            raise ValueError(f"strided needs step >= 2, got {step}")
        buffer = torch.zeros(n, c * step, dtype=values.dtype)
        buffer[:, ::step] = values
        view = buffer[:, ::step]
    elif kind == "offset":
        if min(pad, row, column) < 0 or row + column == 0:
            raise ValueError("offset needs pad, row, column >= 0 and a first row or class past 0")
        buffer = torch.zeros(row + n, column + c + pad, dtype=values.dtype)
        buffer[row:, column : column + c] = values
        view = buffer[row:, column : column + c]
    elif kind == "expanded":
        view = values[:1].expand(n, c)
    else:
        raise ValueError(f"unknown layout {kind!r}; expected one of {', '.join(LAYOUT_KINDS)}")
    return copy_like(view)


@st.composite
def _layout(draw, values: torch.Tensor) -> torch.Tensor:
    c = values.shape[1]
    kind = draw(st.sampled_from(LAYOUT_KINDS))
    if kind == "strided":
        return apply_layout(values, kind, step=draw(st.integers(2, 3)))
    if kind == "offset":
        pad = draw(st.one_of(st.just((-c) % 64), st.integers(0, 8)))  # to a multiple of 64, or a few
        row, column = draw(st.integers(0, 2)), draw(st.integers(0, 3))
        return apply_layout(values, kind, pad=pad, row=row, column=column if row or column else 1)
    return apply_layout(values, kind)


def layouts(values: torch.Tensor) -> st.SearchStrategy[torch.Tensor]:
    """``values`` ((N, C), contiguous) laid out by a drawn non-contiguous layout."""
    return _layout(values)
