"""The audit engine: a campaign's (dtype, regime) cells run on an executor, checkpointed, resumed, shrunk, written.

``audit`` is the Python API behind ``python -m harness audit``; ``run_audit`` takes
validated settings (``harness.campaign.settings``) and ``resume_audit`` continues a
folder. All return an ``AuditReport``. The engine is the same for every executor
(``harness.campaign.executors``): it hands out the cells not yet finished, takes each
result as it comes, and alone writes the folder:

- one run per folder (``harness.campaign.lock``), unless ``force``;
- a checkpoint after every cell: records, stored cases, and a manifest with the
  settings and content hashes (``harness.campaign.integrity``), so ``resume_audit``
  reruns only the cells not finished, from their start, and refuses a damaged folder;
- records assembled in the single run's cell order, a case drawn in two cells kept in
  its first, so every executor and every resume writes the single run's records;
- a stop request (``harness.interrupts``) ends the run within seconds with a
  partial report; a cell whose worker died twice is a tool error for that cell alone.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from harness import interrupts
from harness.calling.caller import DEFAULT_COMPILE_TIMEOUT, DEFAULT_MEMORY_LIMIT_MIB, DEFAULT_TIMEOUT
from harness.calling.registry import Implementation
from harness.campaign.executors import Executor, make_executor
from harness.campaign.integrity import verify_folder
from harness.campaign.lock import FolderLock
from harness.campaign.report import AuditReport, check_writable, write_folder
from harness.campaign.settings import DEFAULT_SHRINK_SECONDS, AuditSettings, SettingsError, audit_settings
from harness.campaign.state import Campaign, frame, load_finished
from harness.formats import Format
from harness.grading.verdicts import GRADED
from harness.search import SELF_CHECK_CASES, oracle_self_check
from harness.shrinking import shrink_failures
from reports.precision import precision_markdown, precision_table
from reports.store import load_manifest

__all__ = ["DEFAULT_OUT", "audit", "resume_audit", "run_audit"]

DEFAULT_OUT = Path("harness-out") / "audit"


def _graded_nothing(records: pd.DataFrame) -> bool:
    return not records["verdict"].isin(GRADED).any() if len(records) else True


def _remote_check(settings: AuditSettings, implementations: Sequence[Implementation], executor: Executor) -> None:
    """Workers load implementations from their specs: every spec must load, to the same names."""
    if not executor.remote:
        return
    try:
        loaded = settings.load_implementations()
    except SettingsError:
        loaded = []
    if [i.name for i in loaded] != [i.name for i in implementations]:
        raise SettingsError(f"the {executor.name} executor needs implementations given as built-in names, "
                            "module:function or file.py:function specs (its workers load them)")  # fmt: skip


def _execute(
    campaign: Campaign,
    out: Path,
    executor: Executor,
    *,
    command: str,
    progress: bool | None,
) -> AuditReport:
    settings = campaign.settings

    def write(checkpoint: bool, reproducers=None, extra=None) -> list[str]:
        found = campaign.assembled()
        status = "complete" if campaign.complete and not interrupts.requested() and not checkpoint else "partial"
        found.self_checked = campaign.self_checked
        stamp = campaign.stamp(executor.describe())
        return write_folder(out, frame(found), found, stamp, command=command, status=status, checkpoint=checkpoint,
                            reproducers=reproducers, extra=extra)  # fmt: skip

    write_errors = write(checkpoint=True)  # the folder is resumable from the start
    pending = campaign.pending
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=len(pending) * settings.examples, disable=not show, unit="case", desc="cases") as bar:
        ticks = [0]

        def on_case() -> None:
            ticks[0] += 1
            bar.update(1)

        if pending and not interrupts.requested():
            with executor:
                # after a stop request the executor itself ends within seconds, handing back
                # the partial cells of its busy workers: every one is kept
                for result in executor.run(settings, pending, campaign.implementations, on_case=on_case):
                    campaign.add(result)
                    bar.update(max(0, settings.examples - ticks[0]) if result.finished else 0)
                    ticks[0] = 0
                    write_errors = write(checkpoint=True)
    reproducers = None
    if campaign.complete and not interrupts.requested():
        try:
            found = campaign.assembled()
            campaign.extra_errors = oracle_self_check(found, SELF_CHECK_CASES)
            campaign.self_checked = found.self_checked
        except interrupts.Interrupted:
            pass
        if _graded_nothing(frame(campaign.assembled())):  # a run that graded nothing never passes
            campaign.extra_errors.append("no case was graded: every record is ungraded, or there is none")
        if settings.shrink_seconds > 0 and not interrupts.requested():
            write_errors = write(checkpoint=True)  # nothing lost if shrinking is cut short
            with settings.sandbox.caller() as caller:
                assembled = campaign.assembled()
                reproducers = shrink_failures(frame(assembled), campaign.implementations, assembled.cases,
                                              policy=settings.policy, caller=caller,
                                              seconds=settings.shrink_seconds)  # fmt: skip
    extra = None
    records = frame(campaign.assembled())
    if settings.precision and len(records):
        extra = {"precision.csv": lambda: precision_table(records).to_csv(index=False),
                 "precision.md": lambda: precision_markdown(records, str(out))}  # fmt: skip
    write_errors = write(checkpoint=False, reproducers=reproducers, extra=extra)
    return _report(out, campaign, records, reproducers, write_errors)


def _report(out: Path, campaign: Campaign, records, reproducers, write_errors: list[str]) -> AuditReport:
    manifest = load_manifest(out) if (out / "manifest.json").is_file() else {}
    stopped = interrupts.requested() or any(r.interrupted for r in campaign.results.values())
    return AuditReport(
        out=out, records=records, manifest=manifest,
        reproducers=reproducers.table if reproducers is not None else None,
        tool_errors=[e for e in campaign.errors() if e not in write_errors], write_errors=write_errors,
        interrupted=manifest.get("status") != "complete" and stopped,
    )  # fmt: skip


def run_audit(
    settings: AuditSettings,
    out: Path = DEFAULT_OUT,
    *,
    implementations: Sequence[Implementation] | None = None,
    command: str = "",
    executor: str | Executor | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool | None = None,
    force: bool = False,
) -> AuditReport:
    """Run the campaign that ``settings`` describe and write its report folder to ``out``.

    ``implementations`` overrides loading them from the settings' specs (Python callables
    of the API; in-process only). ``executor``: 'inprocess', 'pool', 'dask' or an
    ``Executor`` (see ``make_executor`` for ``workers`` and ``scheduler``). ``force``
    takes the folder over from another run that holds its lock.
    Raises SettingsError (one line) for settings, executors or folders that cannot run.
    """
    out = Path(out)
    chosen = make_executor(executor, workers=workers, scheduler=scheduler)
    implementations = list(implementations) if implementations is not None else settings.load_implementations()
    _remote_check(settings, implementations, chosen)
    check_writable(out)
    with FolderLock(out, command=command, force=force), interrupts.handling():
        campaign = Campaign(settings, implementations)
        return _execute(campaign, out, chosen, command=command, progress=progress)


def resume_audit(
    folder: Path,
    *,
    command: str = "",
    executor: str | Executor | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool | None = None,
    force: bool = False,
) -> AuditReport:
    """Continue the audit in ``folder`` with the settings stored in its manifest, on any executor.

    Finished cells are kept as they are (after checking them against their hashes); the
    others run from their start, so the result equals an uninterrupted run's. A folder
    that does not match its hashes is refused (FolderError, one line). A complete folder
    is returned as it is.
    """
    folder = Path(folder)
    chosen = make_executor(executor, workers=workers, scheduler=scheduler)
    verify_folder(folder)  # before anything is written or locked there (checked again under the lock)
    check_writable(folder)
    with FolderLock(folder, command=command, force=force), interrupts.handling():
        settings, manifest, finished = load_finished(folder)
        implementations = settings.load_implementations()
        _remote_check(settings, implementations, chosen)
        campaign = Campaign(settings, implementations)
        campaign.results.update(finished)
        campaign.resumed = len(finished)
        campaign.earlier_seconds = float(manifest.get("seconds", 0.0))
        if manifest.get("status") == "complete" and campaign.complete:
            records = frame(campaign.assembled())
            return AuditReport(out=folder, records=records, manifest=manifest,
                               tool_errors=list(manifest.get("tool_errors", [])))  # fmt: skip
        return _execute(campaign, folder, chosen, command=command, progress=progress)


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
    strict: bool = False,
    precision: bool = False,
    shard: tuple[int, int] = (1, 1),
    timeout: float = DEFAULT_TIMEOUT,
    shrink_seconds: float = DEFAULT_SHRINK_SECONDS,
    out: str | Path = DEFAULT_OUT,
    executor: str | Executor | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    force: bool = False,
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
    ``executor``: 'inprocess' (default), 'pool' (``workers`` processes) or 'dask' (a
    LocalCluster of ``workers`` processes, or the cluster at ``scheduler``), or an
    ``Executor``; every one writes the same records. MissingExtra without Dask.
    """
    settings, impls = audit_settings(
        implementations, dtypes=dtypes, regimes=regimes, profile=profile, examples=examples,
        max_classes=max_classes, seed=seed, max_ulps=max_ulps, strict=strict, precision=precision, shard=shard,
        timeout=timeout, shrink_seconds=shrink_seconds, compile_timeout=compile_timeout,
        memory_limit_mib=memory_limit_mib, framework=framework, triton_interpret=triton_interpret, device=device,
    )  # fmt: skip
    command = "harness.audit(" + shlex.quote(", ".join(settings.implementations)) + ")"
    return run_audit(settings, Path(out), implementations=impls, command=command, executor=executor,
                     workers=workers, scheduler=scheduler, progress=progress, force=force)  # fmt: skip
