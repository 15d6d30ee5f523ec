"""Combine the report folders of one campaign's shards into the single run's report, strictly.

Every folder is checked against its content hashes and must belong to the same campaign
(``harness.campaign.integrity.campaign_id``: every setting that affects records but the
shard), and no cell may come from two folders. The same shard twice, overlapping shards,
a full run plus a shard, a shard of another campaign, a corrupt shard or one still being
written: SettingsError (exit 2) naming the folders. Only finished cells are merged; a
merge that does not cover the campaign is written as a partial run of it, which
``audit --resume`` can complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.campaign import lock
from harness.campaign.integrity import FolderError
from harness.campaign.report import AuditReport, check_writable, write_folder
from harness.campaign.settings import AuditSettings
from harness.campaign.state import Campaign, frame, label, load_finished
from harness.shrinking import Reproducers
from reports.store import load_cases, load_manifest, load_reproducers

__all__ = ["merge_reports"]


def _merged_reproducers(tables: list[pd.DataFrame | None]) -> pd.DataFrame | None:
    """The shards' reproducers in a single run's order: each (impl, dtype)'s worst first."""
    present = [t for t in tables if t is not None and len(t)]
    if not present:
        return None
    ranked = pd.concat(present, ignore_index=True).sort_values("worst_allowance_ratio", ascending=False, kind="stable")
    ranked["_first"] = ~ranked.duplicated(["impl", "dtype"])
    ordered = ranked.sort_values(["_first", "worst_allowance_ratio"], ascending=[False, False], kind="stable")
    return ordered.drop(columns="_first").reset_index(drop=True)


def _differences(a: AuditSettings, b: AuditSettings) -> list[str]:
    ours, theirs = a.to_json(), b.to_json()
    return [k for k in ours if k not in ("shard", "shrink_seconds") and ours[k] != theirs.get(k)]


def merge_reports(folders: Sequence[Path], out: Path, *, command: str = "", force: bool = False) -> AuditReport:
    """Merge shard folders of one campaign into ``out``: records in the single run's cell order.

    Raises FolderError (a SettingsError, one line naming the folders) for folders that
    are not distinct, intact, finished-or-partial shards of one campaign.
    """
    folders = [Path(f) for f in folders]
    seen: dict[Path, Path] = {}
    for folder in folders:
        if folder.resolve() in seen:
            raise FolderError(f"cannot merge: {seen[folder.resolve()]} is given twice")
        seen[folder.resolve()] = folder
        holder = lock.holder(folder)
        if holder is not None and not lock.is_stale(holder):
            raise FolderError(f"cannot merge {folder}: it is still being written by pid {holder.get('pid')} "
                              f"on {holder.get('host')}")  # fmt: skip
    loaded = [load_finished(folder, "merge") for folder in folders]
    first_settings, first_manifest, _ = loaded[0]
    owner: dict[tuple[str, str], Path] = {}
    for folder, (settings, _, results) in zip(folders, loaded):
        differing = _differences(first_settings, settings)
        if differing:
            raise FolderError(f"cannot merge {folder} with {folders[0]}: a shard of another campaign "
                              f"(its {', '.join(differing)} differ)")  # fmt: skip
        for cell in results:
            if cell in owner:
                raise FolderError(f"cannot merge {owner[cell]} and {folder}: both hold cell {label(cell)} (the same "
                                  "shard twice, overlapping shards, or a full run and a shard)")  # fmt: skip
            owner[cell] = folder
    campaign = Campaign(first_settings.replace(shard=(1, 1)), [])
    campaign.entries = first_manifest.get("implementations", [])
    campaign.earlier_seconds = sum(float(m.get("seconds", 0.0)) for _, m, _ in loaded)
    for _, _, results in loaded:
        for result in results.values():
            campaign.add(result)
    cell_errors = {e for _, _, results in loaded for r in results.values() for e in r.errors}
    campaign.extra_errors = [e for _, m, _ in loaded for e in m.get("tool_errors", []) if e not in cell_errors]
    campaign.self_checked = sum(int(m.get("oracle_self_checked", 0)) for _, m, _ in loaded)
    table = _merged_reproducers([load_reproducers(f) for f in folders])
    reproducers = None
    if table is not None:
        cases = {}
        for folder in folders:
            cases.update(load_cases(folder))
        wanted = set(table["reproducer"].dropna())
        reproducers = Reproducers(table, {i: c for i, c in cases.items() if i in wanted})
    found = campaign.assembled()
    found.self_checked = campaign.self_checked
    found.seconds = campaign.earlier_seconds
    stamp = {**campaign.stamp({"name": "merge"}), "merged_from": [str(f) for f in folders]}
    status = "complete" if campaign.complete else "partial"
    check_writable(Path(out))
    with lock.FolderLock(Path(out), command=command, force=force):
        records = frame(found)
        write_errors = write_folder(Path(out), records, found, stamp, command=command, status=status,
                                    reproducers=reproducers)  # fmt: skip
    return AuditReport(
        out=Path(out), records=records, manifest=load_manifest(out), reproducers=table,
        tool_errors=campaign.errors(), write_errors=write_errors, interrupted=not campaign.complete,
    )  # fmt: skip
