"""Declarative registry of cross-entropy implementations (in the spirit of PyTorch's OpInfo).

Each implementation is declared once: a name, a callable ``fn(logits, targets)``, the
dtypes it supports and where it came from. The CLI, the runner, reports and tests all
read this registry instead of naming implementations themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from harness.formats import FORMATS

if TYPE_CHECKING:
    from strategies import Case

__all__ = ["ALL_DTYPES", "REGISTRY", "Implementation", "Registry"]

ALL_DTYPES: tuple[torch.dtype, ...] = tuple(f.dtype for f in FORMATS.values())

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Implementation:
    """One cross-entropy implementation under test."""

    name: str
    fn: LossFn = field(repr=False)
    dtypes: tuple[torch.dtype, ...] = ALL_DTYPES
    source: str = "built-in"  # "built-in", "module:function" or "file.py:function"
    description: str = ""
    # Accepts (N, C, d1, ..., dk) logits with (N, d1, ..., dk) targets, as torch's
    # cross_entropy does; only such implementations get layout-regime cases.
    k_dimensional: bool = False
    # Needs contiguous logits with no storage offset (a kernel handed data_ptr() alone);
    # such implementations get no strided-regime case, and no other non-contiguous case.
    contiguous_only: bool = False

    def supports(self, dtype: torch.dtype) -> bool:
        return dtype in self.dtypes

    def supports_case(self, case: Case) -> bool:
        return (
            self.supports(case.dtype)
            and (case.logits.ndim == 2 or self.k_dimensional)
            and (case.contiguous or not self.contiguous_only)
        )


class Registry:
    """Name → Implementation, in declaration order."""

    def __init__(self) -> None:
        self._items: dict[str, Implementation] = {}

    def register(self, impl: Implementation) -> Implementation:
        if impl.name in self._items:
            raise ValueError(f"implementation {impl.name!r} is already registered")
        self._items[impl.name] = impl
        return impl

    def declare(
        self,
        name: str,
        *,
        dtypes: tuple[torch.dtype, ...] = ALL_DTYPES,
        description: str = "",
        k_dimensional: bool = False,
        contiguous_only: bool = False,
    ):
        """Decorator form of register() for a function defined in place."""

        def wrap(fn: LossFn) -> LossFn:
            self.register(Implementation(name, fn, dtypes, "built-in", description, k_dimensional, contiguous_only))
            return fn

        return wrap

    def get(self, name: str) -> Implementation:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown implementation {name!r}; built-in: {', '.join(self._items)}") from None

    def names(self) -> list[str]:
        return list(self._items)

    def __iter__(self) -> Iterator[Implementation]:
        return iter(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)


REGISTRY = Registry()
