"""Content hashes of report folders: a resumed or merged folder is used only if it is intact.

The manifest (written last) holds ``files``: the SHA-256 of every file written with it,
and ``cells``: for every finished (dtype, regime) cell, the SHA-256 of its rows of
``records.csv`` (timing columns aside) and of its stored cases, with their counts: the
same cell gives the same hash on every executor. ``campaign`` identifies the
campaign (every setting that affects records, the shard aside), so shards of another
campaign are told apart. Hashes are taken over the text as written: a truncated or edited
file, or a row moved between cells, does not match.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from harness.campaign.settings import AuditSettings, SettingsError
from harness.runner import TIMING_COLUMNS
from reports.store import CASES, MANIFEST, RECORDS_CSV

__all__ = ["TIMING_COLUMNS", "FolderError", "campaign_id", "cell_digests", "seal", "verify_folder"]

Cell = tuple[str, str]

# Settings that change no record: how long shrinking may take, and which shard this is.
_NOT_IN_CAMPAIGN = ("shard", "shrink_seconds")
# Columns that differ between runs of the same cell (harness.runner.TIMING_COLUMNS) are
# left out of a cell's hash, so the same cell run anywhere (any executor, a resume, a
# shard) has the same hash.


class FolderError(SettingsError):
    """A report folder that cannot be resumed or merged (missing, corrupt, another campaign); one line."""


def _sha256(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def campaign_id(settings: AuditSettings) -> str:
    """A short hash of every setting that affects records, the shard aside."""
    data = {k: v for k, v in settings.to_json().items() if k not in _NOT_IN_CAMPAIGN}
    return _sha256(json.dumps(data, sort_keys=True))[:16]


def cell_digests(records_csv: str, cases_jsonl: str) -> dict[Cell, dict]:
    """Per (dtype, regime) cell of ``records_csv``: {"sha256", "records", "cases"}.

    A cell's hash covers its rows (each field's text, in file order, timing columns
    aside) and the stored cases its rows name (their lines, by case id): the same for the
    same cell wherever it ran.
    """
    rows = csv.reader(io.StringIO(records_csv))
    header = next(rows, None)
    if header is None:
        return {}
    at = {name: header.index(name) for name in ("dtype", "regime", "case_id")}
    fields = [i for i, name in enumerate(header) if name not in TIMING_COLUMNS]
    header = [header[i] for i in fields]
    hashes: dict[Cell, hashlib._Hash] = {}
    counts: dict[Cell, int] = {}
    owner: dict[str, Cell] = {}
    for row in rows:
        cell = (row[at["dtype"]], row[at["regime"]])
        if cell not in hashes:
            hashes[cell] = hashlib.sha256("\x1f".join(header).encode() + b"\n")
            counts[cell] = 0
        hashes[cell].update("\x1f".join(row[i] for i in fields).encode() + b"\n")
        counts[cell] += 1
        owner.setdefault(row[at["case_id"]], cell)
    stored: dict[Cell, list[tuple[str, str]]] = {}
    for line in cases_jsonl.splitlines():
        case_id = json.loads(line).get("case_id", "")
        if case_id in owner:
            stored.setdefault(owner[case_id], []).append((case_id, line))
    digests = {}
    for cell, h in hashes.items():
        for _, line in sorted(stored.get(cell, [])):
            h.update(line.encode() + b"\n")
        digests[cell] = {"sha256": h.hexdigest(), "records": counts[cell], "cases": len(stored.get(cell, []))}
    return digests


def seal(finished: Iterable[Cell]):
    """A ``reports.store`` seal: the manifest's ``files`` and ``cells`` hashes of what was written."""
    finished = list(finished)

    def fields(written: Mapping[str, str | bytes]) -> dict:
        files = {name: _sha256(data) for name, data in written.items()}
        per_cell = cell_digests(_text(written.get(RECORDS_CSV, "")), _text(written.get(CASES, "")))
        cells = [{"dtype": d, "regime": r, **per_cell.get((d, r), {"sha256": "", "records": 0, "cases": 0})}
                 for d, r in finished]  # fmt: skip
        return {"files": files, "cells": cells}

    return fields


def _text(data: str | bytes) -> str:
    return data.decode() if isinstance(data, bytes) else data


def verify_folder(folder: Path, what: str = "resume") -> dict:
    """The manifest of ``folder`` after checking every file against its hash; FolderError otherwise.

    Checks each file the manifest lists (present, same SHA-256) and each finished cell's
    rows and stored cases; the error names the folder and the first mismatch.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FolderError(f"cannot {what} {folder}: not a report folder (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FolderError(f"cannot {what} {folder}: corrupt {MANIFEST} ({exc})") from None
    files = manifest.get("files")
    if not isinstance(files, dict) or "cells" not in manifest or "settings" not in manifest:
        raise FolderError(f"cannot {what} {folder}: its manifest has no content hashes (written by an older "
                          "harness, or not by audit); run it again")  # fmt: skip
    texts = {}
    for name, digest in sorted(files.items()):
        try:
            data = (folder / name).read_bytes()
        except OSError:
            raise FolderError(f"cannot {what} {folder}: {name} is missing") from None
        if _sha256(data) != digest:
            raise FolderError(f"cannot {what} {folder}: {name} does not match its hash in {MANIFEST} "
                              "(truncated or modified)")  # fmt: skip
        texts[name] = data
    if manifest["cells"] and RECORDS_CSV not in texts:
        raise FolderError(f"cannot {what} {folder}: its manifest lists finished cells but no {RECORDS_CSV}")
    per_cell = cell_digests(_text(texts.get(RECORDS_CSV, b"")), _text(texts.get(CASES, b"")))
    for entry in manifest["cells"]:
        cell = (entry["dtype"], entry["regime"])
        if per_cell.get(cell, {}).get("sha256", "") != entry["sha256"] and entry["records"]:
            raise FolderError(f"cannot {what} {folder}: cell {cell[0]}/{cell[1]} does not match its hash "
                              "in the manifest")  # fmt: skip
    return manifest
