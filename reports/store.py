"""Report folders: atomic writes of records, summaries, stored cases and the manifest."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from reports.html import render_html
from strategies import Case

__all__ = [
    "atomic_write",
    "load_cases",
    "load_manifest",
    "load_records",
    "load_reproducers",
    "write_checkpoint",
    "write_report",
]

MANIFEST = "manifest.json"
RECORDS_CSV = "records.csv"
RECORDS_PARQUET = "records.parquet"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
REPORT_HTML = "report.html"
CASES = "cases.jsonl"
REPRODUCERS_CSV = "reproducers.csv"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parquet_bytes(frame: pd.DataFrame) -> bytes | None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return None
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def write_report(
    out: Path,
    records: pd.DataFrame,
    summary: pd.DataFrame,
    markdown: str,
    cases: Iterable[Case],
    manifest: dict,
    with_html: bool = True,
    reproducers: pd.DataFrame | None = None,
) -> None:
    """Write every file of a report folder; the manifest goes last, so its presence means done."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / RECORDS_CSV, records.to_csv(index=False))
    parquet = _parquet_bytes(records)
    if parquet is not None:
        atomic_write(out / RECORDS_PARQUET, parquet)
    atomic_write(out / SUMMARY_CSV, summary.to_csv(index=False))
    atomic_write(out / SUMMARY_MD, markdown)
    if reproducers is not None:
        atomic_write(out / REPRODUCERS_CSV, reproducers.to_csv(index=False))
    if with_html and len(records):  # checkpoints skip the plots: they cost a second or two
        atomic_write(out / REPORT_HTML, render_html(records, summary, manifest, str(out), reproducers))
    atomic_write(out / CASES, "".join(json.dumps(c.to_json()) + "\n" for c in cases))
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def write_checkpoint(out: Path, records: pd.DataFrame, cases: Iterable[Case], manifest: dict) -> None:
    """What --resume needs after every cell: records, stored cases, the (partial) manifest.

    Summaries are left to the end of the run (they cost more than the checkpoint); files
    of an earlier run in the folder are removed, so none outlives the records it described.
    """
    out.mkdir(parents=True, exist_ok=True)
    for stale in (RECORDS_PARQUET, SUMMARY_CSV, SUMMARY_MD, REPORT_HTML, REPRODUCERS_CSV):
        (out / stale).unlink(missing_ok=True)
    atomic_write(out / RECORDS_CSV, records.to_csv(index=False))
    atomic_write(out / CASES, "".join(json.dumps(c.to_json()) + "\n" for c in cases))
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def load_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a report folder (no {MANIFEST})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"corrupt {path}: {exc}") from None


def load_records(folder: Path) -> pd.DataFrame:
    # pandas < 3 parses floats fast but up to an ulp off unless asked to round-trip; 3 always does
    exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
    return pd.read_csv(Path(folder) / RECORDS_CSV, dtype={"output_bits": str}, **exact)


def load_reproducers(folder: Path) -> pd.DataFrame | None:
    """The minimal reproducers of an audit, or None where the report has none."""
    path = Path(folder) / REPRODUCERS_CSV
    if not path.is_file():
        return None
    exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
    return pd.read_csv(path, dtype={"output_bits": str, "reproducer": str, "worst_case": str}, **exact)


def load_cases(folder: Path) -> dict[str, Case]:
    """Stored cases by id; ValueError names the line of a corrupt entry."""
    path = Path(folder) / CASES
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no stored cases ({CASES})")
    stored = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            case = Case.from_json(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"corrupt case on line {number} of {path}: {exc}") from None
        stored[case.case_id] = case
    return stored
