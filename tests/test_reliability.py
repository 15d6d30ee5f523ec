"""Fault injection: misbehaving implementations, bad usage, interruption, resume, self-checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import harness
from harness.calling.caller import Caller
from harness.calling.loading import load_implementation
from harness.cli import main
from harness.runner import TIMING_COLUMNS
from reports.store import atomic_write
from strategies import Case
from tests.implementations import faulty

CASE = Case(torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]]), torch.tensor([0, 2]), "moderate")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("name", "outcome", "message"),
    [
        ("raises", "raised", "RuntimeError: kernel exploded"),
        ("returns_list", "bad_output", "not a tensor"),
        ("wrong_shape", "bad_output", "shape (2, 2)"),
        ("wrong_dtype", "bad_output", "dtype torch.int64"),
        ("wrong_device", "bad_output", "meta"),
        ("mutates_input", "mutated_input", "in place"),
        ("nondeterministic", "nondeterministic", "differently"),
    ],
)
def test_misbehaviour_becomes_an_outcome(name, outcome, message):
    impl = load_implementation(f"tests.implementations.faulty:{name}")
    called = Caller(timeout=5).call(impl, CASE)
    assert called.failure == outcome and message in called.message
    result = harness.check(getattr(faulty, name), dtypes=["float32"], regimes=["moderate"], examples=3)
    assert not result.passed
    assert result.counterexamples[0].record["outcome"] == outcome


def test_a_hang_times_out_and_the_run_goes_on():
    hang = load_implementation("tests.implementations.faulty:hangs")
    good = load_implementation("torch")
    with Caller(timeout=0.3, compile_timeout=0.3) as caller:
        first = caller.call(hang, CASE)
        assert first.failure == "timeout" and "0.3 s" in first.message and "killed" in first.message
        second = caller.call(hang, CASE)  # a fresh sandbox, hung again: killed again, nothing piles up
        assert second.failure == "timeout" and caller._sandboxes[hang.name].starts == 2
        assert caller.call(good, CASE).failure is None


def test_check_reports_timeouts():
    result = harness.check(faulty.hangs, dtypes=["float32"], regimes=["moderate"], examples=2, timeout=0.2)
    assert not result.passed and set(result.records["outcome"]) == {"timeout"}


def test_caller_rejects_bad_timeouts():
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            Caller(timeout=bad)
    with pytest.raises(ValueError, match="memory limit"):
        Caller(memory_limit_mib=float("inf"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["audit", "--profile", "bogus"], "unknown profile 'bogus'"),
        (["audit", "--examples", "-3"], "positive integer"),
        (["audit", "--timeout", "0"], "positive number"),
        (["audit", "--max-classes", "0"], "positive integer"),
        (["check", "mod:"], "unknown implementation"),
        (["check", "torch", "--max-ulps", "-1"], "non-negative"),
        (["audit", "--resume", "/nonexistent"], "cannot resume"),
    ],
)
def test_bad_usage_is_one_line_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_corrupt_report_is_a_usage_error(tmp_path, capsys):
    assert main(["audit", "--impl", "stable", "--dtype", "float32", "--examples", "2", "--max-classes", "64",
                 "--regime", "huge", "--quiet", "--shrink-seconds", "0", "--out", str(tmp_path)]) == 0  # fmt: skip
    case_id = json.loads((tmp_path / "cases.jsonl").read_text().splitlines()[0])["case_id"]
    (tmp_path / "cases.jsonl").write_text('{"case_id": "x", "bits": "%%%"}\n')
    assert main(["replay", str(tmp_path), case_id]) == 2
    assert "corrupt case on line 1" in capsys.readouterr().err
    (tmp_path / "manifest.json").write_text("{")
    assert main(["replay", str(tmp_path), case_id]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_atomic_write_never_leaves_a_truncated_file(tmp_path, monkeypatch):
    target = tmp_path / "records.csv"
    atomic_write(target, "old\n")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write(target, "new\n")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["records.csv"]


def test_oracle_self_check_disagreement_is_a_tool_error(tmp_path, monkeypatch, capsys):
    import harness.oracle.core as oracle_module

    real = oracle_module.certify_rows

    def off_by_a_lot(logits, targets, fmt):
        certified, values, estimates = real(logits, targets, fmt)
        return certified, values * 2 + 1, estimates

    monkeypatch.setattr(oracle_module, "certify_rows", off_by_a_lot)
    code = main(["audit", "--impl", "stable", "--examples", "3", "--max-classes", "64", "--dtype", "float32",
                 "--regime", "moderate", "--quiet", "--shrink-seconds", "0", "--out", str(tmp_path)])  # fmt: skip
    assert code == 3
    assert "TOOL ERROR: oracle self-check" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["tool_errors"] and manifest["oracle_self_checked"] > 0


def test_oracle_self_check_covers_vocabulary_size_rows(tmp_path, monkeypatch, capsys):
    """A fault only on rows of more than 4096 classes (where a patched exp once hid) is caught too."""
    import harness.oracle.core as oracle_module

    real = oracle_module.certify_rows

    def wrong_on_large_rows(logits, targets, fmt):
        certified, values, estimates = real(logits, targets, fmt)
        return (certified, values * 2 + 1, estimates) if logits.shape[1] > 4096 else (certified, values, estimates)

    monkeypatch.setattr(oracle_module, "certify_rows", wrong_on_large_rows)
    code = main(["audit", "--impl", "torch", "--examples", "2", "--max-classes", "32768", "--dtype", "float32",
                 "--regime", "large_vocab", "--regime", "moderate", "--quiet", "--shrink-seconds", "0",
                 "--out", str(tmp_path)])  # fmt: skip
    assert code == 3
    errors = json.loads((tmp_path / "manifest.json").read_text())["tool_errors"]
    records = pd.read_csv(tmp_path / "records.csv", dtype={"case_id": str}).set_index("case_id")
    flagged = {e.split("case ")[1].split()[0] for e in errors if e.startswith("oracle self-check")}
    assert flagged and all(records.loc[[c], "n_classes"].iloc[0] > 4096 for c in flagged)


# eight cells of six cases, every call 20 ms or more: half a second after the first checkpoint, mid-run
SLOW_AUDIT = ["-m", "harness", "audit", "--impl", "tests.implementations.faulty:slow", "--dtype", "float32",
              "--dtype", "float64", "--regime", "moderate", "--regime", "huge", "--regime", "ties", "--regime",
              "masked", "--examples", "6", "--max-classes", "64", "--quiet", "--shrink-seconds", "0"]  # fmt: skip
TIMING = list(TIMING_COLUMNS)


def _records(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "records.csv").drop(columns=TIMING).reset_index(drop=True)


def _cells_done(folder: Path) -> int:
    try:
        return len(json.loads((folder / "manifest.json").read_text())["cells"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.parametrize("signum", [signal.SIGTERM])  # both signals, at random moments: tests/test_interrupts.py
def test_interrupted_audit_writes_a_partial_report_and_resumes(tmp_path, signum):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, *SLOW_AUDIT, "--out", str(out)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 60
    while not _cells_done(out) and time.time() < deadline:  # the first cell's checkpoint
        time.sleep(0.1)
    time.sleep(0.5)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "partial" and "PARTIAL" in (out / "summary.md").read_text()
    partial = _records(out)
    assert len(partial) > 0
    assert not list(out.glob(".*.tmp"))

    done = subprocess.run([sys.executable, "-m", "harness", "audit", "--resume", str(out), "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    resumed = json.loads((out / "manifest.json").read_text())
    assert resumed["status"] == "complete" and resumed["resumed_cells"] == len(manifest["cells"]) > 0

    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, *SLOW_AUDIT, "--out", str(fresh)], cwd=ROOT, check=True, capture_output=True,
                   timeout=300)  # fmt: skip
    pd.testing.assert_frame_equal(_records(out), _records(fresh))
