"""Campaigns that never lose or duplicate work (issue 16): exact resume on every executor, content hashes,
one writer per folder, workers killed mid-cell, and no orphans when the parent is killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from harness import interrupts
from harness.campaign.engine import audit, resume_audit
from harness.campaign.executors import Executor, make_executor
from harness.campaign.integrity import campaign_id
from harness.campaign.lock import LOCK_FILE
from harness.campaign.settings import AuditSettings, SettingsError, audit_settings
from harness.cli import main
from harness.runner import TIMING_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
TIMING = list(TIMING_COLUMNS)
# six cells, two of them float64 (the cells dies_in_worker kills)
CAMPAIGN = {"dtypes": ["float32", "float64"], "regimes": ["moderate", "huge", "ties"], "examples": 3,
            "max_classes": 64, "shrink_seconds": 0}  # fmt: skip
CLI = ["--dtype", "float32", "--dtype", "float64", "--regime", "moderate", "--regime", "huge", "--regime", "ties",
       "--examples", "3", "--max-classes", "64", "--shrink-seconds", "0", "--quiet"]  # fmt: skip


def _records(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "records.csv").drop(columns=TIMING)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


class StopAfter(Executor):
    """Another executor, with a stop request (as Ctrl-C makes) after its first ``cells`` results."""

    def __init__(self, inner: Executor, cells: int) -> None:
        self.inner, self.cells = inner, cells
        self.name, self.remote = inner.name, inner.remote

    def start(self):
        self.inner.start()

    def close(self):
        self.inner.close()

    def describe(self):
        return self.inner.describe()

    def run(self, settings, cells, implementations, on_case=None):
        for n, result in enumerate(self.inner.run(settings, cells, implementations, on_case), 1):
            yield result
            if n == self.cells:
                interrupts.request("test")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    report = audit(["stable", "naive"], out=out, **CAMPAIGN)
    assert report.exit_code == 0
    return out


@pytest.fixture(scope="module")
def dask_address():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        yield c.scheduler_address


def test_settings_round_trip_and_name_the_campaign():
    settings, _ = audit_settings(["stable", "naive"], dtypes=["float16"], regimes=["huge"], profile="ci", examples=7,
                                 max_classes=99, seed=3, max_ulps=0.5, strict=True, shard=(2, 5), timeout=1.5,
                                 shrink_seconds=2)  # fmt: skip
    again = AuditSettings.from_json(json.loads(json.dumps(settings.to_json())))
    assert again == settings
    precision, _ = audit_settings(precision=True)
    assert AuditSettings.from_json(precision.to_json()).load_implementations()[0].name == "pure_low_precision"
    # every setting that affects records names another campaign; the shard and shrinking time do not
    changes = ({"seed": 4}, {"max_ulps": 1.0}, {"strict": False}, {"examples": 8}, {"profile": "dev"},
               {"max_classes": 98}, {"timeout": 2.0}, {"implementations": ("stable",)},
               {"precision": True})  # fmt: skip
    for change in changes:
        assert campaign_id(settings.replace(**change)) != campaign_id(settings), change
    assert campaign_id(settings.replace(shard=(1, 1), shrink_seconds=30)) == campaign_id(settings)
    data = settings.to_json()
    with pytest.raises(SettingsError, match="lack max_ulps"):
        AuditSettings.from_json({k: v for k, v in data.items() if k != "max_ulps"})
    with pytest.raises(SettingsError, match="unknown settings bogus"):
        AuditSettings.from_json({**data, "bogus": 1})


@pytest.mark.parametrize("executor", ["inprocess", "pool", "dask"])
def test_interrupted_runs_resume_to_the_single_run_on_every_executor(executor, single, dask_address, tmp_path):
    def make():
        if executor == "dask":
            return make_executor("dask", scheduler=dask_address)
        return make_executor(executor, workers=2 if executor == "pool" else None)

    out = tmp_path / "run"
    stopped = audit(["stable", "naive"], out=out, executor=StopAfter(make(), 2), **CAMPAIGN)
    assert stopped.exit_code == 130 and stopped.status == "partial"
    manifest = _manifest(out)
    assert manifest["status"] == "partial" and 2 <= len(manifest["cells"]) < 6
    assert manifest["executor"]["name"] == executor
    resumed = resume_audit(out, executor=make())
    assert resumed.exit_code == 0 and resumed.status == "complete"
    assert _manifest(out)["resumed_cells"] == len(manifest["cells"])
    pd.testing.assert_frame_equal(_records(single), _records(out))
    assert [c["sha256"] for c in _manifest(out)["cells"]] == [c["sha256"] for c in _manifest(single)["cells"]]


def test_resume_keeps_max_ulps_strict_and_precision(tmp_path):
    out = tmp_path / "precision"
    stopped = audit(precision=True, dtypes=["bfloat16"], regimes=["moderate", "huge"], examples=3, max_classes=64,
                    max_ulps=0, strict=True, shrink_seconds=0, out=out,
                    executor=StopAfter(make_executor(), 1))  # fmt: skip
    assert stopped.exit_code == 130
    assert main(["audit", "--resume", str(out), "--quiet"]) == 0
    resumed = _manifest(out)
    assert resumed["settings"]["max_ulps"] == 0 and resumed["settings"]["strict"] and resumed["precision"]
    assert (out / "precision.md").is_file()
    fresh = tmp_path / "fresh"
    assert main(["audit", "--precision", "--dtype", "bfloat16", "--regime", "moderate", "--regime", "huge",
                 "--examples", "3", "--max-classes", "64", "--max-ulps", "0", "--strict", "--shrink-seconds", "0",
                 "--quiet", "--out", str(fresh)]) == 0  # fmt: skip
    pd.testing.assert_frame_equal(_records(fresh), _records(out))
    assert (_records(out)["verdict"] == "inaccurate").any()  # max_ulps 0 changed verdicts, and it held


def test_resume_of_a_shard_runs_that_shard_only(tmp_path):
    out = tmp_path / "shard"
    stopped = audit(["stable"], shard=(2, 3), out=out, executor=StopAfter(make_executor(), 1), **CAMPAIGN)
    assert stopped.exit_code == 130
    assert main(["audit", "--resume", str(out), "--quiet"]) == 0
    manifest = _manifest(out)
    assert manifest["settings"]["shard"] == [2, 3] and manifest["shard"] == [2, 3]
    expected = AuditSettings.from_json(manifest["settings"]).shard_cells()
    assert [(c["dtype"], c["regime"]) for c in manifest["cells"]] == expected and len(expected) == 2


def test_resume_refuses_other_settings(single, capsys):
    assert main(["audit", "--resume", str(single), "--max-ulps", "2"]) == 2
    assert "drop --max-ulps" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate records.csv", "records.csv does not match its hash"),
        ("edit cases.jsonl", "cases.jsonl does not match its hash"),
        ("delete records.csv", "records.csv is missing"),
        ("strip the hashes", "no content hashes"),
        ("corrupt the manifest", "corrupt manifest.json"),
    ],
)
def test_resume_refuses_a_damaged_folder(damage, message, tmp_path, capsys):
    out = tmp_path / "run"
    audit(["stable"], out=out, executor=StopAfter(make_executor(), 3), **CAMPAIGN)
    if damage == "truncate records.csv":
        lines = (out / "records.csv").read_text().splitlines(keepends=True)
        (out / "records.csv").write_text("".join(lines[:-5]))
    elif damage == "edit cases.jsonl":
        (out / "cases.jsonl").write_text((out / "cases.jsonl").read_text().replace("1", "2", 1))
    elif damage == "delete records.csv":
        (out / "records.csv").unlink()
    elif damage == "strip the hashes":
        manifest = _manifest(out)
        del manifest["files"]
        (out / "manifest.json").write_text(json.dumps(manifest))
    else:
        (out / "manifest.json").write_text("{not json")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["audit", "--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and str(out) in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # refused before touching anything


def test_resume_of_a_complete_folder_changes_nothing(single):
    before = (single / "manifest.json").read_bytes()
    assert main(["audit", "--resume", str(single), "--quiet"]) == 0
    assert (single / "manifest.json").read_bytes() == before


def _slow_audit(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "audit", "--impl", "tests.implementations.faulty:slow", *CLI, *extra,
         "--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for(path: Path, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert path.exists(), path


def test_a_second_run_on_the_same_folder_refuses_to_start(tmp_path, capsys):
    out = tmp_path / "run"
    first = _slow_audit(out)
    try:
        _wait_for(out / "manifest.json")
        assert main(["audit", "--impl", "stable", *CLI, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"is in use by pid {first.pid} on {socket.gethostname()}" in err and "--force" in err
        assert "tests.implementations.faulty:slow" in err  # the holder's command
        assert main(["audit", "--resume", str(out)]) == 2  # resuming it too
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 130 and not (out / LOCK_FILE).exists()


def test_a_stale_lock_is_taken_over_and_force_takes_a_live_one(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "command": "x",
                                               "started": "then"}))  # fmt: skip
    assert main(["audit", "--impl", "stable", *CLI, "--regime", "moderate", "--out", str(stale)]) == 0
    assert not (stale / LOCK_FILE).exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "another-host", "command": "y", "started": "t"}))
    assert main(["audit", "--impl", "stable", *CLI, "--out", str(elsewhere)]) == 2
    assert "in use by pid 1 on another-host" in capsys.readouterr().err
    assert main(["audit", "--impl", "stable", *CLI, "--out", str(elsewhere), "--force"]) == 0


@pytest.mark.parametrize("executor", ["pool", pytest.param("dask", marks=pytest.mark.slow)])
def test_a_worker_killed_mid_cell_is_retried_once(executor, tmp_path, monkeypatch):
    """The OOM killer's SIGKILL: a cell whose worker dies once runs again on another worker, and the
    records equal a single run's; one that kills every worker it runs on is a tool error for that cell only."""
    if executor == "dask":
        pytest.importorskip("distributed")
    impls = ["stable", "tests.implementations.faulty:dies_in_worker"]
    small = {**CAMPAIGN, "regimes": ["moderate"]}  # a float32 cell, and a float64 one, which it kills
    monkeypatch.setenv("HARNESS_TEST_MAIN_PID", str(os.getpid()))  # its sandboxes' parent here: never killed
    reference = audit(impls, out=tmp_path / "inprocess", **small)
    assert reference.exit_code == 0
    expected = _records(tmp_path / "inprocess")

    with monkeypatch.context() as env:
        env.setenv("HARNESS_TEST_DIE_ONCE", str(tmp_path / "died-once"))  # the workers inherit it
        once = audit(impls, out=tmp_path / "once", executor=executor, workers=2, **small)
    assert (tmp_path / "died-once").exists()  # a worker did die
    assert once.exit_code == 0 and once.status == "complete", once.tool_errors
    pd.testing.assert_frame_equal(expected, _records(tmp_path / "once"))

    always = audit(impls, out=tmp_path / "always", executor=executor, workers=2, **small)
    assert always.exit_code == 3 and always.status == "partial"
    manifest = _manifest(tmp_path / "always")
    assert manifest["failed_cells"] == [["float64", "moderate"]]
    assert len(manifest["tool_errors"]) == 1 and "died" in manifest["tool_errors"][0]
    if executor == "pool":
        assert "died on each of its 2 attempts (killed by SIGKILL" in manifest["tool_errors"][0]
    pd.testing.assert_frame_equal(_records(tmp_path / "always"),
                                  expected[expected["dtype"] == "float32"].reset_index(drop=True))  # fmt: skip
    # the failed cells are not finished: a resume runs them again (here they die again)
    assert [(c["dtype"], c["regime"]) for c in manifest["cells"]] == [("float32", "moderate")]


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("executor", ["pool", pytest.param("dask", marks=pytest.mark.slow)])
def test_killing_the_parent_leaves_no_orphaned_workers(executor, tmp_path):
    out = tmp_path / "run"
    # cells of minutes: a worker that only noticed its parent's death between cells would outlive it
    parent = subprocess.Popen(
        [sys.executable, "-m", "harness", "audit", "--impl", "tests.implementations.faulty:slow", "--dtype",
         "float32", "--regime", "moderate", "--regime", "huge", "--examples", "5000", "--max-classes", "64",
         "--quiet", "--executor", executor, "--workers", "2", "--out", str(out)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 120
    while len([k for k in _children(parent.pid) if _alive(k)]) < 2 and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # the workers are busy with their cells, their implementations in sandboxes
    workers = [p.pid for p in psutil.Process(parent.pid).children(recursive=True)]
    assert len(workers) >= 4  # two workers, and each one's sandbox (Dask: the nannies too)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while any(_alive(k) for k in workers) and time.time() < deadline:
        time.sleep(0.1)
    left = [k for k in workers if _alive(k)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"orphaned workers: {left}"
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == parent.pid  # stale now: the next run takes it
