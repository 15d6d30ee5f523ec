"""Every setting of an audit that affects its records, in one value the manifest stores.

A resumed, sharded or pooled run rebuilds its settings from the manifest, so it draws and
grades exactly what an uninterrupted single run would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from harness.calling.caller import DEFAULT_TIMEOUT
from harness.calling.implementations import PRECISION
from harness.calling.loading import LoadError, load_implementation
from harness.calling.registry import REGISTRY, Implementation
from harness.formats import FORMATS, Format, parse_dtype
from harness.grading.verdicts import Policy
from harness.profiles import Profile, resolve_profile
from strategies import REGIMES

__all__ = ["DEFAULT_SHRINK_SECONDS", "AuditSettings", "SettingsError", "audit_settings"]

DEFAULT_SHRINK_SECONDS = 30.0  # shrinking after an audit, over all its failures
PRECISION_DTYPES = ("float16", "bfloat16")


class SettingsError(ValueError):
    """Settings that cannot make an audit; the message is one line (the CLI's exit 2)."""


@dataclass(frozen=True)
class AuditSettings:
    """What an audit runs and how it grades; JSON-safe through ``to_json``/``from_json``."""

    implementations: tuple[str, ...]  # specs: built-in names, module:function, file.py:function
    dtypes: tuple[str, ...]
    regimes: tuple[str, ...]
    profile: str
    examples: int  # cases per (dtype, regime) cell
    max_classes: int
    seed: int = 0
    max_ulps: float = 4.0
    strict: bool = False
    precision: bool = False  # implementations come from the precision registry
    shard: tuple[int, int] = (1, 1)  # run the k-th of every n cells
    timeout: float = DEFAULT_TIMEOUT
    shrink_seconds: float = DEFAULT_SHRINK_SECONDS

    @property
    def formats(self) -> list[Format]:
        return [FORMATS[name] for name in self.dtypes]

    @property
    def policy(self) -> Policy:
        return Policy(max_ulps=self.max_ulps, strict=self.strict)

    @property
    def budget(self) -> Profile:
        return resolve_profile(self.profile)

    def cells(self) -> list[tuple[str, str]]:
        """Every (dtype, regime) cell of the campaign, in the order a single run takes them."""
        return [(d, r) for d in self.dtypes for r in self.regimes]

    def shard_cells(self) -> list[tuple[str, str]]:
        """The cells this shard runs."""
        k, n = self.shard
        return self.cells()[k - 1 :: n]

    def load_implementations(self) -> list[Implementation]:
        registry = PRECISION if self.precision else REGISTRY
        try:
            return [_implementation(spec, registry) for spec in self.implementations]
        except LoadError as exc:
            raise SettingsError(str(exc)) from None

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_json(cls, data: dict) -> AuditSettings:
        """The settings ``to_json`` wrote; every field is required (none silently defaults)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        missing, unknown = fields - set(data), set(data) - fields
        if missing:
            raise SettingsError(f"settings lack {', '.join(sorted(missing))} (written by an older harness)")
        if unknown:
            raise SettingsError(f"unknown settings {', '.join(sorted(unknown))} (written by a newer harness)")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})

    def replace(self, **changes) -> AuditSettings:
        return dataclasses.replace(self, **changes)


def _implementation(item: str | Implementation, registry) -> Implementation:
    if isinstance(item, Implementation):
        return item
    return registry.get(item) if item in registry else load_implementation(item)


def _spec(impl: Implementation) -> str:
    return impl.name if impl.source == "built-in" else impl.source


def audit_settings(
    implementations: Sequence[str | Implementation] | None = None,
    *,
    dtypes: Sequence[str | torch.dtype | Format] | None = None,
    regimes: Sequence[str] | None = None,
    profile: str | None = None,
    examples: int | None = None,
    max_classes: int | None = None,
    seed: int = 0,
    max_ulps: float = 4.0,
    strict: bool = False,
    precision: bool = False,
    shard: tuple[int, int] = (1, 1),
    timeout: float = DEFAULT_TIMEOUT,
    shrink_seconds: float = DEFAULT_SHRINK_SECONDS,
) -> tuple[AuditSettings, list[Implementation]]:
    """Validated settings, with defaults filled in, and the implementations they name.

    Raises SettingsError (one line) for anything that cannot make an audit.
    """
    try:
        budget = resolve_profile(profile)
        formats = [d if isinstance(d, Format) else parse_dtype(str(d)) for d in dtypes] if dtypes else None
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    if formats is None:
        formats = [FORMATS[name] for name in PRECISION_DTYPES] if precision else list(FORMATS.values())
    if examples is not None and examples < 1:
        raise SettingsError(f"examples must be >= 1, got {examples}")
    if max_classes is not None and max_classes < 2:
        raise SettingsError(f"max_classes must be >= 2, got {max_classes}")
    if not 1 <= shard[0] <= shard[1]:
        raise SettingsError(f"shard must be K/N with 1 <= K <= N, got {shard[0]}/{shard[1]}")
    registry = PRECISION if precision else REGISTRY
    if implementations:
        try:
            impls = [_implementation(i, registry) for i in implementations]
        except LoadError as exc:
            raise SettingsError(str(exc)) from None
    else:
        impls = list(registry)
    limit = max_classes or budget.max_classes
    takes_layout = any(impl.k_dimensional for impl in impls)
    if regimes:
        unknown = [r for r in regimes if r not in REGIMES]
        if unknown:
            raise SettingsError(f"unknown regime {unknown[0]!r}; expected one of {', '.join(REGIMES)}")
        if "layout" in regimes and not takes_layout:
            raise SettingsError(
                "regime 'layout' needs an implementation that takes (N, C, d1, ...) logits "
                "(declare it with fn.k_dimensional = True, or check --k-dimensional)"
            )
        chosen = list(regimes)
    else:
        chosen = [r for r in REGIMES if (r != "large_vocab" or limit >= 1024) and (r != "layout" or takes_layout)]
    settings = AuditSettings(
        implementations=tuple(_spec(i) for i in impls), dtypes=tuple(f.name for f in formats), regimes=tuple(chosen),
        profile=budget.name, examples=examples or budget.examples, max_classes=limit, seed=seed, max_ulps=max_ulps,
        strict=strict, precision=precision, shard=tuple(shard), timeout=timeout, shrink_seconds=shrink_seconds,
    )  # fmt: skip
    return settings, impls
