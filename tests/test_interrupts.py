"""Interrupts are never lost (issue 16): a flag set by the signal handler, checked between cases.

The old handlers raised KeyboardInterrupt inside whatever code was running; in a garbage
collector callback (Hypothesis has one) that exception is printed and swallowed, and the
run went on. Here SIGINT or SIGTERM comes at four chosen moments of real runs (and, with
--run-slow, at random ones) and each run must stop with a partial report that resumes to
the uninterrupted records.
"""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness import interrupts
from harness.calling.caller import Caller
from harness.calling.loading import load_implementation
from harness.calling.registry import REGISTRY
from harness.cli import main
from harness.formats import FORMATS
from harness.profiles import resolve_profile
from harness.runner import TIMING_COLUMNS
from harness.search import search
from strategies import Case

ROOT = Path(__file__).resolve().parents[1]
TIMING = list(TIMING_COLUMNS)
# naive fails on huge and near_overflow, so a run has cells, checkpoints, shrinking and a final report
RUN = ["audit", "--impl", "stable", "--impl", "naive", "--dtype", "float32", "--dtype", "bfloat16", "--regime", "huge",
       "--regime", "moderate", "--regime", "near_overflow", "--examples", "5", "--max-classes", "256",
       "--shrink-seconds", "2", "--quiet"]  # fmt: skip


def test_a_signal_sets_the_flag_and_raises_nothing():
    previous = signal.getsignal(signal.SIGTERM)
    with interrupts.handling():
        assert not interrupts.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupts.wait(5) and interrupts.requested() and interrupts.reason() == "SIGTERM"
        with pytest.raises(interrupts.Interrupted, match="SIGTERM"):
            interrupts.check()
        # the API leaves a second signal to Python's usual KeyboardInterrupt
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is previous
    assert not interrupts.requested()  # the stop ended with its block: harness.check after it runs
    with interrupts.handling():
        interrupts.request("test")
        with interrupts.handling():  # nested: the same state
            assert interrupts.requested()
    with interrupts.handling():
        assert not interrupts.requested()  # a new run starts clean


def test_a_stop_request_abandons_a_call_in_its_sandbox():
    """A hung implementation with a long timeout: the stop request ends the wait at once (the
    sandbox is killed) instead of the call running to its timeout and coming back as 'timeout'."""
    hang = load_implementation("tests.implementations.faulty:hangs")
    case = Case(torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]]), torch.tensor([0, 2]), "moderate")
    with interrupts.handling(), Caller(timeout=300, compile_timeout=300) as caller:
        caller.start([hang])
        threading.Timer(1.0, interrupts.request, args=("test",)).start()
        with pytest.raises(interrupts.Interrupted, match="test"):
            caller.call(hang, case)
        sandbox = caller._sandboxes[hang.name]
        assert not sandbox.alive  # killed with the call it was running


def test_a_context_token_stops_only_its_own_context():
    token = threading.Event()
    with interrupts.watching(token):
        assert not interrupts.requested()
        token.set()
        assert interrupts.requested()
    assert not interrupts.requested()


def _signal_inside_a_gc_callback(after: int):
    """Send SIGTERM to this process from inside the ``after``-th garbage collection's callback."""
    count = [0]

    def callback(phase, info):
        if phase == "start":
            count[0] += 1
            if count[0] == after:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)  # the handler runs here, inside the callback

    gc.callbacks.append(callback)
    return callback


def _search():
    return search([FORMATS["float32"]], ["moderate", "huge"], [REGISTRY.get("stable")], profile=resolve_profile("ci"),
                  examples=40, max_classes=64, self_check=0, progress=False)  # fmt: skip


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_signal_inside_a_gc_callback_is_not_lost(capsys):
    def raising(signum, frame):  # the old handler
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raising)
    callback = _signal_inside_a_gc_callback(after=3)
    try:
        swallowed = _search()
    finally:
        gc.callbacks.remove(callback)
        signal.signal(signal.SIGTERM, previous)
    # the old way: the KeyboardInterrupt died in the callback and the search ran to its end
    assert not swallowed.interrupted and len(swallowed.completed_cells) == 2

    with interrupts.handling():
        callback = _signal_inside_a_gc_callback(after=3)
        try:
            stopped = _search()
        finally:
            gc.callbacks.remove(callback)
    assert stopped.interrupted and len(stopped.seen) < len(swallowed.seen)


def _records(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "records.csv").drop(columns=TIMING)


def _reference(root: Path) -> tuple[pd.DataFrame, float]:
    """The uninterrupted run's records, and how long it took (seconds)."""
    reference = root / "reference"
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "harness", *RUN, "--out", str(reference)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return _records(reference), time.monotonic() - start


