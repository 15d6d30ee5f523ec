"""End to end: the CLI as a user runs it, reading back the files it wrote."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from harness.calling.registry import REGISTRY
from harness.cli import main
from harness.runner import TIMING_COLUMNS
from reports.store import load_cases

TINY = ["--examples", "2", "--max-classes", "64", "--quiet", "--shrink-seconds", "0"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    assert main(["audit", *TINY, "--regime", "huge", "--regime", "moderate", "--out", str(out)]) == 0
    return out


def test_audit_writes_every_file(report):
    for name in ("records.csv", "records.parquet", "summary.csv", "summary.md", "cases.jsonl", "manifest.json"):
        assert (report / name).is_file(), name
    manifest = json.loads((report / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["seed"] == 0
    assert set(manifest["versions"]) >= {"python", "torch", "hypothesis", "mpmath"}


def test_records_are_one_row_per_case_and_implementation(report):
    records = pd.read_csv(report / "records.csv")
    assert not records.duplicated(["case_id", "impl"]).any()
    assert set(records["impl"]) == set(REGISTRY.names())  # cross entropy and the softmax family, side by side
    assert set(records.loc[records["op"] != "cross_entropy", "op"]) == {"log_softmax", "softmax", "logsumexp"}
    assert set(records["dtype"]) == {"float16", "bfloat16", "float32", "float64"}
    assert records.equals(pd.read_parquet(report / "records.parquet")) or len(records) == len(
        pd.read_parquet(report / "records.parquet")
    )
    assert records["oracle_certified"].all()


def test_summary_tells_the_overflow_story(report):
    summary = pd.read_csv(report / "summary.csv")
    huge = summary[summary["regime"] == "huge"].set_index(["impl", "dtype"])
    nonfinite = huge[["spurious_inf", "spurious_nan"]].sum(axis=1)
    for dtype in ("float16", "bfloat16", "float32", "float64"):
        assert nonfinite[("naive", dtype)] > 0, dtype
        assert nonfinite[("stable", dtype)] == 0 and nonfinite[("torch", dtype)] == 0, dtype
    for column in ("cases", "max_ulps", "mean_ulps", "median_ulps", "p99_ulps", "max_rel_error", "worst_case"):
        assert column in summary.columns
    assert "# Cross-entropy audit" in (report / "summary.md").read_text()


def test_worst_cases_are_stored_and_replay_bit_for_bit(report, capsys):
    summary = pd.read_csv(report / "summary.csv")
    stored = load_cases(report)
    assert set(summary["worst_case"]) <= set(stored)
    case_id = summary.set_index(["impl", "dtype", "regime"]).loc[("naive", "float16", "huge"), "worst_case"]
    assert main(["replay", str(report), case_id]) == 0
    shown = capsys.readouterr().out
    assert shown.count("[same bits as recorded]") == len(REGISTRY) and "DIFFERS" not in shown


def test_same_seed_same_records(report, tmp_path):
    assert main(["audit", *TINY, "--regime", "huge", "--regime", "moderate", "--out", str(tmp_path)]) == 0
    timing = list(TIMING_COLUMNS)
    first = pd.read_csv(report / "records.csv").drop(columns=timing)
    second = pd.read_csv(tmp_path / "records.csv").drop(columns=timing)
    pd.testing.assert_frame_equal(first, second)
    assert (report / "summary.csv").read_text() == (tmp_path / "summary.csv").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["audit", "--dtype", "fp8"], "unknown dtype 'fp8'"),
        (["audit", "--regime", "nope"], "unknown regime 'nope'"),
        (["audit", "--examples", "0"], "positive integer"),
        (["audit", "--impl", "no_such"], "unknown implementation 'no_such'"),
        (["audit", "--impl", "nonexistent_module_xyz:fn"], "cannot load"),
        (["audit", "--impl", "stable", "--regime", "layout"], "regime 'layout' needs an implementation"),
        (["check", "naive", "--regime", "layout"], "regime 'layout' needs an implementation"),
        (["replay", "/nonexistent/report", "abc"], "not a report folder"),
        (["frobnicate"], "invalid choice"),
        # issue 12's bad uses: one line, exit 2, before any work
        (["check", "torch", "--max-classes", "1"], "integer >= 2"),
        (["audit", "--max-classes", "1"], "integer >= 2"),
        (["check", "torch", "--regime", "large_vocab", "--max-classes", "64"], "needs a class limit of at least 65"),
        (["audit", "--regime", "large_vocab", "--max-classes", "64"], "needs a class limit of at least 65"),
        (["check", "torch", "--save-baseline", "/nonexistent/folder/base.json"], "cannot write the baseline"),
        (["check", "torch", "--timeout", "inf"], "finite"),
        (["audit", "--timeout", "inf"], "finite"),
        (["check", "torch", "--compile-timeout", "0"], "positive number"),
        (["check", "torch", "--memory-limit", "-5"], "non-negative"),
        (["check", "torch", "--device", "meta"], "cannot run implementations on values"),
        (["audit", "--device", "meta"], "cannot run implementations on values"),
        (["check", "torch", "--framework", "tensorflow"], "invalid choice"),
        (["audit", "--impl", "torch", "--impl", "torch"], "named twice"),
        (["audit", "--impl", "tests.implementations.sound:torch_ce<b>"], "contains '<'"),
        (["check", "tests.implementations.sound:$torch_ce$"], "contains '$'"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["check", "torch"], ["audit"]])
def test_a_bogus_profile_in_the_environment_is_a_usage_error(command, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_PROFILE", "bogus")
    assert main([*command, "--examples", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown profile 'bogus'" in err and "\n" not in err


def test_a_run_that_grades_nothing_never_passes(tmp_path, monkeypatch, capsys):
    import harness.grading.expected
    from harness.oracle import OracleValue

    def undecided(logits, targets, *args, **kwargs):
        return [OracleValue(float("nan"), float("nan"), False, 4096, "mpmath") for _ in range(len(targets))]

    monkeypatch.setattr(harness.grading.expected, "loss_values", undecided)
    assert main(["check", "torch", "--dtype", "float32", "--regime", "moderate", "--examples", "2", "--quiet",
                 "--no-grad", "--out", str(tmp_path / "c")]) == 3  # fmt: skip
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "no case was graded" in captured.out + captured.err
    # cross entropy only: the softmax family's oracle would still grade its records
    assert main(_one_cell(tmp_path / "a", "--impl", "stable", "--impl", "torch")) == 3
    assert "no case was graded" in capsys.readouterr().err


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["audit", *TINY, "--out", str(blocker / "sub")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "harness", "audit", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--examples" in done.stdout


def _one_cell(out, *extra) -> list[str]:
    return ["audit", *TINY, "--dtype", "float32", "--regime", "moderate", "--out", str(out), *extra]


def test_a_report_file_that_cannot_be_written_is_a_tool_error(tmp_path, capsys):
    (tmp_path / "report.html").mkdir()  # os.replace cannot put a file there: like a permission error
    assert main(_one_cell(tmp_path)) == 3
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "report.html" in line]
    assert any(line.startswith("harness: TOOL ERROR: could not write") for line in lines) and "Traceback" not in err
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "partial"
    assert any("report.html" in error for error in manifest["tool_errors"])
    for name in ("records.csv", "records.parquet", "summary.csv", "summary.md", "cases.jsonl"):
        assert (tmp_path / name).is_file(), name  # every other file is kept


def test_a_missing_optional_dependency_while_writing_is_a_tool_error(tmp_path, capsys, monkeypatch):
    import harness.campaign.engine

    def missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'tabulate'")

    monkeypatch.setattr(harness.campaign.engine, "precision_markdown", missing)
    assert main(_one_cell(tmp_path, "--precision")) == 3
    err = capsys.readouterr().err
    assert "could not write" in err and "precision.md" in err and "Traceback" not in err
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "partial" and any("tabulate" in e for e in manifest["tool_errors"])
    assert (tmp_path / "precision.csv").is_file() and (tmp_path / "report.html").is_file()


def test_precision_audit_writes_its_tables(tmp_path, capsys):
    assert main(_one_cell(tmp_path, "--precision")) == 0
    text = (tmp_path / "precision.md").read_text()
    assert text.startswith("# Precision audit") and "| impl | dtype | regime |" in text
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "complete"


def test_a_failing_call_is_a_finding_not_a_tool_error(tmp_path, capsys):
    # a failed call's record has no oracle value: the oracle self-check must not pick it (it once did, exit 3)
    code = main(["check", "tests/implementations/hostile.py:raises_unprintable", "--dtype", "float32",
                 "--profile", "ci", "--regime", "moderate", "--out", str(tmp_path)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "TOOL ERROR" not in captured.err and "self-check" not in captured.out + captured.err
    assert "output  = none: the call ended as raised" in captured.out
    assert json.loads((tmp_path / "manifest.json").read_text())["tool_errors"] == []


def test_a_numpy_answer_with_a_negative_stride_is_read(tmp_path):
    source = tmp_path / "npimpl.py"
    source.write_text(
        "import numpy as np\n"
        "def neg_stride(l, t):\n"
        "    x = l.astype(np.float64); m = x.max(-1, keepdims=True)\n"
        "    r = (m[:, 0] + np.log(np.exp(x - m).sum(-1)) - x[np.arange(len(t)), t]).astype(l.dtype)\n"
        "    return r[::-1].copy()[::-1]\n"
    )
    code = main(["check", f"{source}:neg_stride", "--dtype", "float32", "--profile", "ci", "--regime", "moderate",
                 "--out", str(tmp_path / "out")])  # fmt: skip
    records = pd.read_csv(tmp_path / "out" / "records.csv")
    assert code == 0 and not records["outcome"].eq("raised").any()
