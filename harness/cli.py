"""Command line: ``python -m harness {audit,replay} ...`` (also the ``ce-harness`` script).

Exit codes (README "When things go wrong"):
  0  success (audit written; replay shown)
  1  findings (reserved for check: an implementation was flagged)
  2  usage or input error: bad option, unknown dtype/regime/implementation, unreadable report
  3  the tool's own error (an oracle self-check disagreed)
  130 interrupted (Ctrl-C/SIGTERM); whatever was finished is written, marked partial
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import hypothesis
import mpmath
import pandas as pd
import torch

from harness.formats import FORMATS, Format, parse_dtype
from harness.loading import LoadError, load_implementation
from harness.registry import REGISTRY, Implementation
from strategies import REGIMES

__all__ = ["main"]

EXIT_OK, EXIT_FLAGGED, EXIT_USAGE, EXIT_TOOL_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_OUT = Path("harness-out") / "audit"


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


def _dtype(text: str) -> Format:
    try:
        return parse_dtype(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _regime(text: str) -> str:
    if text not in REGIMES:
        raise argparse.ArgumentTypeError(f"unknown regime {text!r}; expected one of {', '.join(REGIMES)}")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m harness", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    audit = sub.add_parser("audit", help="run implementations over the strategies and write a report")
    audit.add_argument("--examples", type=_positive, default=20, help="cases per (dtype, regime) cell (default 20)")
    audit.add_argument("--seed", type=int, default=0, help="seed for case generation (default 0)")
    audit.add_argument("--dtype", type=_dtype, action="append", help="dtype to audit (repeatable; default all four)")
    audit.add_argument("--regime", type=_regime, action="append", help="regime to draw (repeatable; default all)")
    audit.add_argument(
        "--impl", action="append", help="built-in name, module:function or file.py:function (repeatable)"
    )
    audit.add_argument("--max-classes", type=_positive, default=32_768, help="largest class count (default 32768)")
    audit.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT})")
    audit.add_argument("--quiet", action="store_true", help="do not print the summary")

    replay = sub.add_parser("replay", help="re-run one stored case of a report, bit for bit")
    replay.add_argument("report", type=Path, help="report folder written by audit")
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


def _implementations(specs: Sequence[str] | None) -> list[Implementation]:
    if not specs:
        return list(REGISTRY)
    try:
        return [load_implementation(spec) for spec in specs]
    except LoadError as exc:
        raise UsageError(str(exc)) from None


def _command_line(argv: Sequence[str]) -> str:
    return shlex.join(["python", "-m", "harness", *argv])


def _audit(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from harness.audit import run_audit
    from reports.markdown import render_summary
    from reports.stats import headline, summarize
    from reports.store import write_report

    formats = args.dtype or list(FORMATS.values())
    regimes = args.regime or [r for r in REGIMES if r != "large_vocab" or args.max_classes >= 1024]
    implementations = _implementations(args.impl)
    _check_writable(args.out)
    result = run_audit(
        formats, regimes, implementations, examples=args.examples, seed=args.seed, max_classes=args.max_classes
    )
    from harness.runner import RECORD_COLUMNS

    records = pd.DataFrame(result.records, columns=list(RECORD_COLUMNS))
    summary = summarize(records)
    failing = set(records.loc[records["outcome"].ne("exact"), "case_id"])
    stored = [c for cid, c in result.cases.items() if cid in failing or cid in set(summary["worst_case"])]
    manifest = {
        "command": _command_line(argv),
        "seed": args.seed,
        "status": "complete",
        "dtypes": [f.name for f in formats],
        "regimes": regimes,
        "implementations": [{"name": i.name, "source": i.source} for i in implementations],
        "examples": args.examples,
        "max_classes": args.max_classes,
        "cases": len(result.cases),
        "records": len(records),
        "seconds": result.seconds,
        "oracle_seconds": float(records.drop_duplicates("case_id")["oracle_seconds"].sum()),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
    }
    markdown = render_summary(headline(records), summary, manifest)
    write_report(args.out, records, summary, markdown, stored, manifest)
    if not args.quiet:
        print(markdown)
    print(f"report written to {args.out}", file=sys.stderr)
    return EXIT_OK


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to {out}: {exc.strerror or exc}") from None


def _replay(args: argparse.Namespace) -> int:
    from harness.replay import replay_case

    try:
        text = replay_case(args.report, args.case_id, args.impl)
    except (FileNotFoundError, ValueError, KeyError, LoadError) as exc:
        raise UsageError(str(exc).strip("'\"")) from None
    print(text)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
        if args.command == "audit":
            return _audit(args, argv)
        return _replay(args)
    except UsageError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
