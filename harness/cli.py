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
import concurrent.futures
import contextlib
import dataclasses
import io
import multiprocessing
import platform
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import hypothesis
import mpmath
import pandas as pd
import torch

from harness import baseline as baselines
from harness.api import check, check_device
from harness.bench import run_bench
from harness.calling.caller import DEFAULT_TIMEOUT, Caller
from harness.calling.implementations import PRECISION
from harness.calling.loading import LoadError, load_implementation
from harness.calling.registry import REGISTRY, Implementation
from harness.demo import dominant_case, find_thresholds, loss_curves
from harness.formats import FORMATS, Format, parse_dtype
from harness.grading.verdicts import Policy
from harness.profiles import PROFILES, resolve_profile
from harness.replay import replay_case
from harness.runner import RECORD_COLUMNS
from harness.search import search
from harness.shrinking import Reproducers, shrink_failures
from reports.demo import curves_png, render_demo
from reports.markdown import render_summary
from reports.precision import precision_markdown, precision_table
from reports.stats import headline, summarize, worst_cases
from reports.store import (
    load_cases,
    load_manifest,
    load_records,
    load_reproducers,
    write_checkpoint,
    write_files,
    write_report,
)
from strategies import REGIMES

__all__ = ["main"]

EXIT_OK, EXIT_FLAGGED, EXIT_USAGE, EXIT_TOOL_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_AUDIT_SHRINK_SECONDS = 30.0  # shrinking after an audit, over all its failures
OUT_ROOT = Path("harness-out")


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


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text}")
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
    parser.add_argument("--max-classes", type=_positive, help="largest class count (default: the profile's)")
    parser.add_argument("--seed", type=int, default=0, help="seed for case generation (default 0)")
    parser.add_argument("--max-ulps", type=_non_negative_float, default=4.0,
                        help="ULPs beyond which a stable result is 'inaccurate' (default 4)")  # fmt: skip
    parser.add_argument("--timeout", type=_positive_float, default=DEFAULT_TIMEOUT,
                        help=f"seconds one call may take (default {DEFAULT_TIMEOUT:g})")  # fmt: skip
    parser.add_argument("--out", type=Path, default=out, help=f"report folder (default {out})")
    parser.add_argument("--quiet", action="store_true", help="print only the verdict line")


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
    audit.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="spread the (dtype, regime) cells over a pool of this many processes, then merge (default 1)",
    )
    audit.add_argument("--shrink-seconds", type=_non_negative_float, default=DEFAULT_AUDIT_SHRINK_SECONDS,
                       metavar="SECONDS", help="time for shrinking minimal reproducers of the failures "
                       f"after the run (default {DEFAULT_AUDIT_SHRINK_SECONDS:g}; 0: none)")  # fmt: skip
    audit.add_argument("--resume", type=Path, metavar="DIR",
                       help="continue the partial audit in DIR with its own settings")  # fmt: skip

    check = sub.add_parser("check", help="judge one implementation; exit 1 when it is flagged")
    check.add_argument("impl", help="built-in name, module:function or path/to/file.py:function")
    _search_options(check, OUT_ROOT / "check")
    check.add_argument("--strict", action="store_true", help="fail on 'inaccurate' results too")
    check.add_argument("--device", default="cpu", help="where the implementation runs (default cpu)")
    check.add_argument("--k-dimensional", action="store_true",
                       help="IMPL also takes (N, C, d1, ...) logits: run the layout regime on it")  # fmt: skip
    check.add_argument("--save-baseline", type=Path, help="record per-(dtype, regime) statistics to FILE")
    check.add_argument("--baseline", type=Path, help="fail when worse than the statistics in FILE")

    merge = sub.add_parser("merge", help="combine shard reports of one campaign into one report")
    merge.add_argument("shards", type=Path, nargs="+", help="report folders written by audit --shard K/N")
    merge.add_argument("--out", type=Path, default=OUT_ROOT / "merged", help="folder (default harness-out/merged)")
    merge.add_argument("--quiet", action="store_true", help="do not print the summary")

    demo = sub.add_parser("demo", help="overflow/underflow demonstration: thresholds by search, a plot, a page")
    demo.add_argument("--out", type=Path, default=OUT_ROOT / "demo", help="folder (default harness-out/demo)")

    bench = sub.add_parser("bench", help="speed and memory ratios, measured side by side")
    bench.add_argument("--rows", type=_positive, default=8, help="rows of the batch (default 8)")
    bench.add_argument("--classes", type=_positive, default=131_072, help="classes of the batch (default 131072)")
    bench.add_argument("--repeats", type=_positive, default=3, help="timings per measurement, best kept (default 3)")

    replay = sub.add_parser("replay", help="re-run one stored case of a report, bit for bit")
    replay.add_argument("report", type=Path, help="report folder written by audit or check")
    replay.add_argument("case_id", help="case id from the report")
    replay.add_argument("--impl", action="append", help="implementations to run (default: the report's)")
    return parser


