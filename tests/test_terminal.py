"""What check and audit print (issue 17): short by default, everything with --verbose."""

from __future__ import annotations

import contextlib
import io

import pytest

from harness.cli import main

SMALL = ["--dtype", "float32", "--dtype", "float16", "--regime", "moderate", "--regime", "huge", "--examples", "4",
         "--max-classes", "64"]  # fmt: skip
# naive fails in every one of these cells: more counterexamples than are printed in full
FAILING = ["--dtype", "float32", "--dtype", "float16", "--regime", "huge", "--regime", "near_overflow", "--regime",
           "offset", "--examples", "4", "--max-classes", "64"]  # fmt: skip


def test_a_passing_check_prints_one_line_per_dtype_and_the_report(tmp_path, capsys):
    # the loss only: torch's own float16 backward is flagged (README "Gradients")
    assert main(["check", "tests.implementations.sound:torch_ce", *SMALL, "--no-grad", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("PASSED: ") and lines[-1] == f"report: {tmp_path / 'report.html'}"
    assert lines[-2].startswith("coverage: 0 of 16 cases had more than 4,096 classes")
    per_dtype = lines[1:-2]
    assert len(per_dtype) == 2 and [line.split()[0] for line in per_dtype] == ["float16", "float32"]
    for line in per_dtype:
        assert "ok" in line and "unstable" in line and "worst" in line and line.rstrip().endswith(" s")


def test_a_passing_check_with_gradients_prints_a_loss_and_a_gradient_line_per_dtype(tmp_path, capsys):
    assert main(["check", "tests.implementations.backward_probes:upcast", *SMALL, "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "loss: " in lines[0] and "gradient: " in lines[0]
    assert [line.split()[:2] for line in lines[1:-2]] == [
        ["float16", "loss"], ["float16", "gradient"], ["float32", "loss"], ["float32", "gradient"]
    ]  # fmt: skip


def test_a_failing_check_prints_counterexamples_first_then_where_then_a_hint(tmp_path, capsys):
    assert main(["check", "naive", *FAILING, "--no-grad", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAILED: naive")
    first_cx, where = out.index("counterexample "), out.index("Where the unstable")
    hint = out.index("Run with --verbose")
    assert first_cx < where < hint
    table = out[where:].splitlines()[1:]
    assert table[0].split()[:5] == ["dtype", "regime", "quantity", "unstable", "inaccurate"]
    assert any(line.split()[:2] == ["float16", "huge"] and "spurious" in line for line in table)
    assert out.count("\ncounterexample ") <= 3 and "more counterexamples" in out
    assert "Per regime, against torch" not in out


def test_verbose_check_prints_every_counterexample_and_the_torch_comparison(tmp_path, capsys):
    assert main(["check", "naive", *FAILING, "--verbose", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "Per regime, against torch" in out and "more counterexamples" not in out
    assert out.count("counterexample ") >= 4


@pytest.fixture(scope="module")
def audit_outputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit-text")
    args = ["audit", "--examples", "3", "--max-classes", "64", "--shrink-seconds", "2", "--out", str(folder),
            "--regime", "moderate", "--regime", "huge", "--regime", "masked"]  # fmt: skip
    outputs = {}
    for name, extra in (("default", []), ("verbose", ["--verbose"])):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            assert main([*args, *extra]) == 0
        outputs[name] = buffer.getvalue()
    return folder, outputs


def test_audit_prints_the_headline_and_the_path_in_under_60_lines(audit_outputs):
    folder, outputs = audit_outputs
    lines = outputs["default"].strip().splitlines()
    assert len(lines) < 60
    assert lines[-1] == f"report: {folder / 'report.html'}"
    header = next(line for line in lines if line.split()[:2] == ["impl", "dtype"])
    assert "unstable" in header and "worst" in header
    rows = [line.split() for line in lines if line.split() and line.split()[0] in {"stable", "naive", "torch"}]
    assert len(rows) == 12  # implementation × dtype


def test_verbose_audit_prints_the_summary_in_full(audit_outputs):
    folder, outputs = audit_outputs
    assert outputs["verbose"].startswith((folder / "summary.md").read_text().strip()[:200])
    assert len(outputs["verbose"].splitlines()) > len(outputs["default"].splitlines())
