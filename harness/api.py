"""Regression checks of one implementation: verdicts, minimal counterexamples, torch comparison.

``check`` is the Python API behind ``python -m harness check``; ``assert_stable`` is
its pytest-friendly form.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch

from harness.calling.caller import DEFAULT_COMPILE_TIMEOUT, DEFAULT_MEMORY_LIMIT_MIB, DEFAULT_TIMEOUT, Caller
from harness.calling.implementations import reference_for
from harness.calling.loading import load_implementation, probe
from harness.calling.registry import Implementation, check_name, safe_label
from harness.calling.signature import OPS, resolve_options
from harness.campaign.settings import SandboxSettings, check_device, check_regimes
from harness.case_text import case_lines
from harness.formats import FORMATS, Format, parse_dtype
from harness.grading.verdicts import FAILED_CALLS, GRADED, VERDICTS, Policy
from harness.profiles import resolve_profile
from harness.runner import RECORD_COLUMNS, run_case
from harness.search import SELF_CHECK_CASES, Counterexample, SearchResult, oracle_self_check, search
from harness.user_case import CaseError, load_case
from reports.stats import coverage_line
from strategies import REGIMES, Case, regime_fits

__all__ = ["CheckResult", "assert_stable", "check", "check_device", "describe_counterexample", "with_contract_settings"]


@dataclass
class CheckResult:
    """What ``check`` found: pass/fail, counts per verdict, worst cases and counterexamples."""

    implementation: str
    passed: bool
    policy: Policy
    records: pd.DataFrame  # the implementation's records, one per (case, quantity)
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
    def cases(self) -> int:
        """Distinct cases graded (a case has a loss record, a grad record, or both)."""
        return int(self.records["case_id"].nunique())

    @property
    def graded(self) -> int:
        """Records graded against a certified oracle value (a run that grades none never passes)."""
        return int(self.records["verdict"].isin(GRADED).sum())

    @property
    def not_differentiable(self) -> str:
        """Why the implementation's gradient could not be taken ("" when it could, or was not asked for)."""
        notes = self.records["message"].astype(str).str.extract(r"(not differentiable: [^;]*)")[0].dropna()
        return str(notes.iloc[0]) if len(notes) else ""

    def status_line(self) -> str:
        """PASSED/FAILED, the cases, the verdicts (per quantity where gradients were graded) and the time."""
        status = "PASSED" if self.passed else "FAILED"
        by_quantity = []
        for quantity, frame in self.records.groupby("quantity", sort=False):
            counted = frame["verdict"].value_counts()
            counts = ", ".join(f"{int(counted[v])} {v}" for v in VERDICTS if counted.get(v, 0))
            by_quantity.append((quantity, counts))
        if len(by_quantity) > 1 or any(q == "grad" for q, _ in by_quantity):
            counts = "; ".join(f"{QUANTITY_LABELS[q]}: {c}" for q, c in by_quantity)
        else:
            counts = by_quantity[0][1] if by_quantity else ""
        line = f"{status}: {self.implementation} on {self.cases} cases ({counts}) in {self.seconds:.1f} s"
        if not self.graded:
            line += "; no case was graded"
        if self.not_differentiable:
            line += f"\n{self.implementation} is {self.not_differentiable}; its forward was graded"
        return line

    def worst_cases(self, n: int = 5) -> pd.DataFrame:
        ranked = self.records.assign(rank=self.records["verdict"].map(VERDICTS.index))
        ranked = ranked.sort_values(["rank", "allowance_ratio", "ulps"], ascending=False, kind="stable")
        return ranked.drop(columns="rank").head(n)

    def versus_reference(self) -> pd.DataFrame:
        """Per (quantity, dtype, regime): the worst error over the allowance, and how it compares with torch."""
        key = ["quantity", "dtype", "regime"]

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
        lines = [self.status_line()]
        if len(self.records) > 1:
            lines.append(coverage_line(self.records))
        for cx in self.counterexamples:
            lines.append("")
            lines.append(describe_counterexample(cx, replay_dir))
        lines.extend(f"tool error: {e}" for e in self.errors)
        return "\n".join(lines)


