"""The audit engine: run a campaign's (dtype, regime) cells, checkpoint, resume, shrink, write.

``audit`` is the Python API behind ``python -m harness audit``; ``run_audit`` takes
validated settings (``harness.campaign.settings``). Both return an ``AuditReport``.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from harness.calling.caller import DEFAULT_COMPILE_TIMEOUT, DEFAULT_MEMORY_LIMIT_MIB, DEFAULT_TIMEOUT
from harness.calling.registry import Implementation
from harness.campaign.report import AuditReport, check_writable, write_folder
from harness.campaign.settings import DEFAULT_SHRINK_SECONDS, AuditSettings, SettingsError, audit_settings
from harness.formats import Format
from harness.grading.verdicts import GRADED
from harness.runner import RECORD_COLUMNS
from harness.search import SearchResult, search
from harness.shrinking import shrink_failures
from reports.precision import precision_markdown, precision_table
from reports.store import load_cases, load_manifest, load_records
from strategies import Case

__all__ = ["audit", "resume_audit", "run_audit"]

DEFAULT_OUT = Path("harness-out") / "audit"


def _frame(found: SearchResult) -> pd.DataFrame:
    return pd.DataFrame(found.records, columns=list(RECORD_COLUMNS))


def _manifest_settings(settings: AuditSettings, implementations: Sequence[Implementation], resumed: int) -> dict:
    return {
        **settings.to_json(),
        "settings": settings.to_json(),
        "implementations": [{"name": i.name, "source": i.source} for i in implementations],
        "resumed_cells": resumed,
    }


def _resumable(folder: Path) -> tuple[AuditSettings, dict[tuple[str, str], list[dict]], dict[str, Case]]:
    """Settings, finished cells' records and stored cases of the audit in ``folder``.

    Finished (dtype, regime) cells are kept as they are; the cell that was interrupted
    runs again from its start, so the resumed report equals an uninterrupted one.
    """
    try:
        manifest = load_manifest(folder)
        settings = AuditSettings.from_json(manifest.get("settings") or manifest)
        records = load_records(folder)
        stored = load_cases(folder)
        completed = {tuple(cell) for cell in manifest["completed_cells"]}
    except (FileNotFoundError, KeyError, ValueError, TypeError) as exc:
        raise SettingsError(f"cannot resume from {folder}: {str(exc).strip(chr(39))}") from None
    records["output_bits"] = records["output_bits"].astype(object).fillna("")
    records["message"] = records["message"].astype(object).fillna("")
    finished: dict[tuple[str, str], list[dict]] = {}
    for record in records.to_dict(orient="records"):
        cell = (record["dtype"], record["regime"])
        if cell in completed:
            finished.setdefault(cell, []).append(record)
    return settings, finished, stored


def run_audit(
    settings: AuditSettings,
    out: Path = DEFAULT_OUT,
    *,
    implementations: Sequence[Implementation] | None = None,
    command: str = "",
    workers: int = 1,
    progress: bool | None = None,
    finished: dict[tuple[str, str], list[dict]] | None = None,
    finished_cases: dict[str, Case] | None = None,
) -> AuditReport:
    """Run the campaign that ``settings`` describe and write its report folder to ``out``.

    ``implementations`` overrides loading them from the settings' specs (Python callables
    of the API). ``workers > 1`` spreads the cells over a process pool. ``finished``
    and ``finished_cases`` carry a resumed run's completed cells.
    """
    out = Path(out)
    implementations = list(implementations) if implementations is not None else settings.load_implementations()
    check_writable(out)
    if workers > 1:
        if finished:
            raise SettingsError("a pool of workers cannot resume a run; resume it without workers")
        from harness.campaign.pool import run_in_pool

        return run_in_pool(settings, out, implementations, workers=workers, command=command)
    stamp = _manifest_settings(settings, implementations, len(finished or {}))
    with settings.sandbox.caller() as caller:
        return _run_single(settings, out, implementations, caller, stamp, command, progress, finished,
                           finished_cases)  # fmt: skip


def _graded_nothing(records: pd.DataFrame) -> bool:
    return not records["verdict"].isin(GRADED).any() if len(records) else True


def _run_single(settings, out, implementations, caller, stamp, command, progress, finished,
                finished_cases) -> AuditReport:  # fmt: skip
    def checkpoint(found: SearchResult) -> None:
        for error in write_folder(out, _frame(found), found, stamp, command=command, status="partial",
                                  checkpoint=True):  # fmt: skip
            if error not in found.errors:  # a file that cannot be written fails at every checkpoint
                found.errors.append(error)

    found = search(
        settings.formats, list(settings.regimes), implementations, profile=settings.budget, seed=settings.seed,
        examples=settings.examples, max_classes=settings.max_classes, policy=settings.policy, caller=caller,
        finished=finished, finished_cases=finished_cases, on_cell=checkpoint, shard=settings.shard, progress=progress,
    )  # fmt: skip
    records = _frame(found)
    if not found.interrupted and _graded_nothing(records):
        found.errors.append("no case was graded: every record is ungraded, or there is none")
    reproducers = None
    if not found.interrupted and settings.shrink_seconds > 0:
        checkpoint(found)  # nothing lost if shrinking is cut short
        reproducers = shrink_failures(records, implementations, found.cases, policy=settings.policy, caller=caller,
                                      seconds=settings.shrink_seconds)  # fmt: skip
        found.interrupted = reproducers.interrupted
    extra = {}
    if settings.precision and len(records):
        extra = {"precision.csv": lambda: precision_table(records).to_csv(index=False),
                 "precision.md": lambda: precision_markdown(records, str(out))}  # fmt: skip
    status = "partial" if found.interrupted else "complete"
    write_errors = write_folder(out, records, found, {**stamp, "shrink_seconds": settings.shrink_seconds},
                                command=command, status=status, reproducers=reproducers, extra=extra)  # fmt: skip
    return AuditReport(
        out=out, records=records, manifest=load_manifest(out) if (out / "manifest.json").is_file() else {},
        reproducers=reproducers.table if reproducers is not None else None,
        tool_errors=[e for e in found.errors if e not in write_errors], write_errors=write_errors,
        interrupted=found.interrupted,
    )  # fmt: skip


def resume_audit(folder: Path, *, command: str = "", progress: bool | None = None) -> AuditReport:
    """Continue the partial audit in ``folder`` with the settings stored in its manifest."""
    settings, finished, stored = _resumable(Path(folder))
    return run_audit(settings, Path(folder), command=command, progress=progress, finished=finished,
                     finished_cases=stored)  # fmt: skip


def audit(
    implementations: Sequence[str | Implementation] | None = None,
    *,
    dtypes: Sequence[str | torch.dtype | Format] | None = None,
    regimes: Sequence[str] | None = None,
    profile: str | None = None,
    examples: int | None = None,
    max_classes: int | None = None,
    seed: int = 0,
    max_ulps: float = 4.0,
    precision: bool = False,
    shard: tuple[int, int] = (1, 1),
    timeout: float = DEFAULT_TIMEOUT,
    shrink_seconds: float = DEFAULT_SHRINK_SECONDS,
    out: str | Path = DEFAULT_OUT,
    workers: int = 1,
    progress: bool | None = False,
    compile_timeout: float = DEFAULT_COMPILE_TIMEOUT,
    memory_limit_mib: float = DEFAULT_MEMORY_LIMIT_MIB,
    framework: str = "auto",
    triton_interpret: bool = False,
    device: str = "cpu",
) -> AuditReport:
    """Audit implementations over the strategies and write a report folder; the Python form of ``audit``.

    ``implementations``: built-in names, ``module:function`` or ``file.py:function`` specs
    (default: the built-ins, or the precision methods with ``precision=True``). Each runs
    in a sandbox process: ``timeout`` seconds per call, ``compile_timeout`` for the first
    call per (dtype, shape class) and while torch.compile compiles, ``memory_limit_mib``
    of resident memory (0: none); ``framework`` (auto, torch, jax, numpy) says what arrays
    it takes, ``triton_interpret`` runs Triton kernels on Triton's CPU interpreter, and
    ``device`` is where it runs. Raises SettingsError (a ValueError, one line) for
    settings that cannot make an audit.
    """
    settings, impls = audit_settings(
        implementations, dtypes=dtypes, regimes=regimes, profile=profile, examples=examples,
        max_classes=max_classes, seed=seed, max_ulps=max_ulps, precision=precision, shard=shard, timeout=timeout,
        shrink_seconds=shrink_seconds, compile_timeout=compile_timeout, memory_limit_mib=memory_limit_mib,
        framework=framework, triton_interpret=triton_interpret, device=device,
    )  # fmt: skip
    command = "harness.audit(" + shlex.quote(", ".join(settings.implementations)) + ")"
    return run_audit(settings, Path(out), implementations=impls, command=command, workers=workers, progress=progress)
