"""What an implementation accepts, read from its signature: the contract it is checked against.

A cross-entropy implementation whose parameters include ``weight``, ``ignore_index``,
``reduction``, ``label_smoothing``, ``z_loss`` or ``softcap`` is called by keyword with drawn
values of each (harness.oracle.options gives their exact semantics). One with only
``(logits, targets)`` is checked as plain per-sample cross entropy (or its mean, read
from the output's shape). A function that takes ``**kwargs`` accepts whatever
``--options`` names; its signature alone promises nothing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

from harness.oracle.options import OPTION_NAMES

__all__ = ["OPS", "accepted_options", "resolve_options", "takes_var_keywords"]

OPS = ("cross_entropy", "log_softmax", "softmax", "logsumexp")


def _parameters(fn: Callable) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        return {}


def accepted_options(fn: Callable) -> frozenset[str]:
    """The option keywords fn's signature names (harness.oracle.options.OPTION_NAMES)."""
    params = _parameters(fn)
    return frozenset(
        name for name in OPTION_NAMES
        if name in params and params[name].kind in (inspect.Parameter.KEYWORD_ONLY,
                                                     inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )  # fmt: skip


def takes_var_keywords(fn: Callable) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in _parameters(fn).values())


def resolve_options(accepted: Iterable[str], requested: str | Iterable[str] | None, *, var_keywords: bool) -> frozenset:
    """The options to exercise: ``requested`` narrows (or, for **kwargs functions, widens) ``accepted``.

    ``requested``: None (what the signature accepts), "none", "all", a comma-separated
    string or an iterable of names. Raises ValueError (one line) for unknown names or for
    options the implementation's signature does not take.
    """
    accepted = frozenset(accepted)
    if requested is None:
        return accepted
    if isinstance(requested, str):
        if requested.strip() == "none":
            return frozenset()
        names = [n.strip() for n in requested.split(",") if n.strip()]
        if names == ["all"]:
            return accepted if not var_keywords else frozenset(OPTION_NAMES)
    else:
        names = list(requested)
    unknown = [n for n in names if n not in OPTION_NAMES]
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}; expected some of {', '.join(OPTION_NAMES)} (or none, all)")
    missing = [n for n in names if n not in accepted]
    if missing and not var_keywords:
        raise ValueError(f"the implementation's signature does not take {missing[0]!r}; it takes "
                         f"{', '.join(sorted(accepted)) or 'no option'}")  # fmt: skip
    return frozenset(names)