QUANTITY_LABELS = {"loss": "loss", "grad": "gradient"}


def _values(t: torch.Tensor) -> str:
    return "[" + ", ".join(repr(v) for v in t.to(torch.float64).tolist()) + "]"


def describe_counterexample(cx: Counterexample, replay_dir: str | None = None) -> str:
    """A minimal counterexample in a few lines: inputs, output, oracle, error, regime, replay command.

    Small cases show every logit; large ones the positions that decide the failing
    sample's loss (harness.case_text).
    """
    case, r = cx.case, cx.record
    sample = max(int(r["sample"]), 0) if r["reduction"] == "none" or r.get("quantity") == "grad" else 0
    row = case.row_logits[min(sample, case.n_samples - 1)]
    lines = [
        f"counterexample {case.case_id} ({case.format.name}, regime {case.regime}): {r['verdict']}, {r['outcome']}"
        + (" in the gradient" if r.get("quantity") == "grad" else "")
    ]
    lines.extend("  " + line for line in case_lines(case, sample))
    op = r.get("op") or "cross_entropy"
    if op == "cross_entropy":
        contract = case.contract
        if contract is not None and contract.probs is not None and r.get("soft_targets"):
            lines.append(f"  targets = probabilities, row {sample}: {_values(contract.probs[sample])}")
        else:
            target = int(case.row_targets[sample])
            shown = case.targets.tolist() if case.n_samples <= 16 else f"{case.n_samples:,} targets"
            lines.append(f"  targets = {shown}  (target logit {row[target].item()!r})")
        if r.get("options"):
            lines.append(f"  options = {r['options']}")
    else:
        lines.append(f"  op      = {op} over the last dimension")
    reduction = r["reduction"]
    grad = r.get("quantity") == "grad"
    if grad:
        sample = max(int(r["sample"]), 0)
        upstream = "the per-sample upstream gradients of strategies.upstream" if reduction == "none" else "a scalar"
        lines.append(f"  backward = the {reduction if reduction != 'none' else 'per-sample'} loss back-propagated "
                     f"with {upstream} (this row's: {r['upstream']!r})")  # fmt: skip
        element = int(r["element"])
        where = f"gradient element [{sample}, {element}] (d loss / d logits, row {sample}, class {element})"
    elif reduction in ("mean", "sum"):
        where = f"{reduction} over samples"
    elif int(r.get("element", -1)) >= 0:
        where = f"element [{sample}, {int(r['element'])}]"
    else:
        where = f"sample {sample}"
    out_dtype = r.get("output_dtype") or case.format.name
    dtype_note = f", {out_dtype} output" if out_dtype != case.format.name else ""
    if r["outcome"] in FAILED_CALLS:  # no output to compare: say what happened instead
        lines.append(f"  output  = none: the call ended as {r['outcome']}")
    else:
        lines.append(f"  output  = {r['output']!r} ({r['output_bits']}), {where}{dtype_note}")
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
        impl = Implementation(label, fn, source="python", k_dimensional=bool(getattr(fn, "k_dimensional", False)),
                              contiguous_only=bool(getattr(fn, "contiguous_only", False)))  # fmt: skip
    else:
        raise TypeError(f"expected a callable, an Implementation or an IMPL spec, got {type(fn).__name__}")
    if not isinstance(fn, str) and impl.source != "built-in":  # built-ins are the harness's own: torch, importable
        impl = probe(impl, sandbox.worker_options)
    supported = tuple(f.dtype for f in dtypes if f.dtype in impl.dtypes)
    return dataclasses.replace(impl, name=name or impl.name, dtypes=supported)


