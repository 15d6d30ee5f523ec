"""Report folders: atomic writes of records, summaries, stored cases and the manifest."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from reports.html import render_html
from reports.stats import by_option
from strategies import Case

__all__ = [
    "atomic_write",
    "load_cases",
    "load_manifest",
    "load_records",
    "load_reproducers",
    "write_checkpoint",
    "write_files",
    "write_report",
]

MANIFEST = "manifest.json"
RECORDS_CSV = "records.csv"
RECORDS_PARQUET = "records.parquet"
SUMMARY_CSV = "summary.csv"
OPTIONS_CSV = "options.csv"
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


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    return buffer.getvalue()


def write_files(
    out: Path, producers: dict[str, Callable[[], str | bytes]], written: dict[str, str | bytes] | None = None
) -> list[str]:
    """Write each file that its producer renders; one line per file that could not be written.

    A failure (a missing optional dependency, a full disk, a permission error) costs only
    that file: every other file is still written, and the caller decides what it means.
    ``written`` collects what each written file holds, by name.
    """
    errors = []
    for name, produce in producers.items():
        try:
            data = produce()
            atomic_write(out / name, data)
            if written is not None:
                written[name] = data
        except Exception as exc:  # any failure of one file is reported, never fatal
            reason = str(exc).splitlines()[0] if str(exc) else ""
            errors.append(f"could not write {out / name}: {type(exc).__name__}: {reason}".rstrip(": "))
    return errors


def write_report(
    out: Path,
    records: pd.DataFrame,
    summary: pd.DataFrame,
    markdown: str,
    cases: Iterable[Case],
    manifest: dict,
    with_html: bool = True,
    reproducers: pd.DataFrame | None = None,
    extra: dict[str, Callable[[], str | bytes]] | None = None,
    seal: Callable[[dict[str, str | bytes]], dict] | None = None,
) -> list[str]:
    """Write every file of a report folder; the manifest goes last, so its presence means done.

    ``extra`` adds files by name (e.g. the precision audit's). ``seal(written)`` gets what
    each written file holds and returns fields added to the manifest (content hashes).
    Returns one line per file that could not be written; then the manifest is written
    with ``"status": "partial"`` and those lines under ``tool_errors``, never ``"complete"``.
    """
    out.mkdir(parents=True, exist_ok=True)
    cases = list(cases)
    producers: dict[str, Callable[[], str | bytes]] = {
        RECORDS_CSV: lambda: records.to_csv(index=False),
        RECORDS_PARQUET: lambda: _parquet_bytes(records),
        SUMMARY_CSV: lambda: summary.to_csv(index=False),
        SUMMARY_MD: lambda: markdown,
    }
    if reproducers is not None:
        producers[REPRODUCERS_CSV] = lambda: reproducers.to_csv(index=False)
    options = by_option(records) if len(records) else None
    if options is not None and len(options):  # per option value: share of records and unstable rate (issue 14)
        producers[OPTIONS_CSV] = lambda: options.to_csv(index=False)
    if with_html and len(records):  # checkpoints skip the plots: they cost a second or two
        producers[REPORT_HTML] = lambda: render_html(records, summary, manifest, str(out), reproducers)
    producers[CASES] = lambda: "".join(json.dumps(c.to_json()) + "\n" for c in cases)
    producers.update(extra or {})
    written: dict[str, str | bytes] = {}
    errors = write_files(out, producers, written)
    if errors:
        manifest = {**manifest, "status": "partial", "tool_errors": [*manifest.get("tool_errors", []), *errors]}
    if seal is not None:
        manifest = {**manifest, **seal(written)}
    errors += write_files(out, {MANIFEST: lambda: json.dumps(manifest, indent=2, sort_keys=True) + "\n"})
    return errors


def write_checkpoint(
    out: Path,
    records: pd.DataFrame,
    cases: Iterable[Case],
    manifest: dict,
    seal: Callable[[dict[str, str | bytes]], dict] | None = None,
) -> list[str]:
    """What --resume needs after every cell: records, stored cases, the (partial) manifest.

    Summaries are left to the end of the run (they cost more than the checkpoint); files
    of an earlier run in the folder are removed, so none outlives the records it described.
    Returns one line per file that could not be written or removed.
    """
    out.mkdir(parents=True, exist_ok=True)
    errors = []
    for stale in (RECORDS_PARQUET, SUMMARY_CSV, SUMMARY_MD, REPORT_HTML, REPRODUCERS_CSV, OPTIONS_CSV):
        try:
            (out / stale).unlink(missing_ok=True)
        except OSError as exc:
            errors.append(f"could not remove the stale {out / stale}: {type(exc).__name__}: {exc.strerror or exc}")
    cases = list(cases)
    written: dict[str, str | bytes] = {}
    errors += write_files(out, {
        RECORDS_CSV: lambda: records.to_csv(index=False),
        CASES: lambda: "".join(json.dumps(c.to_json()) + "\n" for c in cases),
    }, written)  # fmt: skip
    if errors:
        manifest = {**manifest, "tool_errors": [*manifest.get("tool_errors", []), *errors]}
    if seal is not None:
        manifest = {**manifest, **seal(written)}
    return errors + write_files(out, {MANIFEST: lambda: json.dumps(manifest, indent=2, sort_keys=True) + "\n"})


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
    records = pd.read_csv(Path(folder) / RECORDS_CSV, dtype={"output_bits": str}, **exact)
    if "compile_seconds" not in records:  # written before compile time was recorded apart
        records.insert(records.columns.get_loc("impl_seconds") + 1, "compile_seconds", 0.0)
    if "quantity" not in records:  # written before gradients were graded: every record graded the loss
        records.insert(records.columns.get_loc("impl") + 1, "quantity", "loss")
    if "upstream" not in records:
        records.insert(records.columns.get_loc("element") + 1 if "element" in records else len(records.columns),
                       "upstream", float("nan"))  # fmt: skip
    return records


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
