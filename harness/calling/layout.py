"""Tensor layouts kept exactly: size, strides and storage offset, as an implementation receives them.

Kernels take whatever strides they are handed, so a transposed, sliced or expanded input
must reach the implementation as it was drawn, not as a contiguous copy.
"""

from __future__ import annotations

import torch

__all__ = ["copy_like", "describe_layout", "storage_extent", "storage_positions"]


def storage_extent(t: torch.Tensor) -> int:
    """Elements of storage the view reaches: offset + 1 + sum((size - 1) * stride), 0 when empty."""
    if t.numel() == 0:
        return 0
    return t.storage_offset() + 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))


def storage_positions(t: torch.Tensor) -> torch.Tensor:
    """The storage position of each element of the view, in row-major order of the view (int64)."""
    index = torch.full((), t.storage_offset(), dtype=torch.int64)
    for n, s in zip(t.shape, t.stride()):
        index = (index.unsqueeze(-1) + torch.arange(n) * s).reshape(*index.shape, n)
    return index.reshape(-1)


def copy_like(t: torch.Tensor) -> torch.Tensor:
    """A fresh tensor with ``t``'s dtype, device, size, strides and storage offset, and its values.

    Unlike ``clone()``, which makes expanded views and storage offsets contiguous, the
    copy is laid out exactly like the original; storage the view does not reach is zero.
    Elements that share a storage position (stride 0) share it in the copy too.
    """
    if t.is_contiguous() and t.storage_offset() == 0:
        return t.clone()
    base = torch.zeros(storage_extent(t), dtype=t.dtype, device=t.device)
    if t.numel():
        # elements sharing a position hold the same value, so writing each is consistent
        base[storage_positions(t).to(t.device)] = t.reshape(-1)
    return base.as_strided(t.shape, t.stride(), t.storage_offset())


def describe_layout(t: torch.Tensor) -> str:
    """A short description for records and counterexamples, e.g. 'strides (1, 4), offset 3'."""
    if t.is_contiguous() and t.storage_offset() == 0:
        return "contiguous"
    return f"strides {tuple(t.stride())}, offset {t.storage_offset()}"
