"""Minimal reproducers for an audit's failures.

An audit keeps every case it draws, so Hypothesis never shrinks anything there. Here,
afterwards, each failing (implementation, dtype, regime) cell is searched again with
its own seed: the search retraces the audit's path (the same cases, the same target
scores) up to the first case on which that implementation fails the same way (the same
outcome), and Hypothesis shrinks that case, running only the implementation. The worst
failure of each (implementation, dtype) goes first; a time budget bounds the whole pass,
and what it does not reach is listed with its worst case, unshrunk.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from harness import interrupts
from harness.calling.caller import Caller
from harness.calling.registry import Implementation
from harness.formats import FORMATS
from harness.grading.verdicts import Policy
from harness.profiles import Profile
from harness.search import CELL_SHRINK_SECONDS, search
from strategies import Case, anchor_cases

__all__ = ["REPRODUCER_COLUMNS", "Reproducers", "shrink_failures"]

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


def _failing_cells(records: pd.DataFrame, policy: Policy) -> pd.DataFrame:
    """The worst failing record of each (impl, dtype, regime), each (impl, dtype)'s worst first."""
    failing = records[records["verdict"].map(policy.fails)]
    if failing.empty:
        return failing
    ranked = failing.assign(_ratio=failing["allowance_ratio"].fillna(float("inf")))
    worst = ranked.sort_values("_ratio", ascending=False, kind="stable").drop_duplicates(["impl", "dtype", "regime"])
    worst = worst.assign(_first=~worst.duplicated(["impl", "dtype"]))  # the worst of its (impl, dtype)
    return worst.sort_values(["_first", "_ratio"], ascending=[False, False], kind="stable")


def shrink_failures(
    records: pd.DataFrame,
    implementations: Sequence[Implementation],
    *,
    profile: Profile,
    seed: int,
    examples: int,
    max_classes: int,
    policy: Policy,
    caller: Caller,
    seconds: float,
) -> Reproducers:
    """Shrink a minimal reproducer for each failing cell of an audit, within ``seconds`` in all."""
    by_name = {impl.name: impl for impl in implementations}
    rows, cases = [], {}
    start = time.perf_counter()
    interrupted = False
    for worst in _failing_cells(records, policy).to_dict(orient="records"):
        row = {
            "impl": worst["impl"], "dtype": worst["dtype"], "regime": worst["regime"], "outcome": worst["outcome"],
            "verdict": worst["verdict"], "worst_case": worst["case_id"], "worst_allowance_ratio": worst["_ratio"],
            "status": "not shrunk: time budget spent",
        }  # fmt: skip
        left = seconds - (time.perf_counter() - start)
        subject = by_name.get(worst["impl"])
        interrupted = interrupted or interrupts.requested()  # checked between cells; search checks per case
        if left > 0 and subject is not None and not interrupted:

            def same_failure(record: dict, name=worst["impl"], outcome=worst["outcome"]) -> bool:
                # a call skipped after repeated sandbox deaths (see Caller) says nothing about its case
                return (record["impl"] == name and record["outcome"] == outcome and policy.fails(record["verdict"])
                        and not str(record["message"]).startswith("skipped:"))  # fmt: skip

            found = search(
                [FORMATS[worst["dtype"]]], [worst["regime"]], implementations, profile=profile, seed=seed,
                examples=examples, max_classes=max_classes, policy=policy, fails=same_failure, subject=subject,
                shrink_seconds=min(left, CELL_SHRINK_SECONDS), caller=caller, self_check=0, progress=False,
            )  # fmt: skip
            interrupted = found.interrupted
            if found.counterexamples:
                cx = found.counterexamples[0]
                cases[cx.case.case_id] = cx.case
                anchors = {c.case_id for c in anchor_cases(worst["dtype"], worst["regime"], max_classes)}
                # Hypothesis does not shrink explicit examples: an anchor case comes back as it is
                status = "anchor case, kept as it is" if cx.case.case_id in anchors else "shrunk"
                row.update(
                    status=status, reproducer=cx.case.case_id, shape=str(tuple(cx.case.logits.shape)),
                    targets=str(cx.case.targets.tolist()), output=cx.record["output"],
                    output_bits=cx.record["output_bits"], oracle=cx.record["oracle"], ulps=cx.record["ulps"],
                    allowance_ratio=cx.record["allowance_ratio"],
                )  # fmt: skip
            elif not interrupted:
                row["status"] = "not reproduced on a second search"  # e.g. a nondeterministic implementation
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(REPRODUCER_COLUMNS))
    return Reproducers(table, cases, interrupted)