def _versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "hypothesis": hypothesis.__version__,
        "mpmath": mpmath.__version__,
        "mpmath_backend": mpmath.libmp.BACKEND,
        "pandas": pd.__version__,
    }


def _implementations(specs: Sequence[str] | None, default=REGISTRY) -> list[Implementation]:
    if not specs:
        return list(default)
    try:
        return [load_implementation(spec) for spec in specs]
    except LoadError as exc:
        raise UsageError(str(exc)) from None


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to {out}: {exc.strerror or exc}") from None


def _settings(args: argparse.Namespace) -> dict:
    profile = resolve_profile(args.profile)
    return {
        "formats": args.dtype or list(FORMATS.values()),
        "profile": profile,
        "examples": args.examples or profile.examples,
        "max_classes": args.max_classes or profile.max_classes,
    }


def _regimes(args: argparse.Namespace, max_classes: int, implementations: Sequence[Implementation]) -> list[str]:
    """The requested regimes, or all that fit; layout only when some implementation takes it."""
    takes_layout = any(impl.k_dimensional for impl in implementations)
    if args.regime:
        if "layout" in args.regime and not takes_layout:
            raise UsageError(
                "regime 'layout' needs an implementation that takes (N, C, d1, ...) logits "
                "(declare it with fn.k_dimensional = True, or check --k-dimensional)"
            )
        return args.regime
    return [r for r in REGIMES if (r != "large_vocab" or max_classes >= 1024) and (r != "layout" or takes_layout)]


def _write(
    args,
    argv,
    records: pd.DataFrame,
    stored_ids: set[str],
    found,
    settings: dict,
    status: str,
    reproducers: Reproducers | None = None,
    checkpoint: bool = False,
    extra: dict | None = None,
) -> list[str]:
    """Write the report folder; a checkpoint writes only what --resume needs (records, cases, manifest).

    Returns one line per report file that could not be written (the manifest then says partial).
    """
    summary = None if checkpoint else summarize(records)
    worst = set(worst_cases(records)["case_id"]) if checkpoint else set(summary["worst_case"])
    keep = stored_ids | worst | set(records.loc[records["outcome"].ne("exact"), "case_id"])
    manifest = {
        "command": shlex.join(["python", "-m", "harness", *argv]),
        "seed": args.seed,
        "status": status,
        "cases": int(records["case_id"].nunique()),
        "completed_cells": found.completed_cells,
        "records": len(records),
        "seconds": found.seconds,
        "oracle_seconds": float(records.drop_duplicates("case_id")["oracle_seconds"].sum()),
        "oracle_methods": records.drop_duplicates("case_id")["oracle_method"].value_counts().to_dict(),
        "tool_errors": found.errors,
        "oracle_self_checked": found.self_checked,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
        **settings,
    }
    table = reproducers.table if reproducers is not None else None
    kept = {i: c for i, c in found.cases.items() if i in keep}
    if reproducers is not None:
        kept.update(reproducers.cases)
    stored = list(kept.values())
    if checkpoint:
        return write_checkpoint(args.out, records, stored, manifest)
    markdown = render_summary(headline(records), summary, manifest, table, str(args.out))
    return write_report(args.out, records, summary, markdown, stored, manifest, with_html=status == "complete",
                        reproducers=table, extra=extra)  # fmt: skip


