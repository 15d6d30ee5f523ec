"""Combine the report folders of one campaign's shards into the single run's report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from harness.campaign.report import AuditReport, check_writable
from harness.campaign.settings import SettingsError
from harness.shrinking import Reproducers
from reports.markdown import render_summary
from reports.stats import headline, summarize
from reports.store import load_cases, load_manifest, load_records, load_reproducers, write_report

__all__ = ["merge_reports"]

# Settings every shard of one campaign shares.
_SAME_IN_EVERY_SHARD = ("seed", "examples", "max_classes", "profile", "dtypes", "regimes", "implementations",
                        "precision", "timeout", "compile_timeout", "memory_limit_mib", "framework",
                        "triton_interpret", "device")  # fmt: skip


def _merged_reproducers(tables: list[pd.DataFrame | None]) -> pd.DataFrame | None:
    """The shards' reproducers in a single run's order: each (impl, dtype)'s worst first."""
    present = [t for t in tables if t is not None]
    if not present:
        return None
    ranked = pd.concat(present, ignore_index=True).sort_values("worst_allowance_ratio", ascending=False, kind="stable")
    ranked["_first"] = ~ranked.duplicated(["impl", "dtype"])
    ordered = ranked.sort_values(["_first", "worst_allowance_ratio"], ascending=[False, False], kind="stable")
    return ordered.drop(columns="_first").reset_index(drop=True)


def merge_reports(
    folders: Sequence[Path],
    out: Path,
    *,
    cells: Sequence[tuple[str, str]] | None = None,
    shrink: Callable[[pd.DataFrame], Reproducers | None] | None = None,
    shard: tuple[int, int] | None = None,
) -> AuditReport:
    """Concatenate shard records in the single run's cell order, dropping repeated cases.

    ``cells``: the (dtype, regime) cells the merge must cover to be complete (default all
    of the campaign's). ``shrink``: computes the reproducers from the merged records (a
    pool of workers); by default the shards' own reproducers are combined. ``shard``: the
    campaign shard the merged folder stands for (a pool within a shard).
    Raises SettingsError (one line) for folders that are not shards of one campaign.
    """
    folders = [Path(f) for f in folders]
    try:
        manifests = [load_manifest(f) for f in folders]
        records = [load_records(f) for f in folders]
        stored: dict = {}
        for folder in folders:
            stored.update(load_cases(folder))
    except (FileNotFoundError, ValueError) as exc:
        raise SettingsError(f"cannot merge: {exc}") from None
    first = manifests[0]
    for folder, manifest in zip(folders, manifests):
        differing = [k for k in _SAME_IN_EVERY_SHARD if manifest.get(k) != first.get(k)]
        if differing:
            raise SettingsError(f"cannot merge {folder}: its {', '.join(differing)} differ from {folders[0]}'s")
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
    settings = {k: first.get(k) for k in _SAME_IN_EVERY_SHARD}
    if "settings" in first:
        settings["settings"] = {**first["settings"], "shard": list(shard or (1, 1))}
    manifest = {
        **settings,
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
    check_writable(out)
    write_errors = write_report(out, combined, summary, markdown, [c for i, c in stored.items() if i in keep],
                                manifest, reproducers=reproducers)  # fmt: skip
    return AuditReport(
        out=Path(out), records=combined, manifest=manifest, summary=summary, reproducers=reproducers,
        tool_errors=manifest["tool_errors"], write_errors=write_errors, interrupted=not complete,
    )  # fmt: skip
