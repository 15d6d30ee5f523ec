"""Command line: ``python -m harness {audit,check,replay} ...`` (also the ``ce-harness`` script).

Exit codes (README "When things go wrong"):
  0  success: the report was written and nothing was flagged (check), or the replay shown
  1  findings: check flagged the implementation, or it regressed against its baseline
  2  usage or input error: bad option, unknown dtype/regime/profile/implementation,
     unwritable --out, missing or corrupt report or baseline
  3  the tool's own error (an oracle self-check disagreed)
  130 interrupted (Ctrl-C/SIGTERM); whatever was finished is written, marked partial
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from harness import baseline as baselines
from harness import interrupts
from harness.api import check, check_gradient_request, with_contract_settings
from harness.bench import run_bench
from harness.calling.caller import DEFAULT_COMPILE_TIMEOUT, DEFAULT_MEMORY_LIMIT_MIB, DEFAULT_TIMEOUT
from harness.calling.frameworks import FRAMEWORKS
from harness.calling.implementations import reference_for
from harness.calling.loading import LoadError, load_implementation
from harness.calling.signature import OPS
from harness.campaign.engine import resume_audit, run_audit
from harness.campaign.executors import EXECUTORS
from harness.campaign.merge import merge_reports
from harness.campaign.report import AuditReport, check_writable, write_check_folder
from harness.campaign.settings import (
    DEFAULT_SHRINK_SECONDS,
    AuditSettings,
    SandboxSettings,
    SettingsError,
    audit_settings,
)
from harness.demo import dominant_case, find_thresholds, panels
from harness.export import export_reproducers, export_tests
from harness.formats import FORMATS, Format, parse_dtype
from harness.oracle.options import OPTION_NAMES
from harness.profiles import PROFILES, resolve_profile
from harness.replay import replay_case
from reports.demo import STORIES, render_demo, story_png
from reports.store import write_files
from reports.terminal import audit_text, check_text, demo_text
from strategies import REGIMES

__all__ = ["main"]

EXIT_OK, EXIT_FLAGGED, EXIT_USAGE, EXIT_TOOL_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
OUT_ROOT = Path("harness-out")
STOP_GRACE_CLI = 30.0  # seconds a run may take to stop after Ctrl-C/SIGTERM before it is ended at once


class UsageError(Exception):
    """A one-line error about how the tool was called (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise UsageError(message)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _at_least_two(text: str) -> int:
    value = _positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2 (a class count), got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text}")
    if math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a positive number, got 0")
    return value


