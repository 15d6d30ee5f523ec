"""Shards, strict merges and executors: a campaign split or run any way gives the single run's report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from harness.campaign.executors import InProcess, make_executor
from harness.campaign.settings import SettingsError
from harness.cli import main
from harness.runner import TIMING_COLUMNS

# three regimes of two dtypes: six cells, enough for shards, pools and clusters to split; three of the
# nine built-ins (two ops, one failing): every pool or Dask worker starts a sandbox per implementation
SMALL = ["--impl", "stable", "--impl", "naive", "--impl", "naive.log_softmax", "--dtype", "float32", "--dtype",
         "bfloat16", "--examples", "3", "--max-classes", "64", "--quiet", "--shrink-seconds", "0", "--regime",
         "moderate", "--regime", "huge", "--regime", "masked"]  # fmt: skip
TIMING = list(TIMING_COLUMNS)


def _records(folder) -> pd.DataFrame:
    return pd.read_csv(folder / "records.csv").drop(columns=TIMING)


def _manifest(folder) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert main(["audit", *SMALL, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """Shards 1/2 and 2/2 of SMALL's campaign."""
    root = tmp_path_factory.mktemp("halves")
    for k in (1, 2):
        assert main(["audit", *SMALL, "--shard", f"{k}/2", "--out", str(root / f"s{k}")]) == 0
    return root / "s1", root / "s2"


def test_merged_shards_equal_a_single_run(single, tmp_path):
    shards = [tmp_path / f"s{k}" for k in (1, 2, 3)]
    for k, folder in enumerate(shards, 1):
        assert main(["audit", *SMALL, "--shard", f"{k}/3", "--out", str(folder)]) == 0
    assert main(["merge", *map(str, reversed(shards)), "--out", str(tmp_path / "m"), "--quiet"]) == 0
    pd.testing.assert_frame_equal(_records(single), _records(tmp_path / "m"))
    assert (single / "summary.csv").read_text() == (tmp_path / "m" / "summary.csv").read_text()
    merged = _manifest(tmp_path / "m")
    assert merged["status"] == "complete" and merged["campaign"] == _manifest(single)["campaign"]
    assert [c["sha256"] for c in merged["cells"]] == [c["sha256"] for c in _manifest(single)["cells"]]


def test_a_partial_merge_resumes_to_the_single_run(single, halves, tmp_path):
    merged = tmp_path / "m"
    assert main(["merge", str(halves[0]), "--out", str(merged), "--quiet"]) == 130
    manifest = _manifest(merged)
    assert manifest["status"] == "partial" and manifest["settings"]["shard"] == [1, 1]
    # the merged folder is a partial run of the whole campaign: --resume runs the missing cells
    assert main(["audit", "--resume", str(merged), "--quiet"]) == 0
    pd.testing.assert_frame_equal(_records(single), _records(merged))