def _resume(args: argparse.Namespace) -> tuple[argparse.Namespace, dict, dict]:
    """Settings, finished cells' records and stored cases of the audit in args.resume.

    Finished (dtype, regime) cells are kept as they are; the cell that was interrupted
    runs again from its start, so the resumed report equals an uninterrupted one.
    """

    try:
        manifest = load_manifest(args.resume)
        records = load_records(args.resume)
        stored = load_cases(args.resume)
        args.seed, args.examples, args.max_classes = manifest["seed"], manifest["examples"], manifest["max_classes"]
        args.profile, args.regime = manifest["profile"], manifest["regimes"]
        args.dtype = [parse_dtype(name) for name in manifest["dtypes"]]
        args.impl = [i["name"] if i["source"] == "built-in" else i["source"] for i in manifest["implementations"]]
        completed = {tuple(cell) for cell in manifest["completed_cells"]}
    except (FileNotFoundError, KeyError, ValueError, TypeError) as exc:
        raise UsageError(f"cannot resume from {args.resume}: {exc}") from None
    args.out = args.resume
    records["output_bits"] = records["output_bits"].astype(object).fillna("")
    records["message"] = records["message"].astype(object).fillna("")
    finished: dict[tuple[str, str], list[dict]] = {}
    for record in records.to_dict(orient="records"):
        cell = (record["dtype"], record["regime"])
        if cell in completed:
            finished.setdefault(cell, []).append(record)
    return args, finished, stored


def _audit(args: argparse.Namespace, argv: Sequence[str]) -> int:

    finished, stored = {}, {}
    if args.resume:
        args, finished, stored = _resume(args)
    if args.precision and not args.dtype:
        args.dtype = [FORMATS["float16"], FORMATS["bfloat16"]]
    settings = _settings(args)
    implementations = _implementations(args.impl, PRECISION if args.precision else REGISTRY)
    regimes = _regimes(args, settings["max_classes"], implementations)
    _check_writable(args.out)
    if args.workers > 1:
        return _audit_with_workers(args, argv, settings, regimes, implementations)
    extra = {
        "shard": list(args.shard),
        "precision": args.precision,
        "dtypes": [f.name for f in settings["formats"]], "regimes": regimes, "profile": settings["profile"].name,
        "examples": settings["examples"], "max_classes": settings["max_classes"], "timeout": args.timeout,
        "implementations": [{"name": i.name, "source": i.source} for i in implementations],
        "resumed_cells": len(finished),
    }  # fmt: skip

    def frame(found) -> pd.DataFrame:
        return pd.DataFrame(found.records, columns=list(RECORD_COLUMNS))

    def checkpoint(found) -> None:
        for error in _write(args, argv, frame(found), set(), found, extra, status="partial", checkpoint=True):
            if error not in found.errors:  # a file that cannot be written fails at every checkpoint
                found.errors.append(error)

    found = search(
        settings["formats"], regimes, implementations, profile=settings["profile"], seed=args.seed,
        examples=settings["examples"], max_classes=settings["max_classes"], policy=Policy(max_ulps=args.max_ulps),
        caller=Caller(timeout=args.timeout), finished=finished, finished_cases=stored, on_cell=checkpoint,
        shard=args.shard,
    )  # fmt: skip
    records = frame(found)
    reproducers = None
    if not found.interrupted and args.shrink_seconds > 0:
        checkpoint(found)  # nothing lost if shrinking is cut short
        reproducers = shrink_failures(
            records, implementations, profile=settings["profile"], seed=args.seed, examples=settings["examples"],
            max_classes=settings["max_classes"], policy=Policy(max_ulps=args.max_ulps),
            caller=Caller(timeout=args.timeout), seconds=args.shrink_seconds,
        )  # fmt: skip
        found.interrupted = reproducers.interrupted
    status = "partial" if found.interrupted else "complete"
    extra["shrink_seconds"] = args.shrink_seconds
    files = {}
    if args.precision and len(records):
        files = {"precision.csv": lambda: precision_table(records).to_csv(index=False),
                 "precision.md": lambda: precision_markdown(records, str(args.out))}  # fmt: skip
    write_errors = _write(args, argv, records, set(), found, extra, status=status, reproducers=reproducers,
                          extra=files)  # fmt: skip
    if not args.quiet and (args.out / "summary.md").is_file():
        print((args.out / "summary.md").read_text())
    if args.precision and (args.out / "precision.md").is_file():
        print((args.out / "precision.md").read_text())
    return _finish(args.out, found.errors, write_errors, found.interrupted)


def _finish(out: Path, errors: Sequence[str], write_errors: Sequence[str], interrupted: bool) -> int:
    """Print the tool errors and where the report is; the exit code of a run that wrote a report."""
    for error in [*errors, *write_errors]:
        print(f"harness: TOOL ERROR: {error}", file=sys.stderr)
    print(f"report written to {out}{' (partial)' if interrupted or write_errors else ''}", file=sys.stderr)
    if write_errors:
        return EXIT_TOOL_ERROR
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_TOOL_ERROR if errors else EXIT_OK