def with_contract_settings(
    impl: Implementation,
    *,
    op: str | None = None,
    options: str | Sequence[str] | None = None,
    soft_targets: bool | None = None,
    output_dtype: torch.dtype | str | None = None,
) -> Implementation:
    """``impl`` with its contract narrowed or widened as asked (see ``check``); ValueError (one line)."""
    if op is not None:
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
        if op != "cross_entropy":
            impl = dataclasses.replace(impl, op=op, options=frozenset(), soft_targets=False)
        else:
            impl = dataclasses.replace(impl, op=op)
    if impl.op != "cross_entropy" and (options not in (None, "none") or soft_targets):
        raise ValueError(f"options and probability targets apply to cross_entropy, not {impl.op}")
    if impl.op == "cross_entropy":
        impl = dataclasses.replace(impl, options=resolve_options(impl.options, options, var_keywords=impl.var_keywords))
    if soft_targets is not None:
        if not isinstance(soft_targets, bool):
            raise ValueError(f"soft_targets must be True or False, got {soft_targets!r}")
        impl = dataclasses.replace(impl, soft_targets=soft_targets)
    if output_dtype is not None:
        impl = dataclasses.replace(impl, output_dtype=parse_dtype(str(output_dtype)).dtype)
    return impl


def _declared(impl: Implementation, k_dimensional: bool | None, contiguous_only: bool | None,
              contract: dict) -> tuple[Implementation, Implementation]:  # fmt: skip
    """(the implementation as declared, the built-in it is compared with)."""
    if k_dimensional is not None:
        impl = dataclasses.replace(impl, k_dimensional=k_dimensional)
    if contiguous_only is not None:
        impl = dataclasses.replace(impl, contiguous_only=contiguous_only)
    impl = with_contract_settings(impl, **contract)
    reference = reference_for(impl.op, impl.options, impl.soft_targets)
    if impl.name == reference.name:
        impl = dataclasses.replace(impl, name=f"{reference.name} (under test)")
    return impl, reference


def _check_case(impl: Implementation, reference: Implementation, case: Case, policy: Policy,
                caller: Caller, quantities: tuple[str, ...] = ("loss",)) -> CheckResult:  # fmt: skip
    """Grade exactly one given case: the same records, verdicts and counterexample format as a search."""
    if not impl.supports(case.dtype):
        raise ValueError(f"{impl.name} does not support {case.format.name}, the case's dtype")
    if case.logits.ndim > 2 and not impl.k_dimensional:
        raise ValueError(f"the case's logits are {tuple(case.logits.shape)}: {impl.name} takes only (N, C) logits "
                         "(declare k_dimensional=True)")  # fmt: skip
    if not case.contiguous and impl.contiguous_only:
        raise ValueError(f"the case's logits are not contiguous ({case.layout}): {impl.name} declares contiguous_only")
    found = SearchResult()
    start = time.perf_counter()
    records = run_case(case, [impl, reference], policy, caller, quantities)
    found.records.extend(records)
    found.cases[case.case_id] = case
    found.seen.add(case.case_id)
    found.completed_cells.append((case.format.name, case.regime))
    found.errors.extend(oracle_self_check(found, SELF_CHECK_CASES))
    found.seconds = time.perf_counter() - start
    for record in records:
        if (
            record["impl"] == impl.name
            and policy.fails(record["verdict"])
            and not str(record["message"]).startswith("skipped:")
        ):
            found.counterexamples.append(Counterexample(case, record))
    return _result(impl, reference, policy, found, quantities)


