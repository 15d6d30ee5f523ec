"""An audit's reproducers: every failing (implementation, dtype) shrunk, running only that implementation."""

from __future__ import annotations

import pandas as pd
import torch

from harness.calling.caller import Caller
from harness.calling.loading import load_implementation
from harness.cli import main
from harness.grading.verdicts import Policy
from harness.runner import run_case
from harness.shrinking import shrink_failures
from reports.store import load_cases, load_records, load_reproducers
from strategies import Case


def test_every_failing_implementation_and_dtype_gets_a_shrunk_reproducer(tmp_path):
    kernel = "tests.implementations.tiled:no_rescale_1024"
    out = tmp_path / "a"
    assert main(["audit", "--impl", "naive", "--impl", kernel, "--regime", "tiled", "--regime", "huge",
                 "--regime", "large_vocab", "--examples", "6", "--max-classes", "20000", "--quiet",
                 "--out", str(out)]) == 0  # fmt: skip
    table, records, stored = load_reproducers(out), load_records(out), load_cases(out)
    failing = records[records["verdict"] == "unstable"]
    assert set(map(tuple, table[["impl", "dtype"]].values)) == set(map(tuple, failing[["impl", "dtype"]].values))
    for (impl, dtype), rows in table.groupby(["impl", "dtype"]):
        assert rows["status"].str.startswith(("shrunk", "minimal")).any(), (impl, dtype, rows["status"].tolist())
    for row in table[table["status"].str.startswith("shrunk")].to_dict(orient="records"):
        case, worst = stored[row["reproducer"]], stored[row["worst_case"]]
        assert case.logits.numel() <= worst.logits.numel()
        (again,) = run_case(case, [load_implementation(row["impl"])])
        assert again["outcome"] == row["outcome"] and again["output_bits"] == row["output_bits"]
    # the rescale bug needs only a tile of mass and a later, larger maximum: a row of a few tiles
    rescale = table[(table["impl"] == kernel) & table["status"].str.startswith("shrunk")]
    assert len(rescale) and all(stored[r].n_classes <= 4 * 1024 and stored[r].n_samples == 1
                                for r in rescale["reproducer"])  # fmt: skip


def test_a_failing_case_that_was_not_stored_is_reported_not_crashed():
    records = pd.DataFrame([{"impl": "naive", "dtype": "float32", "regime": "huge", "verdict": "unstable",
                             "outcome": "spurious_inf", "allowance_ratio": float("inf"), "case_id": "0123456789ab",
                             "n_samples": 1, "n_classes": 2}])  # fmt: skip
    found = shrink_failures(records, [load_implementation("naive")], {}, policy=Policy(), caller=Caller(), seconds=5)
    assert found.table["status"].tolist() == ["not shrunk: its failing case is not stored"]


def test_shrinking_starts_from_the_smallest_failing_case_of_a_cell():
    small = Case(torch.tensor([[100.0, 1.0]]), torch.tensor([1]), "huge")
    big = Case(torch.full((3, 40), 95.0), torch.tensor([0, 1, 2]), "huge")
    naive = load_implementation("naive")
    rows = [r for case in (big, small) for r in run_case(case, [naive])]
    found = shrink_failures(pd.DataFrame(rows), [naive], {small.case_id: small, big.case_id: big},
                            policy=Policy(), caller=Caller(), seconds=10)  # fmt: skip
    (row,) = found.table.to_dict(orient="records")
    assert row["status"].startswith(("shrunk", "minimal")) and found.cases[row["reproducer"]].logits.numel() <= 2
