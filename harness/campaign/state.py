"""A campaign's state: its cells' results, assembled as a single run writes them, and loaded back.

Shared by the engine (runs, resumes) and merge (shards): both assemble records in the
campaign's cell order, keeping a case drawn in two cells in its first, so any split of a
campaign gives the single run's records.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.calling.registry import Implementation
from harness.campaign.cells import Cell, CellResult, worker_versions
from harness.campaign.integrity import FolderError, campaign_id, verify_folder
from harness.campaign.settings import AuditSettings
from harness.runner import RECORD_COLUMNS
from harness.search import SearchResult
from reports.store import load_cases, load_records

__all__ = ["Campaign", "frame", "label", "load_finished"]


def label(cell: Cell) -> str:
    return f"{cell[0]}/{cell[1]}"


class Campaign:
    """The cells' results so far, assembled as a single run would write them."""

    def __init__(self, settings: AuditSettings, implementations: Sequence[Implementation]) -> None:
        self.settings = settings
        self.implementations = list(implementations)
        self.entries = [{"name": i.name, "source": i.source} for i in self.implementations]
        self.order = settings.shard_cells()
        self.results: dict[Cell, CellResult] = {}
        self.resumed = 0
        self.earlier_seconds = 0.0
        self.start = time.perf_counter()
        self.versions = worker_versions()
        self.extra_errors: list[str] = []  # the oracle self-check's
        self.self_checked = 0

    def add(self, result: CellResult) -> None:
        theirs = {k: v for k, v in result.versions.items() if self.versions.get(k) != v}
        if result.finished and theirs:  # another Hypothesis or torch draws or grades other cases
            ours = ", ".join(f"{k} {self.versions.get(k)}" for k in theirs)
            found = ", ".join(f"{k} {v}" for k, v in theirs.items())
            result = CellResult(result.cell, worker=result.worker, failed=(
                f"{label(result.cell)}: the worker {result.worker} has {found} but this process {ours}; "
                "its records would differ from a single run's (install the same versions)"))  # fmt: skip
        if self.results.get(result.cell, CellResult(result.cell, interrupted=True)).finished:
            return  # never replace a finished cell
        self.results[result.cell] = result

    @property
    def finished(self) -> list[Cell]:
        return [c for c in self.order if c in self.results and self.results[c].finished]

    @property
    def pending(self) -> list[Cell]:
        return [c for c in self.order if not (c in self.results and self.results[c].finished)]

    def errors(self) -> list[str]:
        errors = []
        for cell in self.order:
            result = self.results.get(cell)
            if result is not None:
                errors += result.errors + ([result.failed] if result.failed else [])
        return errors + self.extra_errors

    def assembled(self) -> SearchResult:
        """Records in the campaign's cell order; a case in two cells is kept in its first.

        Finished cells are assembled among themselves first, so what a finished cell
        stores never depends on a partial one; partial cells' records follow the same
        rule and never repeat a case already kept.
        """
        found = SearchResult(interrupted=not self.complete, seconds=self.earlier_seconds + self.seconds)
        kept: dict[Cell, list[dict]] = {}
        for cells in (self.finished, [c for c in self.order if c in self.results and c not in self.finished]):
            for cell in cells:
                result = self.results[cell]
                mine = [r for r in result.records if r["case_id"] not in found.seen]
                found.seen.update(r["case_id"] for r in mine)
                kept[cell] = mine
                found.cases.update(result.cases)
        for cell in self.order:
            found.records.extend(kept.get(cell, []))
        found.completed_cells = self.finished
        found.errors = self.errors()
        return found

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    @property
    def complete(self) -> bool:
        return not self.pending

    def stamp(self, executor: dict) -> dict:
        """The manifest's fields that say what was run, where, and how each cell ended."""
        settings = self.settings
        return {
            **settings.to_json(),
            "settings": settings.to_json(),
            "campaign": campaign_id(settings),
            "implementations": self.entries,
            "executor": executor,
            "resumed_cells": self.resumed,
            "cell_errors": {label(c): self.results[c].errors for c in self.finished if self.results[c].errors},
            "cell_seconds": {label(c): round(self.results[c].seconds, 3) for c in self.finished},
            "partial_cells": [list(c) for c in self.order if c in self.results and self.results[c].interrupted],
            "failed_cells": [list(c) for c in self.order if c in self.results and self.results[c].failed],
        }


def frame(found: SearchResult) -> pd.DataFrame:
    return pd.DataFrame(found.records, columns=list(RECORD_COLUMNS))


def load_finished(folder: Path, what: str = "resume") -> tuple[AuditSettings, dict, dict[Cell, CellResult]]:
    """Settings, manifest and finished cells of the folder, after checking it against its hashes."""
    manifest = verify_folder(folder, what)
    try:
        settings = AuditSettings.from_json(manifest["settings"])
        records = load_records(folder) if (folder / "records.csv").is_file() else None
        stored = load_cases(folder) if (folder / "cases.jsonl").is_file() else {}
    except (FileNotFoundError, KeyError, ValueError, TypeError) as exc:
        raise FolderError(f"cannot {what} {folder}: {str(exc).strip(chr(39))}") from None
    results: dict[Cell, CellResult] = {}
    if records is not None:
        records["output_bits"] = records["output_bits"].astype(object).fillna("")
        records["message"] = records["message"].astype(object).fillna("")
        by_cell = {cell: rows for cell, rows in records.groupby(["dtype", "regime"], sort=False)}
    errors = manifest.get("cell_errors", {})
    seconds = manifest.get("cell_seconds", {})
    for entry in manifest["cells"]:
        cell = (entry["dtype"], entry["regime"])
        rows = by_cell.get(cell) if records is not None else None
        rows = [] if rows is None else rows.to_dict(orient="records")
        if len(rows) != entry["records"]:
            raise FolderError(f"cannot {what} {folder}: cell {label(cell)} has {len(rows)} records, "
                              f"its manifest {entry['records']}")  # fmt: skip
        cases = {r["case_id"]: stored[r["case_id"]] for r in rows if r["case_id"] in stored}
        results[cell] = CellResult(cell, records=rows, cases=cases, errors=list(errors.get(label(cell), [])),
                                   seconds=seconds.get(label(cell), 0.0), versions={})  # fmt: skip
    return settings, manifest, results