def _audit_cell(argv: list[str]) -> int:
    """One pool task: a one-cell audit (``--shard i/M``) in this worker process, output silenced."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(argv)


def _cell_cost(cell: tuple[str, str]) -> int:
    """A rough rank of a cell's cost, so the pool starts the slowest cells first."""
    dtype, regime = cell
    return (regime == "large_vocab") * 2 + (dtype == "float64")


def _audit_with_workers(args, argv, settings: dict, regimes: list[str], implementations) -> int:
    """Spread the audit's (dtype, regime) cells over a pool of N processes, then merge them into --out.

    Each cell is one task, handed to whichever process is free, costliest first, so one slow
    cell (float64 at vocabulary sizes) holds up one process, not a fixed shard of cells.
    Minimal reproducers are shrunk once, after the merge, as in a single run.
    """
    if args.resume:
        raise UsageError("--workers cannot resume a run; resume it without --workers")
    cells = [(f.name, r) for f in settings["formats"] for r in regimes]
    mine = list(range(len(cells)))[args.shard[0] - 1 :: args.shard[1]]  # this shard's cells, if sharded
    rest = [a for a in argv if a != "--quiet"]
    for option in ("--workers", "--out", "--shard", "--shrink-seconds"):
        rest = _without_option(rest, option)
    folders = {i: args.out / "cells" / f"{i + 1}-of-{len(cells)}" for i in mine}
    tasks = sorted(mine, key=lambda i: -_cell_cost(cells[i]))
    codes: list[int] = []
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch's threads
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=args.workers, mp_context=context)
    try:
        common = [*rest, "--quiet", "--shrink-seconds", "0"]
        futures = [
            pool.submit(_audit_cell, [*common, "--shard", f"{i + 1}/{len(cells)}", "--out", str(folders[i])])
            for i in tasks
        ]
        codes = [future.result() for future in futures]
    except KeyboardInterrupt:
        codes = [EXIT_INTERRUPTED]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a running cell finishes or writes its partial report
    finished = [folders[i] for i in mine if (folders[i] / "manifest.json").is_file()]
    if not finished:
        print("harness: interrupted before any cell finished; nothing to merge", file=sys.stderr)
        return EXIT_INTERRUPTED

    def shrink(records: pd.DataFrame) -> Reproducers | None:
        if args.shrink_seconds <= 0 or EXIT_INTERRUPTED in codes:
            return None
        return shrink_failures(
            records, implementations, profile=settings["profile"], seed=args.seed, examples=settings["examples"],
            max_classes=settings["max_classes"], policy=Policy(max_ulps=args.max_ulps),
            caller=Caller(timeout=args.timeout), seconds=args.shrink_seconds,
        )  # fmt: skip

    merged = _merge_reports(
        finished, args.out, args.quiet, cells=[cells[i] for i in mine], shrink=shrink, shard=args.shard
    )
    return max([merged, *codes], key=lambda code: (code != 0, code))


def _without_option(argv: Sequence[str], name: str) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == name:
            skip = True
        elif not item.startswith(name + "="):
            out.append(item)
    return out


_SAME_IN_EVERY_SHARD = ("seed", "examples", "max_classes", "profile", "dtypes", "regimes", "implementations",
                        "precision")  # fmt: skip


