"""Every setting of an audit that affects its records, in one value the manifest stores.

A resumed, sharded or pooled run rebuilds its settings from the manifest, so it draws and
grades exactly what an uninterrupted single run would.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from harness.calling.caller import DEFAULT_COMPILE_TIMEOUT, DEFAULT_MEMORY_LIMIT_MIB, DEFAULT_TIMEOUT, Caller
from harness.calling.frameworks import FRAMEWORKS
from harness.calling.implementations import PRECISION
from harness.calling.loading import LoadError, load_implementation
from harness.calling.registry import REGISTRY, Implementation, check_name
from harness.calling.sandbox import WorkerOptions
from harness.formats import FORMATS, Format, parse_dtype
from harness.grading.verdicts import Policy
from harness.profiles import Profile, resolve_profile
from strategies import REGIMES
from strategies.cases import MIN_CLASSES, regime_fits

__all__ = [
    "DEFAULT_SHRINK_SECONDS",
    "AuditSettings",
    "SandboxSettings",
    "SettingsError",
    "audit_settings",
    "check_device",
    "check_regimes",
]

DEFAULT_SHRINK_SECONDS = 30.0  # shrinking after an audit, over all its failures
PRECISION_DTYPES = ("float16", "bfloat16")


class SettingsError(ValueError):
    """Settings that cannot make an audit; the message is one line (the CLI's exit 2)."""


def check_device(device: str) -> str:
    """The device's type if implementations can run there; SettingsError (one line) before any work."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as exc:
        raise SettingsError(f"unknown device {device!r}: {exc}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise SettingsError(f"device {device!r} is not available: this torch has no usable CUDA")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise SettingsError(f"device {device!r} is not available")
    if kind not in ("cpu", "cuda", "mps", "xpu"):
        raise SettingsError(f"device {device!r} cannot run implementations on values (use cpu, cuda, mps or xpu)")
    if kind == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise SettingsError(f"device {device!r} is not available")
    return kind


def check_regimes(
    regimes: Sequence[str],
    max_classes: int,
    takes_layout: bool,
    *,
    takes_strided: bool = True,
    what: str = "an implementation",
) -> None:
    """SettingsError for a regime that is unknown or cannot be drawn under these limits."""
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown:
        raise SettingsError(f"unknown regime {unknown[0]!r}; expected one of {', '.join(REGIMES)}")
    too_small = [r for r in regimes if not regime_fits(r, max_classes)]
    if too_small:
        raise SettingsError(
            f"regime {too_small[0]!r} needs a class limit of at least {MIN_CLASSES[too_small[0]]}, got {max_classes} "
            "(raise --max-classes or leave the regime out)"
        )
    if "layout" in regimes and not takes_layout:
        raise SettingsError(
            f"regime 'layout' needs {what} that takes (N, C, d1, ...) logits "
            "(declare it with fn.k_dimensional = True, or check --k-dimensional)"
        )
    if "strided" in regimes and not takes_strided:
        raise SettingsError(
            "regime 'strided' draws non-contiguous logits and every implementation declares contiguous_only"
        )


@dataclass(frozen=True)
class SandboxSettings:
    """How implementations are called: limits and the sandbox's environment (they change records)."""

    timeout: float = DEFAULT_TIMEOUT  # seconds per call
    compile_timeout: float = DEFAULT_COMPILE_TIMEOUT  # the first call per compile key, and dynamo's compiles
    memory_limit_mib: float = DEFAULT_MEMORY_LIMIT_MIB  # the worker's resident memory; 0: none
    framework: str = "auto"  # auto, torch, jax or numpy
    triton_interpret: bool = False  # Triton kernels under Triton's CPU interpreter
    device: str = "cpu"

    def validated(self) -> SandboxSettings:
        for name in ("timeout", "compile_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise SettingsError(f"{name.replace('_', ' ')} must be a positive, finite number of seconds, "
                                    f"got {value!r}")  # fmt: skip
        limit = self.memory_limit_mib
        if not (isinstance(limit, int | float) and math.isfinite(limit) and limit >= 0):
            raise SettingsError(f"memory limit must be a non-negative number of MiB (0: none), got {limit!r}")
        if self.framework not in FRAMEWORKS:
            raise SettingsError(f"unknown framework {self.framework!r}; expected one of {', '.join(FRAMEWORKS)}")
        check_device(self.device)
        if self.framework == "jax":
            from harness.extras import require

            require("jax", "jax")
        if self.triton_interpret:
            from harness.extras import require

            require("triton", "triton")
        return self

    @property
    def worker_options(self) -> WorkerOptions:
        return WorkerOptions(framework=self.framework, triton_interpret=self.triton_interpret,
                             device=torch.device(self.device).type)  # fmt: skip

    def caller(self) -> Caller:
        return Caller(timeout=self.timeout, device=self.device, compile_timeout=self.compile_timeout,
                      memory_limit_mib=self.memory_limit_mib, framework=self.framework,
                      triton_interpret=self.triton_interpret)  # fmt: skip


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
    compile_timeout: float = DEFAULT_COMPILE_TIMEOUT
    memory_limit_mib: float = DEFAULT_MEMORY_LIMIT_MIB
    framework: str = "auto"
    triton_interpret: bool = False
    device: str = "cpu"

    @property
    def formats(self) -> list[Format]:
        return [FORMATS[name] for name in self.dtypes]

    @property
    def policy(self) -> Policy:
        return Policy(max_ulps=self.max_ulps, strict=self.strict)

    @property
    def budget(self) -> Profile:
        return resolve_profile(self.profile)

    @property
    def sandbox(self) -> SandboxSettings:
        return SandboxSettings(self.timeout, self.compile_timeout, self.memory_limit_mib, self.framework,
                               self.triton_interpret, self.device)  # fmt: skip

    def cells(self) -> list[tuple[str, str]]:
        """Every (dtype, regime) cell of the campaign, in the order a single run takes them."""
        return [(d, r) for d in self.dtypes for r in self.regimes]

    def shard_cells(self) -> list[tuple[str, str]]:
        """The cells this shard runs."""
        k, n = self.shard
        return self.cells()[k - 1 :: n]

    def load_implementations(self) -> list[Implementation]:
        registry = PRECISION if self.precision else REGISTRY
        options = self.sandbox.validated().worker_options
        try:
            return [_implementation(spec, registry, options) for spec in self.implementations]
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


def _implementation(item: str | Implementation, registry, options: WorkerOptions | None = None) -> Implementation:
    if isinstance(item, Implementation):
        return item
    return registry.get(item) if item in registry else load_implementation(item, options)


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
    compile_timeout: float = DEFAULT_COMPILE_TIMEOUT,
    memory_limit_mib: float = DEFAULT_MEMORY_LIMIT_MIB,
    framework: str = "auto",
    triton_interpret: bool = False,
    device: str = "cpu",
) -> tuple[AuditSettings, list[Implementation]]:
    """Validated settings, with defaults filled in, and the implementations they name.

    Raises SettingsError (one line) for anything that cannot make an audit: an unknown
    name, a regime that cannot be drawn under the limits, an implementation named twice,
    a non-finite timeout, a device that cannot run implementations.
    """
    sandbox = SandboxSettings(timeout, compile_timeout, memory_limit_mib, framework, triton_interpret,
                              device).validated()  # fmt: skip
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
        named = [i.name if isinstance(i, Implementation) else str(i) for i in implementations]
        twice = sorted({n for n in named if named.count(n) > 1})
        if twice:
            raise SettingsError(f"implementation {twice[0]!r} is named twice; name each once")
        try:
            for name in named:
                check_name(name)
            impls = [_implementation(i, registry, sandbox.worker_options) for i in implementations]
        except (LoadError, ValueError) as exc:
            raise SettingsError(str(exc)) from None
    else:
        impls = list(registry)
    if not any(impl.supports(f.dtype) for impl in impls for f in formats):
        raise SettingsError(f"no implementation supports the dtypes asked for ({', '.join(f.name for f in formats)})")
    limit = max_classes or budget.max_classes
    takes_layout = any(impl.k_dimensional for impl in impls)
    takes_strided = any(not impl.contiguous_only for impl in impls)
    if regimes:
        check_regimes(regimes, limit, takes_layout, takes_strided=takes_strided)
        chosen = list(regimes)
    else:
        chosen = [
            r for r in REGIMES
            if regime_fits(r, limit) and (r != "layout" or takes_layout) and (r != "strided" or takes_strided)
        ]  # fmt: skip
    settings = AuditSettings(
        implementations=tuple(_spec(i) for i in impls), dtypes=tuple(f.name for f in formats), regimes=tuple(chosen),
        profile=budget.name, examples=examples or budget.examples, max_classes=limit, seed=seed, max_ulps=max_ulps,
        strict=strict, precision=precision, shard=tuple(shard), timeout=float(timeout),
        shrink_seconds=shrink_seconds, compile_timeout=float(compile_timeout), memory_limit_mib=float(memory_limit_mib),
        framework=framework, triton_interpret=bool(triton_interpret), device=str(device),
    )  # fmt: skip
    return settings, impls
