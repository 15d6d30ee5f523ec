"""Minimal reproducers for an audit's failures.

An audit keeps every case it draws, and every failing case among them. Afterwards, for
each failing (implementation, dtype, regime) cell, the smallest stored case on which that
implementation failed is shrunk structurally (harness.minimize: layout, rows, tiles of
classes, magnitudes), running only that implementation, keeping each step on which it
fails the same way (the same outcome). Nothing is searched again, so the time goes to
shrinking. A first pass gives each failing (implementation, dtype) one reproducer, its
worst cell first; a second pass takes the remaining cells. A time budget bounds the
whole; a cell it does not reach is listed with its worst case, unshrunk.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from harness import interrupts
from harness.calling.caller import Caller
from harness.calling.registry import Implementation
from harness.grading.verdicts import Policy
from harness.minimize import minimize
from harness.runner import run_case
from strategies import Case

__all__ = ["CELL_SHRINK_SECONDS", "REPRODUCER_COLUMNS", "Reproducers", "same_failure", "shrink_failures"]

CELL_SHRINK_SECONDS = 8.0  # the most one cell's shrinking may take

REPRODUCER_COLUMNS = (
    "impl", "dtype", "regime", "outcome", "verdict", "worst_case", "worst_allowance_ratio", "status",
    "reproducer", "shape", "targets", "output", "output_bits", "oracle", "ulps", "allowance_ratio",
)  # fmt: skip


@dataclass
class Reproducers:
    """One row per failing (implementation, dtype, regime) cell, plus the shrunk cases."""

    table: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(REPRODUCER_COLUMNS)))
    cases: dict[str, Case] = field(default_factory=dict)
    interrupted: bool = False


def same_failure(subject: Implementation, outcome: str, policy: Policy, caller: Caller):
    """``fails(case)`` for harness.minimize: the subject's record when it fails with ``outcome``, else None."""

    def fails(case: Case) -> dict | None:
        for record in run_case(case, [subject], policy, caller):
            # a call skipped after repeated sandbox deaths (see Caller) says nothing about its case
            if (record["outcome"] == outcome and policy.fails(record["verdict"])
                    and not str(record["message"]).startswith("skipped:")):  # fmt: skip
                return record
        return None

    return fails


def _failing_cells(records: pd.DataFrame, policy: Policy) -> pd.DataFrame:
    """One row per failing (impl, dtype, regime): its worst record, and the smallest failing case.

    Ordered so each (impl, dtype)'s worst cell comes first (the first pass), then the rest.
    """
    failing = records[records["verdict"].map(policy.fails)]
    if failing.empty:
        return failing
    ranked = failing.assign(_ratio=failing["allowance_ratio"].fillna(float("inf")),
                            _size=failing["n_samples"] * failing["n_classes"])  # fmt: skip
    key = ["impl", "dtype", "regime"]
    worst = ranked.sort_values("_ratio", ascending=False, kind="stable").drop_duplicates(key)
    # the smallest case failing the way the worst one does: where shrinking starts
    smallest = ranked.sort_values("_size", kind="stable").drop_duplicates([*key, "outcome"])
    worst = worst.merge(smallest[[*key, "outcome", "case_id"]].rename(columns={"case_id": "_start"}),
                        on=[*key, "outcome"])  # fmt: skip
    worst = worst.assign(_first=~worst.duplicated(["impl", "dtype"]))
    return worst.sort_values(["_first", "_ratio"], ascending=[False, False], kind="stable")


def shrink_failures(
    records: pd.DataFrame,
    implementations: Sequence[Implementation],
    cases: Mapping[str, Case],
    *,
    policy: Policy,
    caller: Caller,
    seconds: float,
) -> Reproducers:
    """Shrink a minimal reproducer for each failing cell of an audit, within ``seconds`` in all.

    ``cases``: the audit's cases by id (every failing case must be there; one that is not
    is reported as not shrunk). Returns the reproducers' table and the shrunk cases.
    """
    by_name = {impl.name: impl for impl in implementations}
    cells = _failing_cells(records, policy).to_dict(orient="records")
    rows, shrunk = [], {}
    start = time.perf_counter()
    interrupted = False
    first_pass = sum(cell["_first"] for cell in cells)
    for index, cell in enumerate(cells):
        row = {
            "impl": cell["impl"], "dtype": cell["dtype"], "regime": cell["regime"], "outcome": cell["outcome"],
            "verdict": cell["verdict"], "worst_case": cell["case_id"], "worst_allowance_ratio": cell["_ratio"],
            "status": "not shrunk: time budget spent",
        }  # fmt: skip
        rows.append(row)
        left = seconds - (time.perf_counter() - start)
        subject, case = by_name.get(cell["impl"]), cases.get(cell["_start"])
        interrupted = interrupted or interrupts.requested()  # checked between cells; minimize checks per try
        if left <= 0 or interrupted:
            continue
        if subject is None or case is None:
            row["status"] = "not shrunk: its failing case is not stored"
            continue
        # an even share of what is left: the first pass's cells among themselves, then the rest
        share = first_pass - index if cell["_first"] else len(cells) - index
        budget = min(CELL_SHRINK_SECONDS, left / max(share, 1))
        try:
            fails = same_failure(subject, cell["outcome"], policy, caller)
            record = fails(case)
            if record is None:
                row["status"] = "not reproduced: the implementation passed its failing case again"
                continue
            found = minimize(case, record, fails, seconds=budget)
        except KeyboardInterrupt:
            interrupted = True
            continue
        shrunk[found.case.case_id] = found.case
        status = "shrunk" if found.reduced else "minimal as drawn"
        if not found.complete:
            status += " (time budget spent)"
        row.update(
            status=status, reproducer=found.case.case_id, shape=str(tuple(found.case.logits.shape)),
            targets=_targets_text(found.case), output=found.record["output"], output_bits=found.record["output_bits"],
            oracle=found.record["oracle"], ulps=found.record["ulps"], allowance_ratio=found.record["allowance_ratio"],
        )  # fmt: skip
    table = pd.DataFrame(rows, columns=list(REPRODUCER_COLUMNS))
    return Reproducers(table, shrunk, interrupted)


def _targets_text(case: Case, limit: int = 16) -> str:
    targets = case.targets.reshape(-1).tolist()
    if len(targets) <= limit:
        return str(case.targets.tolist())
    return f"{len(targets)} targets, first {targets[:limit]}"