def _merge_reports(
    folders: Sequence[Path],
    out: Path,
    quiet: bool,
    cells: Sequence[tuple[str, str]] | None = None,
    shrink: Callable[[pd.DataFrame], Reproducers | None] | None = None,
    shard: tuple[int, int] | None = None,
) -> int:
    """Concatenate shard records in the single run's cell order, dropping repeated cases.

    ``cells``: the (dtype, regime) cells the merge must cover to be complete (default all
    of the campaign's). ``shrink``: computes the reproducers from the merged records
    (--workers); by default the shards' own reproducers are combined. ``shard``: the
    campaign shard the merged folder stands for (--workers with --shard).
    """
    try:
        manifests = [load_manifest(f) for f in folders]
        records = [load_records(f) for f in folders]
        stored: dict = {}
        for folder in folders:
            stored.update(load_cases(folder))
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"cannot merge: {exc}") from None
    first = manifests[0]
    for folder, manifest in zip(folders, manifests):
        differing = [k for k in _SAME_IN_EVERY_SHARD if manifest.get(k) != first.get(k)]
        if differing:
            raise UsageError(f"cannot merge {folder}: its {', '.join(differing)} differ from {folders[0]}'s")
    order = {(d, r): i for i, (d, r) in enumerate((d, r) for d in first["dtypes"] for r in first["regimes"])}
    combined = pd.concat(records, ignore_index=True)
    combined["cell"] = [order.get((d, r), len(order)) for d, r in zip(combined["dtype"], combined["regime"])]
    combined = combined.sort_values("cell", kind="stable").drop(columns="cell")
    # a case drawn in two cells is kept where a single run keeps it: its first cell
    first_cell = combined.drop_duplicates("case_id")[["case_id", "dtype", "regime"]]
    combined = combined.merge(first_cell, on=["case_id", "dtype", "regime"]).reset_index(drop=True)
    combined["output_bits"] = combined["output_bits"].astype(object).fillna("")
    combined["message"] = combined["message"].astype(object).fillna("")
    covered = sorted({tuple(c) for m in manifests for c in m.get("completed_cells", [])}, key=order.get)
    expected = set(order) if cells is None else {tuple(c) for c in cells}
    complete = all(m["status"] == "complete" for m in manifests) and expected <= set(covered)
    summary = summarize(combined)
    keep = set(summary["worst_case"]) | set(combined.loc[combined["outcome"].ne("exact"), "case_id"])
    manifest = {
        **{k: first.get(k) for k in _SAME_IN_EVERY_SHARD},
        "command": " ".join(m["command"] for m in manifests),
        "merged_from": [str(f) for f in folders],
        "status": "complete" if complete else "partial",
        "completed_cells": covered,
        "cases": int(combined["case_id"].nunique()),
        "records": len(combined),
        "seconds": sum(m["seconds"] for m in manifests),
        "oracle_seconds": sum(m["oracle_seconds"] for m in manifests),
        "tool_errors": [e for m in manifests for e in m.get("tool_errors", [])],
        "oracle_self_checked": sum(m.get("oracle_self_checked", 0) for m in manifests),
        "versions": first.get("versions", {}),
        **({"shard": list(shard)} if shard else {}),
    }
    if shrink is None:
        reproducers = _merged_reproducers([load_reproducers(f) for f in folders])
    else:
        shrunk = shrink(combined)
        reproducers = None
        if shrunk is not None:
            reproducers = shrunk.table
            stored.update(shrunk.cases)
    if reproducers is not None:
        keep |= set(reproducers["reproducer"].dropna())
    markdown = render_summary(headline(combined), summary, manifest, reproducers, str(out))
    _check_writable(out)
    write_errors = write_report(out, combined, summary, markdown, [c for i, c in stored.items() if i in keep],
                                manifest, reproducers=reproducers)  # fmt: skip
    if not quiet:
        print(markdown)
    return _finish(out, manifest["tool_errors"], write_errors, interrupted=not complete)


def _merged_reproducers(tables: list[pd.DataFrame | None]) -> pd.DataFrame | None:
    """The shards' reproducers in a single run's order: each (impl, dtype)'s worst first."""
    present = [t for t in tables if t is not None]
    if not present:
        return None
    ranked = pd.concat(present, ignore_index=True).sort_values("worst_allowance_ratio", ascending=False, kind="stable")
    ranked["_first"] = ~ranked.duplicated(["impl", "dtype"])
    ordered = ranked.sort_values(["_first", "worst_allowance_ratio"], ascending=[False, False], kind="stable")
    return ordered.drop(columns="_first").reset_index(drop=True)


def _demo(args: argparse.Namespace) -> int:
    _check_writable(args.out)
    thresholds = [find_thresholds(fmt) for fmt in FORMATS.values()]
    scales = [2.0 ** (k / 4) for k in range(-4, 45)]
    curves = {fmt.name: loss_curves(fmt, scales) for fmt in FORMATS.values()}
    plot = curves_png(curves, {t.dtype: t.theory_overflow for t in thresholds})
    markdown, page = render_demo(thresholds, dominant_case(), plot)
    errors = write_files(args.out, {"demo.png": lambda: plot, "demo.md": lambda: markdown, "demo.html": lambda: page})
    print(markdown)
    for error in errors:
        print(f"harness: TOOL ERROR: {error}", file=sys.stderr)
    print(f"demo written to {args.out}{' (incomplete)' if errors else ''}", file=sys.stderr)
    return EXIT_TOOL_ERROR if errors else EXIT_OK


