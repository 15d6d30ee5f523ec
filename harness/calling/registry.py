"""Declarative registry of cross-entropy implementations (in the spirit of PyTorch's OpInfo).

Each implementation is declared once: a name, a callable ``fn(logits, targets)``, the
dtypes it supports and where it came from. The CLI, the runner, reports and tests all
read this registry instead of naming implementations themselves.

Implementations are called only in sandbox processes (harness.calling.caller): a
built-in or a Python callable is sent there pickled; a ``module:function`` or
``file.py:function`` spec is imported there alone (``fn`` is None in the harness).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from harness.formats import FORMATS

if TYPE_CHECKING:
    from strategies import Case

__all__ = ["ALL_DTYPES", "REGISTRY", "Implementation", "Registry", "check_name", "safe_label"]

ALL_DTYPES: tuple[torch.dtype, ...] = tuple(f.dtype for f in FORMATS.values())

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# Names appear in Markdown, HTML and matplotlib labels (where $ starts TeX): letters,
# digits and a few punctuation marks only.
_NAME = re.compile(r"[\w .:/+\-()\[\],=@~]+")


def check_name(name: str) -> str:
    """``name`` if it is safe to show in reports; ValueError (one line) naming the bad character."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"an implementation name must be a non-empty string, got {name!r}")
    if not _NAME.fullmatch(name):
        bad = next(c for c in name if not _NAME.fullmatch(c))
        raise ValueError(
            f"implementation name {name!r} contains {bad!r}: names appear in Markdown, HTML and plot labels; "
            "use letters, digits, spaces and . : / + - ( ) [ ] , = @ ~"
        )
    return name


def safe_label(text: str) -> str:
    """A default name made safe (e.g. a lambda's '<lambda>' becomes 'lambda')."""
    cleaned = "".join(c if _NAME.fullmatch(c) else "" for c in text).strip()
    return cleaned or "implementation"


@dataclass(frozen=True)
class Implementation:
    """One cross-entropy implementation under test."""

    name: str
    fn: LossFn | None = field(default=None, repr=False)  # None: loaded from ``location`` in its sandbox only
    dtypes: tuple[torch.dtype, ...] = ALL_DTYPES
    source: str = "built-in"  # "built-in", "python" (a callable), "module:function" or "file.py:function"
    description: str = ""
    # Accepts (N, C, d1, ..., dk) logits with (N, d1, ..., dk) targets, as torch's
    # cross_entropy does; only such implementations get layout-regime cases.
    k_dimensional: bool = False
    location: str = ""  # the spec a sandbox imports, file paths made absolute; "" for callables
    framework: str = "torch"  # what its sandbox hands it: torch, jax or numpy (detected at load)
    pickle_by_value: bool = field(default=False, repr=False)  # its module cannot be imported by name there

    def supports(self, dtype: torch.dtype) -> bool:
        return dtype in self.dtypes

    def supports_case(self, case: Case) -> bool:
        return self.supports(case.dtype) and (case.logits.ndim == 2 or self.k_dimensional)


class Registry:
    """Name → Implementation, in declaration order."""

    def __init__(self) -> None:
        self._items: dict[str, Implementation] = {}

    def register(self, impl: Implementation) -> Implementation:
        check_name(impl.name)
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
    ):
        """Decorator form of register() for a function defined in place."""

        def wrap(fn: LossFn) -> LossFn:
            self.register(Implementation(name, fn, dtypes, "built-in", description, k_dimensional))
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
