"""Report folders of audits and checks: the manifest, and which cases are stored for replay."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis
import mpmath
import pandas as pd
import torch

from harness.calling.sandbox import sandbox_threads
from harness.campaign.integrity import seal
from harness.campaign.settings import SettingsError
from harness.search import SearchResult
from harness.shrinking import Reproducers
from reports.markdown import render_summary
from reports.stats import headline, summarize, worst_cases
from reports.store import write_checkpoint, write_report

__all__ = ["AuditReport", "check_writable", "versions", "write_folder"]

EXIT_OK, EXIT_FLAGGED, EXIT_USAGE, EXIT_TOOL_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "hypothesis": hypothesis.__version__,
        "mpmath": mpmath.__version__,
        "mpmath_backend": mpmath.libmp.BACKEND,
        "pandas": pd.__version__,
        "sandbox_threads": sandbox_threads(),  # CPU threads of each implementation's process
    }


def check_writable(out: Path) -> None:
    """SettingsError with OSError's one-line reason when ``out`` cannot hold a report."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise SettingsError(f"cannot write to {out}: {exc.strerror or exc}") from None


@dataclass
class AuditReport:
    """What an audit wrote: its folder, records, summaries and how it ended."""

    out: Path
    records: pd.DataFrame
    manifest: dict
    summary: pd.DataFrame | None = None
    reproducers: pd.DataFrame | None = None
    tool_errors: list[str] = field(default_factory=list)  # the tool's own failures (self-check, a cell)
    write_errors: list[str] = field(default_factory=list)  # report files that could not be written
    interrupted: bool = False

    @property
    def status(self) -> str:
        """The manifest's: 'complete' only when every cell finished and every file was written."""
        if self.manifest.get("status") in ("complete", "partial"):
            return self.manifest["status"]
        return "partial" if self.interrupted or self.write_errors else "complete"

    @property
    def exit_code(self) -> int:
        """0 complete, 3 a tool error (or a report file not written), 130 interrupted."""
        if self.write_errors:
            return EXIT_TOOL_ERROR
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_TOOL_ERROR if self.tool_errors else EXIT_OK

    def path(self, name: str) -> Path:
        return self.out / name


def write_folder(
    out: Path,
    records: pd.DataFrame,
    found: SearchResult,
    settings: dict,
    *,
    command: str,
    status: str,
    stored_ids: Iterable[str] = (),
    reproducers: Reproducers | None = None,
    checkpoint: bool = False,
    extra: dict[str, Callable[[], str | bytes]] | None = None,
) -> list[str]:
    """Write a report folder from a search; a checkpoint writes only what --resume needs.

    Stored cases: ``stored_ids``, every worst case and every case not graded exact, and
    the shrunk reproducers. The manifest gets the content hashes of every file and of
    every finished cell (``harness.campaign.integrity``). Returns one line per file that
    could not be written (the manifest then says partial).
    """
    summary = None if checkpoint else summarize(records)
    worst = set(worst_cases(records)["case_id"]) if checkpoint else set(summary["worst_case"])
    keep = set(stored_ids) | worst | set(records.loc[records["outcome"].ne("exact"), "case_id"])
    manifest = {
        "command": command,
        "status": status,
        "cases": int(records["case_id"].nunique()),
        "completed_cells": found.completed_cells,
        "records": len(records),
        "seconds": found.seconds,
        "oracle_seconds": float(records.drop_duplicates("case_id")["oracle_seconds"].sum()),
        "oracle_methods": records.drop_duplicates("case_id")["oracle_method"].value_counts().to_dict(),
        "tool_errors": list(found.errors),
        "oracle_self_checked": found.self_checked,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        **settings,
    }
    table = reproducers.table if reproducers is not None else None
    kept = {i: c for i, c in found.cases.items() if i in keep}
    if reproducers is not None:
        kept.update(reproducers.cases)
    stored = list(kept.values())
    hashes = seal(found.completed_cells)
    if checkpoint:
        return write_checkpoint(out, records, stored, manifest, seal=hashes)
    markdown = render_summary(headline(records), summary, manifest, table, str(out))
    return write_report(out, records, summary, markdown, stored, manifest, with_html=status == "complete",
                        reproducers=table, extra=extra, seal=hashes)  # fmt: skip


def write_check_folder(result, out: Path, *, command: str, run: dict) -> list[str]:
    """The report folder of a ``check``: the implementation's and torch's records on the same cases.

    ``result`` is a harness.api.CheckResult; ``run`` the settings the manifest records.
    """
    records = pd.concat([result.records, result.reference], ignore_index=True)
    settings = {**run, "mode": "check", "passed": result.passed, "counts": result.counts}
    counterexample_ids = {cx.case.case_id for cx in result.counterexamples}
    status = "partial" if result.search.interrupted else "complete"
    return write_folder(out, records, result.search, settings, command=command, status=status,
                        stored_ids=counterexample_ids)  # fmt: skip