def _check(args: argparse.Namespace, argv: Sequence[str]) -> int:

    settings = _settings(args)
    try:
        impl = load_implementation(args.impl)
    except LoadError as exc:
        raise UsageError(str(exc)) from None
    if args.k_dimensional:
        impl = dataclasses.replace(impl, k_dimensional=True)
    regimes = _regimes(args, settings["max_classes"], [impl])
    saved = None
    if args.baseline:
        try:
            saved = baselines.load(args.baseline)
        except baselines.BaselineError as exc:
            raise UsageError(str(exc)) from None
    _check_writable(args.out)
    try:
        check_device(args.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    result = check(
        impl, dtypes=settings["formats"], regimes=regimes, examples=settings["examples"], seed=args.seed,
        max_ulps=args.max_ulps, strict=args.strict, profile=settings["profile"].name,
        max_classes=settings["max_classes"], device=args.device, timeout=args.timeout,
    )  # fmt: skip
    run = {
        "implementation": impl.name, "seed": args.seed, "examples": settings["examples"],
        "max_classes": settings["max_classes"], "profile": settings["profile"].name,
    }  # fmt: skip
    records = pd.concat([result.records, result.reference], ignore_index=True)
    extra = {
        **run, "dtypes": [f.name for f in settings["formats"]], "regimes": regimes, "passed": result.passed,
        "implementations": [{"name": impl.name, "source": impl.source}, {"name": "torch", "source": "built-in"}],
        "counts": result.counts, "strict": args.strict, "max_ulps": args.max_ulps,
    }  # fmt: skip
    counterexample_ids = {cx.case.case_id for cx in result.counterexamples}
    interrupted = result.search.interrupted
    write_errors = _write(args, argv, records, counterexample_ids, result.search, extra,
                          "partial" if interrupted else "complete")  # fmt: skip
    if interrupted:
        print(result.describe(replay_dir=str(args.out)))
        print(f"harness: interrupted; partial report written to {args.out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    regressed = False
    lines = [result.describe(replay_dir=str(args.out))]
    if not args.quiet:
        lines.append("\nPer regime, against torch (worst error / allowance; unstable counts as inf):")
        lines.append(result.versus_reference().to_string(index=False))
    if saved is not None:
        try:
            comparison = baselines.compare(saved, result.records, run)
        except baselines.BaselineError as exc:
            raise UsageError(str(exc)) from None
        worse = comparison[comparison["regressed"]]
        regressed = not worse.empty
        lines.append(f"\nBaseline {args.baseline}: {len(worse)} of {len(comparison)} cells regressed")
        if regressed:
            lines.append(worse[["dtype", "regime", "max_ulps_baseline", "max_ulps", "nonfinite_baseline",
                                "nonfinite"]].to_string(index=False))  # fmt: skip
    if args.save_baseline:
        baselines.save(args.save_baseline, result.records, run)
        lines.append(f"baseline saved to {args.save_baseline}")
    print("\n".join(lines))
    code = _finish(args.out, result.errors, write_errors, interrupted=False)
    if code != EXIT_OK:
        return code
    return EXIT_OK if result.passed and not regressed else EXIT_FLAGGED


def _replay(args: argparse.Namespace) -> int:

    try:
        text = replay_case(args.report, args.case_id, args.impl)
    except (FileNotFoundError, ValueError, KeyError, LoadError) as exc:
        raise UsageError(str(exc).strip("'\"")) from None
    print(text)
    return EXIT_OK


def _sigterm_as_interrupt() -> None:
    """SIGTERM stops a run the way Ctrl-C does: finished work is written, marked partial."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread (main() called from a worker): leave it
        signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _sigterm_as_interrupt()
    try:
        args = _parser().parse_args(argv)
        if args.command == "audit":
            return _audit(args, argv)
        if args.command == "check":
            return _check(args, argv)
        if args.command == "demo":
            return _demo(args)
        if args.command == "merge":
            return _merge_reports(args.shards, args.out, args.quiet)
        if args.command == "bench":
            print(run_bench(args.rows, args.classes, args.repeats))
            return EXIT_OK
        return _replay(args)
    except UsageError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
