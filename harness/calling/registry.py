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
    """One implementation under test: a cross entropy (the default op) or a softmax-family function.

    ``op``: cross_entropy is called ``fn(logits, targets, **options)``; log_softmax,
    softmax and logsumexp are called ``fn(logits)`` and reduce over the last dimension of
    (N, C) logits. Raises ValueError for an unknown op or option name.
    """

    name: str
    fn: LossFn | None = field(default=None, repr=False)  # None: loaded from ``location`` in its sandbox only
    dtypes: tuple[torch.dtype, ...] = ALL_DTYPES
    source: str = "built-in"  # "built-in", "python" (a callable), "module:function" or "file.py:function"
    description: str = ""
    # Accepts (N, C, d1, ..., dk) logits with (N, d1, ..., dk) targets, as torch's
    # cross_entropy does; only such implementations get layout-regime cases.
    k_dimensional: bool = False
    # Needs contiguous logits with no storage offset (a kernel handed data_ptr() alone);
    # such implementations get no strided-regime case, and no other non-contiguous case.
    contiguous_only: bool = False
    location: str = ""  # the spec a sandbox imports, file paths made absolute; "" for callables
    framework: str = "torch"  # what its sandbox hands it: torch, jax or numpy (detected at load)
    pickle_by_value: bool = field(default=False, repr=False)  # its module cannot be imported by name there
    # The contract it is checked against (issue 14; harness.calling.signature):
    op: str = "cross_entropy"  # or log_softmax, softmax, logsumexp: fn(logits) over the last dimension
    options: frozenset[str] = frozenset()  # option keywords it is called with (read from its signature)
    soft_targets: bool = False  # also takes float (N, C) probability targets
    output_dtype: torch.dtype | None = None  # the dtype its output must have; None: any float dtype
    var_keywords: bool = field(default=False, repr=False)  # takes **kwargs: --options may name any option

    def __post_init__(self) -> None:
        from harness.calling.signature import OPS
        from harness.oracle.options import OPTION_NAMES

        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r} for {self.name}; expected one of {', '.join(OPS)}")
        unknown = sorted(set(self.options) - set(OPTION_NAMES))
        if unknown:
            raise ValueError(
                f"unknown option {unknown[0]!r} for {self.name}; expected some of {', '.join(OPTION_NAMES)}"
            )
        if self.op != "cross_entropy" and (self.options or self.soft_targets):
            raise ValueError(f"{self.name}: options and probability targets apply to cross_entropy only, not {self.op}")
        object.__setattr__(self, "options", frozenset(self.options))

    def supports(self, dtype: torch.dtype) -> bool:
        return dtype in self.dtypes

    def supports_case(self, case: Case) -> bool:
        if not self.supports(case.dtype):
            return False
        if self.op != "cross_entropy":  # the family takes (N, C) logits, without targets
            return case.logits.ndim == 2 and (case.contiguous or not self.contiguous_only)
        contract = getattr(case, "contract", None)
        if contract is not None and contract.probs is not None and not self.soft_targets:
            return False
        return (case.logits.ndim == 2 or self.k_dimensional) and (case.contiguous or not self.contiguous_only)


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
        contiguous_only: bool = False,
        op: str = "cross_entropy",
        soft_targets: bool = False,
        output_dtype: torch.dtype | None = None,
    ):
        """Decorator form of register() for a function defined in place; its options come from its signature."""

        def wrap(fn: LossFn) -> LossFn:
            from harness.calling.signature import accepted_options

            options = accepted_options(fn) if op == "cross_entropy" else frozenset()
            self.register(Implementation(name, fn, dtypes, "built-in", description, k_dimensional, contiguous_only,
                                         op=op, options=options, soft_targets=soft_targets,
                                         output_dtype=output_dtype))  # fmt: skip
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