def _stop_and_resume(out: Path, signum: int, when, expected: pd.DataFrame, where: str) -> str:
    """Run RUN into ``out``, send ``signum`` once ``when(out)`` returns, and check the stop: a partial
    report (exit 130) that resumes to ``expected``, or (the run was over) a complete one. Returns the stage."""
    process = subprocess.Popen([sys.executable, "-m", "harness", *RUN, "--out", str(out)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        when(out)
        process.send_signal(signum)
        _, err = process.communicate(timeout=120)  # a lost signal would let the run go on; it is short anyway
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    where = f"{where}: {signal.Signals(signum).name}"
    if process.returncode == 0:  # the run had finished before the signal came
        assert json.loads((out / "manifest.json").read_text())["status"] == "complete", where
        return "finished before the signal"
    assert process.returncode == 130, f"{where}: exit {process.returncode}: {err}"
    assert "Traceback" not in err and "Exception ignored" not in err, f"{where}: {err}"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "partial", where
    assert not list(out.glob(".*.tmp")), where
    assert main(["audit", "--resume", str(out), "--quiet"]) == 0, where
    pd.testing.assert_frame_equal(expected, _records(out), obj=where)
    if len(manifest["cells"]) < 6:
        return f"stopped after {len(manifest['cells'])} of 6 cells"
    return "stopped in the self-check, shrinking or final report"


def interrupt_loop(tries: int, root: Path, seed: int) -> dict[str, int]:
    """SIGINT or SIGTERM at a random moment of ``tries`` runs; each must stop with a partial report
    (exit 130) that resumes to the uninterrupted run's records. Returns the outcomes' counts."""
    rng = random.Random(seed)
    expected, length = _reference(root)
    outcomes: dict[str, int] = {}
    for attempt in range(tries):
        signum = rng.choice([signal.SIGINT, signal.SIGTERM])
        delay = rng.uniform(0.3, length)  # from interpreter start-up to the final report
        stage = _stop_and_resume(root / f"try{attempt}", signum, lambda out, delay=delay: time.sleep(delay),
                                 expected, f"try {attempt} at {delay:.1f} s")  # fmt: skip
        outcomes[stage] = outcomes.get(stage, 0) + 1
    return outcomes


def _until(out: Path, condition, seconds: float = 300) -> None:
    """Return as soon as the folder's manifest.json (atomically replaced at each checkpoint) meets ``condition``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition(json.loads((out / "manifest.json").read_text())):
                return
        except (OSError, ValueError):
            pass  # not written yet
        time.sleep(0.01)
    raise AssertionError(f"{out}: the run never reached the moment to signal")


def _before_the_first_cell(out: Path) -> None:
    _until(out, lambda manifest: True)  # written before any cell runs: the folder resumes from the start


def _in_the_second_cell(out: Path) -> None:
    _until(out, lambda manifest: len(manifest["cells"]) >= 1)  # the first cell's checkpoint: the second runs


def _in_shrinking(out: Path) -> None:
    # the checkpoint written after the self-check, just before shrinking starts
    _until(out, lambda manifest: len(manifest["cells"]) == 6 and manifest["oracle_self_checked"] > 0)


def _after_finishing(out: Path) -> None:
    _until(out, lambda manifest: manifest["status"] == "complete")  # the final report: the process is exiting


# four moments of a run, each with the stage a stop there must end in
MOMENTS = {
    "before the first cell": (_before_the_first_cell, signal.SIGINT, {"stopped after 0 of 6 cells"}),
    "mid-cell": (_in_the_second_cell, signal.SIGTERM, {f"stopped after {k} of 6 cells" for k in range(1, 6)}),
    "in shrinking": (_in_shrinking, signal.SIGINT, {"stopped in the self-check, shrinking or final report"}),
    "after finishing": (_after_finishing, signal.SIGTERM, {"finished before the signal"}),
}


def test_interrupts_at_four_moments_stop_and_resume(tmp_path):
    """The fast counterpart of the random-moment loops below: a stop before the first cell, in the
    second, while shrinking, and a signal after the final report, each in a real ``python -m harness``."""
    expected, _ = _reference(tmp_path)
    for moment, (when, signum, stages) in MOMENTS.items():
        stage = _stop_and_resume(tmp_path / moment.replace(" ", "-"), signum, when, expected, moment)
        assert stage in stages, f"{moment}: {stage}"


@pytest.mark.slow
def test_interrupts_at_random_moments_stop_and_resume(tmp_path):
    outcomes = interrupt_loop(8, tmp_path, seed=16)
    print(outcomes)
    assert sum(outcomes.values()) == 8
    assert sum(n for k, n in outcomes.items() if k.startswith("stopped")) >= 4  # most land mid-run


@pytest.mark.slow
def test_fifty_interrupts_at_random_moments(tmp_path):
    outcomes = interrupt_loop(50, tmp_path, seed=1616)
    print(outcomes)
    assert sum(outcomes.values()) == 50