def test_mismatched_shards_are_refused(halves, tmp_path, capsys):
    assert main(["audit", *SMALL, "--seed", "5", "--shard", "2/2", "--out", str(tmp_path / "b")]) == 0
    assert main(["merge", str(halves[0]), str(tmp_path / "b"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "another campaign" in err and "seed" in err and str(tmp_path / "b") in err
    assert not (tmp_path / "m" / "manifest.json").exists()


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _drop_column(folder):
    records = pd.read_csv(folder / "records.csv")
    records.drop(columns=["regime"]).to_csv(folder / "records.csv", index=False)


def _truncate(folder):
    lines = (folder / "records.csv").read_text().splitlines(keepends=True)
    (folder / "records.csv").write_text("".join(lines[:-3]))


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("same folder twice", ["given twice"]),
        ("same shard twice", ["both hold cell", "the same shard twice"]),
        ("full run plus a shard", ["both hold cell"]),
        ("overlapping shards", ["both hold cell"]),
        ("shard missing a column", ["records.csv does not match its hash"]),
        ("truncated shard", ["records.csv does not match its hash"]),
        ("shard still being written", ["still being written by pid"]),
    ],
)
def test_merge_is_strict(case, words, single, halves, tmp_path, capsys):
    a, b = halves
    if case == "same folder twice":
        folders = [a, a, b]
    elif case == "same shard twice":
        folders = [a, _copy(a, tmp_path / "again"), b]
    elif case == "full run plus a shard":
        folders = [single, a]
    elif case == "overlapping shards":
        third = tmp_path / "third"
        assert main(["audit", *SMALL, "--shard", "1/3", "--out", str(third)]) == 0
        folders = [a, b, third]
    elif case in ("shard missing a column", "truncated shard"):
        broken = _copy(b, tmp_path / "broken")
        (_drop_column if case == "shard missing a column" else _truncate)(broken)
        folders = [a, broken]
    else:
        live = _copy(b, tmp_path / "live")
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            lock = {"pid": sleeper.pid, "host": __import__("socket").gethostname(), "command": "audit ...",
                    "started": "now"}  # fmt: skip
            (live / "harness.lock").write_text(json.dumps(lock))
            folders = [a, live]
            code = main(["merge", *map(str, folders), "--out", str(tmp_path / "m")])
        finally:
            sleeper.kill()
            sleeper.wait()
    if case != "shard still being written":
        capsys.readouterr()  # the setup's output
        code = main(["merge", *map(str, folders), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and all(w in err for w in words), err
    assert not (tmp_path / "m" / "manifest.json").exists()  # nothing written


def test_pool_within_a_shard_then_merge_across_shards(single, halves, tmp_path):
    # one machine runs shard 1 with a pool of two processes, another ran shard 2 plainly
    assert main(["audit", *SMALL, "--shard", "1/2", "--workers", "2", "--out", str(tmp_path / "a")]) == 0
    manifest = _manifest(tmp_path / "a")
    assert manifest["status"] == "complete" and manifest["shard"] == [1, 2]
    assert manifest["executor"] == {"name": "pool", "workers": 2}
    pd.testing.assert_frame_equal(_records(halves[0]), _records(tmp_path / "a"))
    assert main(["merge", str(tmp_path / "a"), str(halves[1]), "--out", str(tmp_path / "m"), "--quiet"]) == 0
    pd.testing.assert_frame_equal(_records(single), _records(tmp_path / "m"))


def test_dask_local_cluster_writes_the_single_runs_records(halves, tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "dask"  # a shard: half the cells, on a local cluster of two worker processes
    assert main(["audit", *SMALL, "--shard", "2/2", "--executor", "dask", "--workers", "2", "--out", str(out)]) == 0
    pd.testing.assert_frame_equal(_records(halves[1]), _records(out))
    assert (halves[1] / "summary.csv").read_text() == (out / "summary.csv").read_text()
    assert _manifest(out)["executor"]["name"] == "dask"


def test_any_dask_cluster_by_its_address(single, tmp_path):
    """A cluster started elsewhere (here in threads of this process) runs the cells by its scheduler's address."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        out = tmp_path / "remote"
        assert main(["audit", *SMALL, "--scheduler", c.scheduler_address, "--out", str(out)]) == 0
    pd.testing.assert_frame_equal(_records(single), _records(out))


def test_executor_choice():
    assert isinstance(make_executor(), InProcess)
    assert make_executor(workers=3).describe() == {"name": "pool", "workers": 3}
    with pytest.raises(SettingsError, match="needs the dask executor"):
        make_executor("pool", scheduler="tcp://nowhere:8786")
    with pytest.raises(SettingsError, match="unknown executor"):
        make_executor("slurm")


def test_unreachable_scheduler_is_one_line(tmp_path, capsys):
    dask = pytest.importorskip("dask")
    pytest.importorskip("distributed")
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code = main(["audit", *SMALL, "--scheduler", "tcp://127.0.0.1:9", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_dask_is_one_line(tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_dask(name, *args, **kwargs):
        if name.split(".")[0] in ("dask", "distributed"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dask)
    for module in [m for m in sys.modules if m.split(".")[0] in ("dask", "distributed")]:
        monkeypatch.delitem(sys.modules, module)
    assert main(["audit", *SMALL, "--executor", "dask", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'ce-harness[cluster]'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("bad", ["0/2", "3/2", "x", "1-2"])
def test_bad_shard_specs(bad, capsys):
    assert main(["audit", "--shard", bad]) == 2
    assert "K/N" in capsys.readouterr().err


def test_merge_keeps_every_shards_reproducers(tmp_path):
    from reports.store import load_cases, load_reproducers

    failing = ["--impl", "naive", "--dtype", "float32", "--regime", "huge", "--regime", "near_overflow",
               "--examples", "4", "--max-classes", "64", "--quiet", "--shrink-seconds", "10"]  # fmt: skip
    shards = [tmp_path / "a", tmp_path / "b"]
    for k, folder in enumerate(shards, 1):
        assert main(["audit", *failing, "--shard", f"{k}/2", "--out", str(folder)]) == 0
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "m"), "--quiet"]) == 0
    parts = pd.concat([load_reproducers(folder) for folder in shards], ignore_index=True)
    merged = load_reproducers(tmp_path / "m")
    assert sorted(merged["regime"]) == sorted(parts["regime"]) == ["huge", "near_overflow"]
    assert merged["worst_allowance_ratio"].is_monotonic_decreasing or merged["regime"].nunique() == 1
    stored = load_cases(tmp_path / "m")
    assert set(merged["reproducer"].dropna()) <= set(stored)


def test_python_api_runs_an_audit_like_the_cli(tmp_path):
    import harness

    report = harness.audit(["stable", "naive"], dtypes=["float32"], regimes=["moderate", "huge"], examples=3,
                           max_classes=64, shrink_seconds=0, out=tmp_path / "api")  # fmt: skip
    assert report.status == "complete" and report.exit_code == 0
    assert set(report.records["impl"]) == {"stable", "naive"} and (tmp_path / "api" / "report.html").is_file()
    cli = tmp_path / "cli"
    assert main(["audit", "--impl", "stable", "--impl", "naive", "--dtype", "float32", "--regime", "moderate",
                 "--regime", "huge", "--examples", "3", "--max-classes", "64", "--shrink-seconds", "0", "--quiet",
                 "--out", str(cli)]) == 0  # fmt: skip
    ours = report.records.drop(columns=list(TIMING_COLUMNS))
    theirs = pd.read_csv(cli / "records.csv", dtype={"output_bits": str}).drop(columns=list(TIMING_COLUMNS))
    assert list(ours["case_id"]) == list(theirs["case_id"]) and list(ours["verdict"]) == list(theirs["verdict"])


def test_python_api_rejects_bad_settings_in_one_line():
    import harness
    from harness.campaign.settings import SettingsError

    with pytest.raises(SettingsError, match="unknown regime 'bogus'"):
        harness.audit(regimes=["bogus"])


def test_python_callables_need_specs_off_this_process(tmp_path):
    import harness
    from harness.calling.registry import Implementation

    mine = Implementation("mine", lambda logits, targets: logits.logsumexp(-1) - logits[range(len(targets)), targets])
    with pytest.raises(SettingsError, match="needs implementations given as"):
        harness.audit([mine], dtypes=["float32"], regimes=["moderate"], examples=2, max_classes=8,
                      shrink_seconds=0, out=tmp_path / "x", executor="pool", workers=2)  # fmt: skip
