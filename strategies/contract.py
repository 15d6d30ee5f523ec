"""The options of a cross-entropy call, drawn onto a case (issue 14).

A ``Contract`` is what one case adds to its logits and targets: the drawn values of the
options it exercises (harness.oracle.options gives their exact semantics), which samples
are ignored, and probability targets. Every implementation of a run gets the same
contract, restricted to the options its signature takes (``Contract.restricted``): an
implementation without ``ignore_index`` gets the ignored samples' real targets, one
without ``reduction`` returns what it returns, and so on. Probability targets are given
only to implementations that declare they take them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from harness.oracle.options import OPTION_NAMES, LossOptions
from strategies.options import loss_options, probability_rows

__all__ = ["SOFT_TARGET_MAX_ELEMENTS", "Contract", "with_contract"]

# Probability targets are drawn value by value; beyond this many (rows × classes) a case keeps class indices.
SOFT_TARGET_MAX_ELEMENTS = 4_096


@dataclass(frozen=True, eq=False)
class Contract:
    """Drawn options of one case.

    ``names``: the option keywords drawn (the others keep torch's defaults).
    ``options``: their values. ``ignored``: flat sample indices (row-major order of the
    targets) whose target is ``options.ignore_index`` for implementations that take it.
    ``probs``: (N, C) probability targets in the logits' dtype, or None.
    """

    names: frozenset[str]
    options: LossOptions
    ignored: tuple[int, ...] = ()
    probs: torch.Tensor | None = field(default=None, repr=False)

    def restricted(self, accepted: Iterable[str]) -> Contract:
        """The contract an implementation that takes only ``accepted`` option keywords is called with."""
        names = self.names & frozenset(accepted)
        defaults = LossOptions()
        values = {name: getattr(self.options, name) if name in names else getattr(defaults, name)
                  for name in OPTION_NAMES}  # fmt: skip
        return Contract(names, LossOptions(**values), self.ignored if "ignore_index" in names else (), self.probs)

    def targets_for(self, targets: torch.Tensor) -> torch.Tensor:
        """The targets handed over: ``targets`` with the ignored samples set to ignore_index."""
        if not self.ignored:
            return targets
        out = targets.clone().reshape(-1)
        out[list(self.ignored)] = self.options.ignore_index
        return out.reshape(targets.shape)

    def kwargs(self, dtype: torch.dtype) -> dict[str, object]:
        """Keyword arguments of the call: each drawn option by its name (weight as a tensor of ``dtype``)."""
        out: dict[str, object] = {}
        for name in sorted(self.names):
            value = getattr(self.options, name)
            if name == "weight":
                value = None if value is None else torch.tensor(value, dtype=dtype)
            out[name] = value
        return out

    def digest(self) -> bytes:
        """Bytes that identify the contract in a case id."""
        h = hashlib.sha256(repr((sorted(self.names), self.options, self.ignored)).encode())
        if self.probs is not None:
            h.update(self.probs.contiguous().view(torch.uint8).numpy().tobytes())
        return h.digest()

    def to_json(self) -> dict:
        """JSON-safe and exact (floats as hex, probabilities as hex too)."""
        o = self.options
        return {
            "names": sorted(self.names),
            "weight": None if o.weight is None else [float.hex(w) for w in o.weight],
            "ignore_index": o.ignore_index,
            "reduction": o.reduction,
            "label_smoothing": float.hex(o.label_smoothing),
            "z_loss": float.hex(o.z_loss),
            "softcap": None if o.softcap is None else float.hex(o.softcap),
            "ignored": list(self.ignored),
            "probs": None
            if self.probs is None
            else [[float.hex(p) for p in row] for row in self.probs.double().tolist()],
        }

    @classmethod
    def from_json(cls, data: dict, dtype: torch.dtype) -> Contract:
        """Inverse of ``to_json``; ValueError (one line) for a malformed entry."""
        try:
            h = float.fromhex
            options = LossOptions(
                weight=None if data["weight"] is None else tuple(h(w) for w in data["weight"]),
                ignore_index=int(data["ignore_index"]),
                reduction=data["reduction"],
                label_smoothing=h(data["label_smoothing"]),
                z_loss=h(data["z_loss"]),
                softcap=None if data["softcap"] is None else h(data["softcap"]),
            )
            probs = data.get("probs")
            probs = None if probs is None else torch.tensor([[h(p) for p in row] for row in probs]).to(dtype)
            return cls(frozenset(data["names"]), options, tuple(int(i) for i in data["ignored"]), probs)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed case options: {exc}") from None

    def describe(self) -> str:
        """One line for counterexamples, e.g. 'reduction=mean, label_smoothing=0.1, 2 of 3 ignored'."""
        o, parts = self.options, []
        for name in sorted(self.names):
            if name == "weight":
                parts.append("weight=None" if o.weight is None else f"weight=[{_weights(o.weight)}]")
            elif name == "ignore_index":
                parts.append(f"ignore_index={o.ignore_index} ({len(self.ignored)} ignored)")
            else:
                parts.append(f"{name}={getattr(o, name)!r}")
        if self.probs is not None:
            parts.append(f"probability targets {tuple(self.probs.shape)}")
        return ", ".join(parts)


def _weights(weight: tuple[float, ...]) -> str:
    if len(weight) <= 8:
        return ", ".join(repr(w) for w in weight)
    distinct = sorted(set(weight))
    return f"{len(weight)} weights, {len(distinct)} distinct in [{distinct[0]!r}, {distinct[-1]!r}]"


def _validate(names: Iterable[str], soft_targets: bool) -> frozenset[str]:
    names = frozenset(names)
    unknown = sorted(names - set(OPTION_NAMES))
    if unknown:
        raise InvalidArgument(f"unknown option {unknown[0]!r}; expected some of {', '.join(OPTION_NAMES)}")
    if not isinstance(soft_targets, bool):
        raise InvalidArgument(f"soft_targets must be a bool, got {soft_targets!r}")
    return names


def with_contract(base: st.SearchStrategy, names: Iterable[str], soft_targets: bool = False) -> st.SearchStrategy:
    """Cases of ``base`` with drawn options (``names``) and, for ``soft_targets``, probability targets.

    With no names and no soft targets this is ``base`` itself, so a plain run draws the
    cases it always drew. Options follow ``strategies.options.loss_options`` (all targets
    ignored, zero weights at the only live target, smoothing 0, tiny and 1, z-loss large
    enough that lse² overflows float16, soft caps far below the logits). Probability
    targets replace class indices on about a third of the (N, C) cases of at most
    ``SOFT_TARGET_MAX_ELEMENTS`` logits. Raises InvalidArgument for unknown names.
    """
    names = _validate(names, soft_targets)
    if not names and not soft_targets:
        return base

    @st.composite
    def draw_contract(draw, case):
        if case.logits.ndim != 2 and not names:
            return case
        fmt, n_classes = case.format, case.n_classes
        probs = None
        small = case.logits.ndim == 2 and case.logits.numel() <= SOFT_TARGET_MAX_ELEMENTS
        if soft_targets and small and draw(st.integers(0, 2)) == 0:
            rows = case.logits.double().tolist()
            probs = torch.tensor([draw(probability_rows(fmt, row)) for row in rows], dtype=torch.float64).to(case.dtype)
        targets = case.row_targets.tolist()
        drawn = names - ({"ignore_index"} if probs is not None else set())  # probabilities cannot be ignored
        options, with_ignored = draw(loss_options(fmt, n_classes, targets, drawn))
        # every sample whose target is ignore_index is ignored: a real target equal to it (C - 1) too
        ignored = tuple(i for i, t in enumerate(with_ignored) if t == options.ignore_index) if drawn else ()
        contract = Contract(drawn, options, ignored, probs)
        return replace(case, contract=contract)

    return base.flatmap(draw_contract)