def _shard(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    try:
        shard = (int(k), int(n))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N such as 2/4, got {text!r}") from None
    if not sep or not 1 <= shard[0] <= shard[1]:
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N, got {text!r}")
    return shard


def _dtype(text: str) -> Format:
    try:
        return parse_dtype(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _regime(text: str) -> str:
    if text not in REGIMES:
        raise argparse.ArgumentTypeError(f"unknown regime {text!r}; expected one of {', '.join(REGIMES)}")
    return text


def _profile(text: str) -> str:
    if text not in PROFILES:
        raise argparse.ArgumentTypeError(f"unknown profile {text!r}; expected one of {', '.join(PROFILES)}")
    return text


def _search_options(parser: argparse.ArgumentParser, out: Path) -> None:
    parser.add_argument("--dtype", type=_dtype, action="append", help="dtype (repeatable; default all four)")
    parser.add_argument("--regime", type=_regime, action="append", help="regime to draw (repeatable; default all)")
    parser.add_argument(
        "--profile", type=_profile, help="search budget: ci, dev (default) or fuzz; or $HARNESS_PROFILE"
    )
    parser.add_argument("--examples", type=_positive, help="cases per (dtype, regime) cell (default: the profile's)")
    parser.add_argument("--max-classes", type=_at_least_two, help="largest class count (default: the profile's)")
    parser.add_argument("--seed", type=int, default=0, help="seed for case generation (default 0)")
    parser.add_argument("--max-ulps", type=_non_negative_float, default=4.0,
                        help="ULPs beyond which a stable result is 'inaccurate' (default 4)")  # fmt: skip
    parser.add_argument("--timeout", type=_positive_float, default=DEFAULT_TIMEOUT,
                        help=f"seconds one call may take (default {DEFAULT_TIMEOUT:g})")  # fmt: skip
    parser.add_argument("--compile-timeout", type=_positive_float, default=DEFAULT_COMPILE_TIMEOUT, metavar="SECONDS",
                        help="seconds the first call per (dtype, shape class) may take, and any torch.compile "
                        f"compile (default {DEFAULT_COMPILE_TIMEOUT:g})")  # fmt: skip
    parser.add_argument("--memory-limit", type=_non_negative_float, default=DEFAULT_MEMORY_LIMIT_MIB, metavar="MIB",
                        help="resident memory of an implementation's sandbox process, in MiB "
                        f"(default {DEFAULT_MEMORY_LIMIT_MIB:g}; 0: none)")  # fmt: skip
    parser.add_argument(
        "--framework",
        choices=FRAMEWORKS,
        default="auto",
        help="arrays the implementation takes: torch, jax or numpy (default auto: from its imports)",
    )
    parser.add_argument(
        "--triton-interpret",
        action="store_true",
        help="run Triton kernels on Triton's CPU interpreter (TRITON_INTERPRET=1 in the sandbox)",
    )
    parser.add_argument("--device", default="cpu", help="where the implementation runs (default cpu)")
    parser.add_argument("--out", type=Path, default=out, help=f"report folder (default {out})")
    parser.add_argument("--quiet", action="store_true", help="print only the verdict line (and no progress bar)")
    parser.add_argument("--verbose", action="store_true", help="print every table and counterexample in full")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m harness", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    audit = sub.add_parser("audit", help="run implementations over the strategies and write a report")
    _search_options(audit, OUT_ROOT / "audit")
    audit.add_argument("--impl", action="append", help="built-in name, module:function or file.py:function")
    audit.add_argument(
        "--precision",
        action="store_true",
        help="compare low-precision ways of computing the loss (float16 and bfloat16 by default)",
    )
    audit.add_argument(
        "--shard",
        type=_shard,
        default=(1, 1),
        metavar="K/N",
        help="run only the K-th of every N (dtype, regime) cells; combine shards with merge",
    )
    audit.add_argument("--strict", action="store_true",
                       help="'inaccurate' results count as failures too (shrunk like 'unstable' ones)")  # fmt: skip
    audit.add_argument("--executor", choices=EXECUTORS,
                       help="where the cells run: inprocess (default), pool (--workers processes), dask (a local "
                            "cluster of --workers processes, or the one at --scheduler); every one writes the same "
                            "records")  # fmt: skip
    audit.add_argument("--workers", type=_positive,
                       help="processes of the pool or of the local Dask cluster; alone: --executor pool")  # fmt: skip
    audit.add_argument("--scheduler", metavar="ADDRESS",
                       help="run the cells on the Dask cluster at ADDRESS (tcp://host:8786); implies dask")  # fmt: skip
    audit.add_argument("--force", action="store_true",
                       help="write to --out (or the --resume folder) even if another run holds its lock")  # fmt: skip
    audit.add_argument("--shrink-seconds", type=_non_negative_float, default=DEFAULT_SHRINK_SECONDS,
                       metavar="SECONDS", help="time for shrinking minimal reproducers of the failures "
                       f"after the run (default {DEFAULT_SHRINK_SECONDS:g}; 0: none)")  # fmt: skip
    audit.add_argument("--resume", type=Path, metavar="DIR",
                       help="continue the partial audit in DIR with its own settings (any executor)")  # fmt: skip
    audit.add_argument("--export-tests", type=Path, metavar="DIR",
                       help="write each minimal reproducer as a self-contained pytest file in DIR")  # fmt: skip

    check = sub.add_parser("check", help="judge one implementation; exit 1 when it is flagged")
    check.add_argument("impl", help="built-in name, module:function or path/to/file.py:function")
    _search_options(check, OUT_ROOT / "check")
    check.add_argument("--strict", action="store_true", help="fail on 'inaccurate' results too")
    check.add_argument("--k-dimensional", action="store_true",
                       help="IMPL also takes (N, C, d1, ...) logits: run the layout regime on it")  # fmt: skip
    check.add_argument("--contiguous-only", action="store_true",
                       help="IMPL needs contiguous logits: leave out the strided regime")  # fmt: skip
    check.add_argument("--case", metavar="FILE",
                       help="grade exactly this input: a torch.save'd dict with logits and targets, "
                       "or REPORT_DIR:CASE_ID")  # fmt: skip
    check.add_argument("--export-tests", type=Path, metavar="DIR",
                       help="write each counterexample as a self-contained pytest file in DIR")  # fmt: skip
    check.add_argument("--op", choices=OPS, help="what IMPL computes (default: fn.op, else cross_entropy); "
                       "log_softmax, softmax, logsumexp take fn(logits) over the last dimension")  # fmt: skip
    check.add_argument("--options", metavar="LIST",
                       help=f"the option keywords to exercise: a comma-separated list of {', '.join(OPTION_NAMES)}, "
                       "or none, or all (default: those IMPL's signature names)")  # fmt: skip
    check.add_argument("--soft-targets", action=argparse.BooleanOptionalAction, default=None,
                       help="IMPL also takes float (N, C) probability targets (default: fn.soft_targets)")  # fmt: skip
    check.add_argument("--output-dtype", type=_dtype, metavar="D",
                       help="the dtype IMPL's output must have (default: any float dtype, graded in it)")  # fmt: skip
    grads = check.add_mutually_exclusive_group()
    grads.add_argument("--no-grad", dest="grad", action="store_false",
                       help="grade the loss only (default: the gradient too, if differentiable)")  # fmt: skip
    grads.add_argument("--grad-only", action="store_true",
                       help="grade only the gradient with respect to the logits (the backward pass)")  # fmt: skip
    check.add_argument("--save-baseline", type=Path, help="record per-(dtype, regime) statistics to FILE")
    check.add_argument("--baseline", type=Path, help="fail when worse than the statistics in FILE")

    merge = sub.add_parser("merge", help="combine shard reports of one campaign into one report")
    merge.add_argument("shards", type=Path, nargs="+", help="report folders written by audit --shard K/N")
    merge.add_argument("--out", type=Path, default=OUT_ROOT / "merged", help="folder (default harness-out/merged)")
    merge.add_argument("--quiet", action="store_true", help="do not print the summary")
    merge.add_argument("--verbose", action="store_true", help="print summary.md in full")
    merge.add_argument("--force", action="store_true", help="write to --out even if another run holds its lock")

    demo = sub.add_parser("demo", help="overflow/underflow demonstration: thresholds by search, a plot, a page")
    demo.add_argument("--out", type=Path, default=OUT_ROOT / "demo", help="folder (default harness-out/demo)")

    bench = sub.add_parser("bench", help="speed and memory ratios, measured side by side")
    bench.add_argument("--rows", type=_positive, default=8, help="rows of the batch (default 8)")
    bench.add_argument("--classes", type=_positive, default=131_072, help="classes of the batch (default 131072)")
    bench.add_argument("--repeats", type=_positive, default=3, help="timings per measurement, best kept (default 3)")
    bench.add_argument("--executors", action="store_true",
                       help="instead: one audit campaign in-process, on a pool, on local Dask")  # fmt: skip

    replay = sub.add_parser("replay", help="re-run one stored case of a report, bit for bit")
    replay.add_argument("report", type=Path, help="report folder written by audit or check")
    replay.add_argument("case_id", help="case id from the report")
    replay.add_argument("--impl", action="append", help="implementations to run (default: the report's)")
    return parser


def _sandbox(args: argparse.Namespace) -> SandboxSettings:
    return SandboxSettings(args.timeout, args.compile_timeout, args.memory_limit, args.framework,
                           args.triton_interpret, args.device).validated()  # fmt: skip


def _check_baseline_writable(path: Path) -> None:
    """UsageError, before the run, when --save-baseline could not be written at the end."""
    existed = path.exists()
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "is a folder")
        with open(path, "a"):
            pass
        if not existed:
            os.unlink(path)
    except OSError as exc:
        raise UsageError(f"cannot write the baseline to {path}: {exc.strerror or exc}") from None


def _command(argv: Sequence[str]) -> str:
    return shlex.join(["python", "-m", "harness", *argv])


def _progress(args: argparse.Namespace) -> bool | None:
    """Progress bars on a terminal (None: tqdm shows them when stderr is one), never with --quiet."""
    return False if args.quiet else None


def _print_tool_errors(errors: Sequence[str]) -> None:
    for error in errors:
        print(f"harness: TOOL ERROR: {error}", file=sys.stderr)


def _report_end(report: AuditReport, args: argparse.Namespace, what: str = "report") -> int:
    """Print an audit's headline (or, verbose, its summary), its tool errors and where it is; its exit code."""
    print(audit_text(report, verbose=args.verbose, quiet=args.quiet, what=what))
    _print_tool_errors([*report.tool_errors, *report.write_errors])
    return report.exit_code


def _export_reproducers(report: AuditReport, implementations, folder: Path) -> None:
    """Write an audit's minimal reproducers as pytest files; a file not written is a write error."""
    written, notes, errors = export_reproducers(report.out, implementations, folder)
    _print_exported(written, notes, folder)
    report.write_errors.extend(errors)


def _print_exported(written: list[Path], notes: list[str], folder: Path) -> None:
    """How many tests were written, then one line per counterexample that cannot be a test (not an error)."""
    print(f"exported {len(written)} test{'s' * (len(written) != 1)} to {folder}", file=sys.stderr)
    for note in notes:
        print(f"harness: {note}", file=sys.stderr)


# audit options that set what the campaign computes: --resume takes them from the folder
_SETTING_OPTIONS = ("impl", "dtype", "regime", "profile", "examples", "max_classes", "seed", "max_ulps", "timeout",
                    "precision", "shard", "shrink_seconds", "strict", "out", "compile_timeout", "memory_limit",
                    "framework", "triton_interpret", "device")  # fmt: skip


def _audit(args: argparse.Namespace, argv: Sequence[str]) -> int:
    where = {"executor": args.executor, "workers": args.workers, "scheduler": args.scheduler, "force": args.force}
    if args.export_tests:
        check_writable(args.export_tests)
    if args.resume:
        defaults = _parser().parse_args(["audit"])
        given = [f"--{name.replace('_', '-')}" for name in _SETTING_OPTIONS
                 if getattr(args, name) != getattr(defaults, name)]  # fmt: skip
        if given:
            raise UsageError(f"--resume takes its settings from {args.resume}/manifest.json; drop {', '.join(given)}")
        report = resume_audit(args.resume, command=_command(argv), progress=_progress(args), **where)
        if args.export_tests:
            implementations = AuditSettings.from_json(report.manifest["settings"]).load_implementations()
            _export_reproducers(report, implementations, args.export_tests)
        return _report_end(report, args)
    settings, implementations = audit_settings(
        args.impl, dtypes=args.dtype, regimes=args.regime, profile=args.profile, examples=args.examples,
        max_classes=args.max_classes, seed=args.seed, max_ulps=args.max_ulps, strict=args.strict,
        precision=args.precision, shard=args.shard, timeout=args.timeout, shrink_seconds=args.shrink_seconds,
        compile_timeout=args.compile_timeout, memory_limit_mib=args.memory_limit, framework=args.framework,
        triton_interpret=args.triton_interpret, device=args.device,
    )  # fmt: skip
    report = run_audit(settings, args.out, implementations=implementations, command=_command(argv),
                       progress=_progress(args), **where)  # fmt: skip
    if args.export_tests:
        _export_reproducers(report, implementations, args.export_tests)
    return _report_end(report, args)


def _merge(args: argparse.Namespace, argv: Sequence[str]) -> int:
    report = merge_reports(args.shards, args.out, command=_command(argv), force=args.force)
    return _report_end(report, args, what="merged report")


def _demo(args: argparse.Namespace) -> int:
    check_writable(args.out)
    thresholds = [find_thresholds(fmt) for fmt in FORMATS.values()]
    scales = [2.0 ** (k / 4) for k in range(-4, 45)]
    computed = {fmt.name: panels(fmt, scales) for fmt in FORMATS.values()}
    figures = {story: story_png(story, computed) for story in STORIES}
    markdown, page = render_demo(thresholds, dominant_case(), figures)
    files = {STORIES[story]["file"]: (lambda data=data: data) for story, data in figures.items()}
    errors = write_files(args.out, {**files, "demo.md": lambda: markdown, "demo.html": lambda: page})
    print(demo_text(markdown))
    _print_tool_errors(errors)
    print(f"demo: {args.out / 'demo.html'}{' (incomplete)' if errors else ''}")
    return EXIT_TOOL_ERROR if errors else EXIT_OK


def _export(result, impl, folder: Path | None, max_ulps: float) -> list[str]:
    """Write check's counterexamples as pytest files in ``folder``; one line per file not written."""
    if folder is None:
        return []
    items = [(cx.case, cx.record, impl) for cx in result.counterexamples]
    written, notes, errors = export_tests(folder, items, max_ulps=max_ulps)
    _print_exported(written, notes, folder)
    return errors


def _check_case(args: argparse.Namespace, argv: Sequence[str], impl, sandbox: SandboxSettings) -> int:
    """check --case: grade exactly the given input, with check's verdicts, output and exit codes."""
    options = (("--dtype", args.dtype), ("--regime", args.regime), ("--profile", args.profile),
               ("--examples", args.examples), ("--max-classes", args.max_classes), ("--seed", args.seed),
               ("--baseline", args.baseline), ("--save-baseline", args.save_baseline))  # fmt: skip
    conflicting = [flag for flag, value in options if value]
    if conflicting:
        raise UsageError(f"--case grades one given input: it cannot be combined with {', '.join(conflicting)}")
    check_writable(args.out)
    if args.export_tests:
        check_writable(args.export_tests)
    try:
        result = check(impl, case=args.case, max_ulps=args.max_ulps, strict=args.strict, device=args.device,
                       timeout=args.timeout, compile_timeout=args.compile_timeout, memory_limit_mib=args.memory_limit,
                       framework=args.framework, triton_interpret=args.triton_interpret, grad=args.grad,
                       grad_only=args.grad_only)  # fmt: skip
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    case = next(iter(result.search.cases.values()))
    manifest_run = {
        "implementation": impl.name, "case": args.case, "case_id": case.case_id, "seed": "none (one given case)",
        "dtypes": [case.format.name],
        "regimes": [case.regime], "strict": args.strict, "max_ulps": args.max_ulps, **dataclasses.asdict(sandbox),
        "quantities": _quantities(args), "implementations": _manifest_entries(impl),
    }  # fmt: skip
    write_errors = write_check_folder(result, args.out, command=_command(argv), run=manifest_run)
    print(check_text(result, args.out, verbose=args.verbose, quiet=args.quiet))
    write_errors += _export(result, impl, args.export_tests, args.max_ulps)
    _print_tool_errors([*result.errors, *write_errors])
    if write_errors:
        print(f"harness: the report in {args.out} is partial", file=sys.stderr)
    if write_errors or result.errors:
        return EXIT_TOOL_ERROR
    return EXIT_OK if result.passed else EXIT_FLAGGED


def _quantities(args: argparse.Namespace) -> list[str]:
    """What a check graded, for its manifest (replay re-runs the backward where it includes grad)."""
    return ["grad"] if args.grad_only else ["loss", "grad"] if args.grad else ["loss"]


def _manifest_entries(impl) -> list[dict]:
    """The manifest's implementations of a check: IMPL with its contract (replay needs it), and its reference."""
    reference = reference_for(impl.op, impl.options, impl.soft_targets)
    dtype = None if impl.output_dtype is None else str(impl.output_dtype).removeprefix("torch.")
    mine = {"name": impl.name, "source": impl.source, "op": impl.op, "options": sorted(impl.options),
            "soft_targets": impl.soft_targets, "output_dtype": dtype}  # fmt: skip
    return [mine, {"name": reference.name, "source": "built-in"}]


def _check(args: argparse.Namespace, argv: Sequence[str]) -> int:
    try:
        profile = resolve_profile(args.profile)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    formats = args.dtype or list(FORMATS.values())
    examples, max_classes = args.examples or profile.examples, args.max_classes or profile.max_classes
    sandbox = _sandbox(args)
    try:
        impl = load_implementation(args.impl, sandbox.worker_options)
    except LoadError as exc:
        raise UsageError(str(exc)) from None
    if args.k_dimensional:
        impl = dataclasses.replace(impl, k_dimensional=True)
    if args.contiguous_only:
        impl = dataclasses.replace(impl, contiguous_only=True)
    try:
        impl = with_contract_settings(impl, op=args.op, options=args.options, soft_targets=args.soft_targets,
                                      output_dtype=args.output_dtype and args.output_dtype.name)  # fmt: skip
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        check_gradient_request(impl, tuple(_quantities(args)))
    except ValueError as exc:
        raise UsageError(str(exc).replace("grad_only", "--grad-only")) from None
    if args.case:
        return _check_case(args, argv, impl, sandbox)
    regimes = audit_settings([impl], dtypes=formats, regimes=args.regime, max_classes=max_classes,
                             profile=profile.name)[0].regimes  # fmt: skip
    saved = None
    if args.baseline:
        try:
            saved = baselines.load(args.baseline)
        except baselines.BaselineError as exc:
            raise UsageError(str(exc)) from None
    if args.save_baseline:
        _check_baseline_writable(args.save_baseline)
    check_writable(args.out)
    if args.export_tests:
        check_writable(args.export_tests)
    result = check(
        impl, dtypes=formats, regimes=regimes, examples=examples, seed=args.seed, max_ulps=args.max_ulps,
        strict=args.strict, profile=profile.name, max_classes=max_classes, device=args.device, timeout=args.timeout,
        compile_timeout=args.compile_timeout, memory_limit_mib=args.memory_limit, framework=args.framework,
        triton_interpret=args.triton_interpret, progress=_progress(args), grad=args.grad, grad_only=args.grad_only,
    )  # fmt: skip
    if not result.graded and not result.search.interrupted:
        result.errors.append("no case was graded: nothing to judge the implementation on")
    run = {
        "implementation": impl.name, "seed": args.seed, "examples": examples, "max_classes": max_classes,
        "profile": profile.name,
    }  # fmt: skip
    manifest_run = {
        **run, "dtypes": [f.name for f in formats], "regimes": list(regimes), "strict": args.strict,
        "max_ulps": args.max_ulps, **dataclasses.asdict(sandbox), "quantities": _quantities(args),
        "implementations": _manifest_entries(impl),
    }  # fmt: skip
    write_errors = write_check_folder(result, args.out, command=_command(argv), run=manifest_run)
    if result.search.interrupted:
        print(check_text(result, args.out, quiet=True))
        print(f"harness: interrupted; partial report written to {args.out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    comparison = None
    if saved is not None:
        try:
            comparison = baselines.compare(saved, result.records, run)
        except baselines.BaselineError as exc:
            raise UsageError(str(exc)) from None
    if args.save_baseline:
        baselines.save(args.save_baseline, result.records, run)
    print(check_text(result, args.out, verbose=args.verbose, quiet=args.quiet, baseline=comparison,
                     baseline_file=args.baseline, saved_baseline=args.save_baseline))  # fmt: skip
    write_errors += _export(result, impl, args.export_tests, args.max_ulps)
    _print_tool_errors([*result.errors, *write_errors])
    if write_errors:
        print(f"harness: the report in {args.out} is partial", file=sys.stderr)
    if write_errors or result.errors:
        return EXIT_TOOL_ERROR
    regressed = comparison is not None and bool(comparison["regressed"].any())
    return EXIT_OK if result.passed and not regressed else EXIT_FLAGGED


def _replay(args: argparse.Namespace) -> int:
    try:
        text = replay_case(args.report, args.case_id, args.impl)
    except (FileNotFoundError, ValueError, KeyError, LoadError) as exc:
        raise UsageError(str(exc).strip("'\"")) from None
    print(text)
    return EXIT_OK


def _sigterm_as_interrupt() -> None:
    """For commands that write no partial report (demo, bench, replay): SIGTERM and Ctrl-C raise
    KeyboardInterrupt (exit 130), and also set harness.interrupts' flag, so one swallowed where
    Python ignores exceptions (a garbage-collector callback) stops the next search case."""

    def handler(signum, frame):
        interrupts.request(signal.Signals(signum).name)
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread (main() called from a worker): leave it
        signal.signal(signal.SIGTERM, handler)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler or interrupts.caught_early():
            signal.signal(signal.SIGINT, handler)
    if interrupts.requested():  # a signal before the handlers (python -m harness caught it early)
        raise KeyboardInterrupt(interrupts.reason())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] in (["audit"], ["check"], ["merge"]):
            # Ctrl-C and SIGTERM request a stop that the run sees between cases, and it
            # writes its partial report; a second signal, or 30 s more, exits at once
            with interrupts.handling(grace=STOP_GRACE_CLI, announce=True, repeat="exit"):
                return _run(argv)
        _sigterm_as_interrupt()
        return _run(argv)
    except (UsageError, SettingsError) as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, interrupts.Interrupted) as exc:
        print(f"harness: interrupted{': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the tool's own bug: one line (exit 3), the traceback on request
        if os.environ.get("HARNESS_DEBUG"):
            raise
        first = (str(exc).splitlines() or [""])[0]
        print(f"harness: TOOL ERROR: {type(exc).__name__}: {first} (HARNESS_DEBUG=1 shows the traceback)",
              file=sys.stderr)  # fmt: skip
        return EXIT_TOOL_ERROR
    finally:
        interrupts.clear()


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "audit":
        return _audit(args, argv)
    if args.command == "check":
        return _check(args, argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "merge":
        return _merge(args, argv)
    if args.command == "bench":
        if args.executors:
            from harness.campaign.speed import executor_speedups

            print(executor_speedups(repeats=args.repeats))
        else:
            print(run_bench(args.rows, args.classes, args.repeats))
        return EXIT_OK
    return _replay(args)
