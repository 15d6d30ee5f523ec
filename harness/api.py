"""Regression checks of one implementation: verdicts, minimal counterexamples, torch comparison.

``check`` is the Python API behind ``python -m harness check``; ``assert_stable`` is
its pytest-friendly form.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch

from harness.calling.caller import DEFAULT_COMPILE_TIMEOUT, DEFAULT_MEMORY_LIMIT_MIB, DEFAULT_TIMEOUT
from harness.calling.loading import load_implementation, probe
from harness.calling.registry import REGISTRY, Implementation, check_name, safe_label
from harness.campaign.settings import SandboxSettings, check_device, check_regimes
from harness.formats import FORMATS, Format, parse_dtype
from harness.grading.verdicts import GRADED, VERDICTS, Policy
from harness.profiles import resolve_profile
from harness.runner import RECORD_COLUMNS
from harness.search import Counterexample, SearchResult, search
from strategies import REGIMES

__all__ = ["CheckResult", "assert_stable", "check", "check_device", "describe_counterexample"]

REFERENCE = "torch"


@dataclass
class CheckResult:
    """What ``check`` found: pass/fail, counts per verdict, worst cases and counterexamples."""

    implementation: str
    passed: bool
    policy: Policy
    records: pd.DataFrame  # the implementation's records, one per case
    reference: pd.DataFrame  # torch's records on the same cases
    counterexamples: list[Counterexample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    search: SearchResult | None = field(default=None, repr=False)

    @property
    def counts(self) -> dict[str, int]:
        counted = self.records["verdict"].value_counts()
        return {verdict: int(counted.get(verdict, 0)) for verdict in VERDICTS}

    @property
    def graded(self) -> int:
        """Cases graded against a certified oracle value (a run that grades none never passes)."""
        return int(self.records["verdict"].isin(GRADED).sum())

    def worst_cases(self, n: int = 5) -> pd.DataFrame:
        ranked = self.records.assign(rank=self.records["verdict"].map(VERDICTS.index))
        ranked = ranked.sort_values(["rank", "allowance_ratio", "ulps"], ascending=False, kind="stable")
        return ranked.drop(columns="rank").head(n)

    def versus_reference(self) -> pd.DataFrame:
        """Per (dtype, regime): the worst error over the allowance, and how it compares with torch."""
        key = ["dtype", "regime"]

        def worst(frame: pd.DataFrame) -> pd.Series:
            failing = frame["verdict"].eq("unstable")
            return frame.assign(score=frame["allowance_ratio"].where(~failing, math.inf)).groupby(key)["score"].max()

        table = pd.DataFrame({"impl": worst(self.records), "torch": worst(self.reference)})
        tolerance = 0.05  # allowance ratios closer than this are the same
        table["versus_torch"] = "same"
        table.loc[table["impl"] > table["torch"] + tolerance, "versus_torch"] = "worse"
        table.loc[table["impl"] < table["torch"] - tolerance, "versus_torch"] = "better"
        return table.reset_index()

    def describe(self, replay_dir: str | None = None) -> str:
        counts = ", ".join(f"{n} {v}" for v, n in self.counts.items() if n)
        status = "PASSED" if self.passed else "FAILED"
        lines = [f"{status}: {self.implementation} on {len(self.records)} cases ({counts}) in {self.seconds:.1f} s"]
        if not self.graded:
            lines[0] += "; no case was graded"
        for cx in self.counterexamples:
            lines.append("")
            lines.append(describe_counterexample(cx, replay_dir))
        lines.extend(f"tool error: {e}" for e in self.errors)
        return "\n".join(lines)


def _values(t: torch.Tensor) -> str:
    return "[" + ", ".join(repr(v) for v in t.to(torch.float64).tolist()) + "]"


def describe_counterexample(cx: Counterexample, replay_dir: str | None = None) -> str:
    """A minimal counterexample in a few lines: inputs, output, oracle, error, regime, replay command."""
    case, r = cx.case, cx.record
    sample = max(int(r["sample"]), 0)
    row = case.row_logits[sample]
    lines = [
        f"counterexample {case.case_id} ({case.format.name}, regime {case.regime}): {r['verdict']}, {r['outcome']}"
    ]
    if case.logits.numel() <= 24 and case.logits.ndim == 2:
        lines.append(f"  logits  = [{', '.join(_values(x) for x in case.logits)}]")
    else:
        finite = row[torch.isfinite(row)].to(torch.float64)
        extremes = f"max {finite.max().item()!r}, min {finite.min().item()!r}" if finite.numel() else "no finite"
        lines.append(
            f"  logits  = shape {tuple(case.logits.shape)}; row {sample}: {extremes}, "
            f"{int(torch.isneginf(row).sum())} -inf, {int(torch.isnan(row).sum())} nan"
        )
    target = int(case.row_targets[sample])
    lines.append(f"  targets = {case.targets.tolist()}  (target logit {row[target].item()!r})")
    where = "mean over samples" if r["reduction"] == "mean" else f"sample {sample}"
    lines.append(f"  output  = {r['output']!r} ({r['output_bits']}), {where}")
    lines.append(f"  oracle  = {r['oracle']!r} (exact {r['exact']!r})")
    lines.append(
        f"  error   = {r['abs_error']:.3g} absolute, {r['ulps']:g} ULPs, "
        f"{r['allowance_ratio']:.3g} x the allowance {r['allowance']:.3g}"
    )
    if r.get("message"):
        lines.append(f"  message = {r['message']}")
    if replay_dir:
        lines.append(f"  replay: python -m harness replay {replay_dir} {case.case_id}")
    return "\n".join(lines)


def _formats(dtypes: Sequence[torch.dtype | str | Format] | None) -> list[Format]:
    if dtypes is None:
        return list(FORMATS.values())
    formats = []
    for d in dtypes:
        if isinstance(d, Format):
            formats.append(d)
        elif isinstance(d, str):
            formats.append(parse_dtype(d))
        else:
            formats.append(parse_dtype(str(d)))
    return formats


def _implementation(fn, name: str | None, dtypes: Sequence[Format], sandbox: SandboxSettings) -> Implementation:
    """The Implementation to check, loaded (or unpickled) in a sandbox already: errors come before the run."""
    if name is not None:
        check_name(name)
    if isinstance(fn, str):
        impl = load_implementation(fn, sandbox.worker_options)
    elif isinstance(fn, Implementation):
        impl = fn
    elif callable(fn):
        label = name or safe_label(str(getattr(fn, "__qualname__", None) or type(fn).__name__))
        impl = Implementation(label, fn, source="python", k_dimensional=bool(getattr(fn, "k_dimensional", False)))
    else:
        raise TypeError(f"expected a callable, an Implementation or an IMPL spec, got {type(fn).__name__}")
    if not isinstance(fn, str) and impl.source != "built-in":  # built-ins are the harness's own: torch, importable
        impl = probe(impl, sandbox.worker_options)
    supported = tuple(f.dtype for f in dtypes if f.dtype in impl.dtypes)
    return dataclasses.replace(impl, name=name or impl.name, dtypes=supported)


def check(
    fn: Callable | Implementation | str,
    *,
    dtypes: Sequence[torch.dtype | str] | None = None,
    regimes: Sequence[str] | None = None,
    examples: int | None = None,
    seed: int = 0,
    max_ulps: float = 4.0,
    strict: bool = False,
    profile: str | None = None,
    max_classes: int | None = None,
    device: str = "cpu",
    timeout: float = DEFAULT_TIMEOUT,
    name: str | None = None,
    progress: bool | None = False,
    k_dimensional: bool | None = None,
    compile_timeout: float = DEFAULT_COMPILE_TIMEOUT,
    memory_limit_mib: float = DEFAULT_MEMORY_LIMIT_MIB,
    framework: str = "auto",
    triton_interpret: bool = False,
) -> CheckResult:
    """Run the strategies on ``fn(logits, targets)`` and judge every case.

    ``fn`` returns per-sample losses (N,) or their mean (a scalar). It fails when any
    case is *unstable* (or *inaccurate* with ``strict``); each failing (dtype, regime)
    cell contributes one counterexample, shrunk by Hypothesis. A run that grades no case
    never passes.

    ``fn`` runs in a sandbox process: a callable is sent there with cloudpickle (lambdas,
    closures and functions of ``__main__`` included), a ``file.py:function`` or
    ``module:function`` spec is imported there. ``device`` is where it runs (the oracle
    stays on the CPU, in this process); a call taking over ``timeout`` seconds, except the
    first per (dtype, shape class) and torch.compile's compiles, which get
    ``compile_timeout``, is a ``timeout``; a sandbox over ``memory_limit_mib`` MiB of
    resident memory (0: no limit) is ``killed_memory``; one that dies is ``crashed``.
    ``framework`` (auto, torch, jax, numpy) says what arrays fn takes; ``triton_interpret``
    runs Triton kernels on Triton's CPU interpreter. ``k_dimensional``: fn also takes
    (N, C, d1, ..., dk) logits with (N, d1, ..., dk) targets, so the layout regime runs on
    it (default: the implementation's own declaration, or ``fn.k_dimensional``).

    Raises ValueError (one line) for bad settings, an implementation that cannot be
    loaded or pickled, or a regime that cannot be drawn under the limits.
    """
    formats = _formats(dtypes)
    sandbox = SandboxSettings(timeout, compile_timeout, memory_limit_mib, framework, triton_interpret,
                              device).validated()  # fmt: skip
    chosen = list(regimes or REGIMES)
    check_regimes(chosen, 1 << 62, True)  # unknown names first, before anything is loaded
    budget = resolve_profile(profile)
    if examples is not None and examples < 1:
        raise ValueError(f"examples must be >= 1, got {examples}")
    if max_classes is not None and max_classes < 2:
        raise ValueError(f"max_classes must be >= 2, got {max_classes}")
    impl = _implementation(fn, name, formats, sandbox)
    if k_dimensional is not None:
        impl = dataclasses.replace(impl, k_dimensional=k_dimensional)
    if not impl.k_dimensional:
        if regimes is not None and "layout" in chosen:
            raise ValueError(f"regime 'layout' needs k_dimensional=True: {impl.name} takes only (N, C) logits")
        chosen = [r for r in chosen if r != "layout"]
    if impl.name == REFERENCE:
        impl = dataclasses.replace(impl, name=f"{REFERENCE} (under test)")
    formats = [f for f in formats if f.dtype in impl.dtypes]
    if not formats:
        raise ValueError(f"{impl.name} supports none of the requested dtypes")
    limit = max_classes or budget.max_classes
    if regimes is not None:
        check_regimes(chosen, limit, impl.k_dimensional)
    chosen = [r for r in chosen if r != "large_vocab" or limit >= 1024]
    policy = Policy(max_ulps=max_ulps, strict=strict)
    reference = REGISTRY.get(REFERENCE)
    with sandbox.caller() as caller:
        found = search(
            formats,
            chosen,
            [impl, reference],
            profile=budget,
            seed=seed,
            examples=examples,
            max_classes=limit,
            policy=policy,
            fails=lambda record: (
                record["impl"] == impl.name
                and policy.fails(record["verdict"])
                and not str(record["message"]).startswith("skipped:")  # a skipped call says nothing of its case
            ),
            subject=impl,
            caller=caller,
            progress=progress,
        )
    records = pd.DataFrame(found.records, columns=list(RECORD_COLUMNS))
    mine = records[records["impl"] == impl.name].reset_index(drop=True)
    theirs = records[records["impl"] == REFERENCE].reset_index(drop=True)
    graded = bool(mine["verdict"].isin(GRADED).any())
    passed = graded and not any(policy.fails(v) for v in mine["verdict"])
    return CheckResult(impl.name, passed, policy, mine, theirs, found.counterexamples, found.errors,
                       found.seconds, found)  # fmt: skip


def assert_stable(fn: Callable | Implementation | str, **options) -> CheckResult:
    """``check`` that raises AssertionError, with the minimal counterexamples, when it fails."""
    result = check(fn, **options)
    if not result.passed:
        raise AssertionError(result.describe())
    return result