def _result(impl: Implementation, reference: Implementation, policy: Policy, found: SearchResult,
            quantities: tuple[str, ...] = ("loss",)) -> CheckResult:  # fmt: skip
    records = pd.DataFrame(found.records, columns=list(RECORD_COLUMNS))
    mine = records[records["impl"] == impl.name].reset_index(drop=True)
    theirs = records[records["impl"] == reference.name].reset_index(drop=True)
    graded = bool(mine["verdict"].isin(GRADED).any())  # a run that graded nothing never passes
    if quantities == ("grad",) and impl.op == "cross_entropy":
        graded = bool(mine.loc[mine["quantity"] == "grad", "verdict"].isin(GRADED).any())
        if not graded and not found.interrupted and len(mine):
            found.errors.append(f"grad_only: no gradient was graded ({impl.name}: the forward only)")
    passed = graded and not any(policy.fails(v) for v in mine["verdict"])
    return CheckResult(impl.name, passed, policy, mine, theirs, found.counterexamples, found.errors,
                       found.seconds, found)  # fmt: skip


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
    contiguous_only: bool | None = None,
    case: Case | dict | tuple | str | None = None,
    compile_timeout: float = DEFAULT_COMPILE_TIMEOUT,
    memory_limit_mib: float = DEFAULT_MEMORY_LIMIT_MIB,
    framework: str = "auto",
    triton_interpret: bool = False,
    op: str | None = None,
    options: str | Sequence[str] | None = None,
    soft_targets: bool | None = None,
    output_dtype: torch.dtype | str | None = None,
    grad: bool = True,
    grad_only: bool = False,
) -> CheckResult:
    """Run the strategies on ``fn(logits, targets)`` and judge every case.

    ``fn`` returns per-sample losses (N,) or their mean (a scalar). It fails when any
    case is *unstable* (or *inaccurate* with ``strict``); each failing (dtype, regime)
    cell contributes one counterexample, shrunk by Hypothesis and then structurally
    (rows, tiles of classes, magnitudes, layout). A run that grades no case never passes.

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
    ``contiguous_only``: fn needs contiguous logits, so the strided regime is left out
    (default: its declaration, or ``fn.contiguous_only``).

    ``case``: grade exactly this input instead of searching: a Case, a dict with
    ``logits`` and ``targets`` tensors, a ``(logits, targets)`` pair, a ``torch.save``
    file of such a dict, or ``"REPORT_DIR:CASE_ID"`` (harness.user_case). Its verdict,
    record and counterexample are those a search would give it; search options
    (``dtypes``, ``regimes``, ``examples``, ``profile``, ``max_classes``, ``seed``) must then be left out.

    The contract (issue 14; README "The whole contract"): ``op`` is cross_entropy (default,
    or ``fn.op``), or log_softmax, softmax, logsumexp, called ``fn(logits)`` over the last
    dimension and graded per element. ``options`` narrows (or, for a ``**kwargs``
    function, widens) the option keywords exercised, which default to those fn's
    signature names (weight, ignore_index, reduction, label_smoothing, z_loss, softcap):
    "none", "all", a comma-separated string or names. ``soft_targets``: fn also takes
    float (N, C) probability targets (default ``fn.soft_targets``). ``output_dtype``: the
    dtype the output must have (any other is bad_output); by default any float dtype is
    graded in its own dtype, with the allowance of a computation at least as precise as
    the wider of the logits' and the output's dtypes, rounded once.

    Gradients (issue 15; README "Gradients"): with ``grad`` (the default) a cross-entropy
    output is back-propagated with torch autograd, with the case's upstream gradients
    (strategies.upstream: ones, 1/N, per-sample weights with zeros, tiny, huge, negative;
    a reduced output gets one of 1, 1/2, −2, tiny, huge), and the gradient with respect to
    the logits is graded element by element against the certified gradient
    (harness.oracle.gradient) within its allowance (harness.grading.allowance): one more
    record per case, quantity "grad". An implementation that is not differentiable (another
    framework, an output that does not require grad) is graded on its forward, and
    ``CheckResult.not_differentiable`` says why. ``grad_only`` grades only the gradient.

    Raises ValueError (one line) for bad settings, an implementation that cannot be
    loaded or pickled, a regime that cannot be drawn under the limits, or a case that
    cannot be graded.
    """
    sandbox = SandboxSettings(timeout, compile_timeout, memory_limit_mib, framework, triton_interpret,
                              device).validated()  # fmt: skip
    policy = Policy(max_ulps=max_ulps, strict=strict)
    quantities = _quantities(grad, grad_only)
    contract = {"op": op, "options": options, "soft_targets": soft_targets, "output_dtype": output_dtype}
    if case is not None:
        given = [n for n, v in (("dtypes", dtypes), ("regimes", regimes), ("examples", examples), ("profile", profile),
                                ("max_classes", max_classes)) if v is not None]  # fmt: skip
        if given or seed != 0:
            raise ValueError(f"case= grades one given input: leave out {', '.join(given) or 'seed'}")
        try:
            graded = load_case(case)
        except CaseError as exc:
            raise ValueError(str(exc)) from None
        impl, reference = _declared(_implementation(fn, name, [graded.format], sandbox), k_dimensional,
                                    contiguous_only, contract)  # fmt: skip
        check_gradient_request(impl, quantities)
        with sandbox.caller() as caller:
            return _check_case(impl, reference, graded, policy, caller, quantities)
    formats = _formats(dtypes)
    chosen = list(regimes or REGIMES)
    check_regimes(chosen, 1 << 62, True)  # unknown names first, before anything is loaded
    budget = resolve_profile(profile)
    if examples is not None and examples < 1:
        raise ValueError(f"examples must be >= 1, got {examples}")
    if max_classes is not None and max_classes < 2:
        raise ValueError(f"max_classes must be >= 2, got {max_classes}")
    impl, reference = _declared(_implementation(fn, name, formats, sandbox), k_dimensional, contiguous_only, contract)
    check_gradient_request(impl, quantities)
    if not impl.k_dimensional:
        if regimes is not None and "layout" in chosen:
            raise ValueError(f"regime 'layout' needs k_dimensional=True: {impl.name} takes only (N, C) logits")
        chosen = [r for r in chosen if r != "layout"]
    if impl.contiguous_only:
        if regimes is not None and "strided" in chosen:
            raise ValueError(f"regime 'strided' draws non-contiguous logits: {impl.name} declares contiguous_only")
        chosen = [r for r in chosen if r != "strided"]
    formats = [f for f in formats if f.dtype in impl.dtypes]
    if not formats:
        raise ValueError(f"{impl.name} supports none of the requested dtypes")
    limit = max_classes or budget.max_classes
    if regimes is not None:
        check_regimes(chosen, limit, impl.k_dimensional, takes_strided=not impl.contiguous_only)
    chosen = [r for r in chosen if regime_fits(r, limit)]
    if not chosen:
        raise ValueError(f"no requested regime can draw cases of at most {limit} classes")
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
            quantities=quantities,
        )
    return _result(impl, reference, policy, found, quantities)


def check_gradient_request(impl: Implementation, quantities: tuple[str, ...]) -> None:
    """grad_only on the softmax family is a usage error: only cross entropy's backward is graded."""
    if quantities == ("grad",) and impl.op != "cross_entropy":
        raise ValueError(f"grad_only: gradients are graded for cross entropy only, and {impl.name} computes "
                         f"{impl.op} (without grad_only its forward is graded)")  # fmt: skip


def _quantities(grad: bool, grad_only: bool) -> tuple[str, ...]:
    """What check grades: ("loss", "grad"), ("loss",) or ("grad",); ValueError for a contradiction."""
    if not isinstance(grad, bool) or not isinstance(grad_only, bool):
        raise ValueError(f"grad and grad_only must be True or False, got {grad!r} and {grad_only!r}")
    if grad_only and not grad:
        raise ValueError("grad_only=True grades only the gradient: it cannot be combined with grad=False")
    return ("grad",) if grad_only else ("loss", "grad") if grad else ("loss",)


def assert_stable(fn: Callable | Implementation | str, **options) -> CheckResult:
    """``check`` that raises AssertionError, with the minimal counterexamples, when it fails."""
    result = check(fn, **options)
    if not result.passed:
        raise AssertionError(result.describe())
    return result
