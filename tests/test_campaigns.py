"""Shards, merge and workers: a campaign split any way gives the single run's report."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from harness.cli import main
from harness.runner import TIMING_COLUMNS

SMALL = ["--dtype", "float32", "--dtype", "bfloat16", "--examples", "3", "--max-classes", "64", "--quiet",
         "--shrink-seconds", "0"]  # fmt: skip
TIMING = list(TIMING_COLUMNS)


def _records(folder) -> pd.DataFrame:
    return pd.read_csv(folder / "records.csv").drop(columns=TIMING)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert main(["audit", *SMALL, "--out", str(out)]) == 0
    return out


def test_merged_shards_equal_a_single_run(single, tmp_path):
    shards = [tmp_path / f"s{k}" for k in (1, 2, 3)]
    for k, folder in enumerate(shards, 1):
        assert main(["audit", *SMALL, "--shard", f"{k}/3", "--out", str(folder)]) == 0
    assert main(["merge", *map(str, reversed(shards)), "--out", str(tmp_path / "m"), "--quiet"]) == 0
    pd.testing.assert_frame_equal(_records(single), _records(tmp_path / "m"))
    assert (single / "summary.csv").read_text() == (tmp_path / "m" / "summary.csv").read_text()
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["status"] == "complete"


def test_missing_shard_gives_a_partial_merge(tmp_path):
    assert main(["audit", *SMALL, "--shard", "1/2", "--out", str(tmp_path / "a")]) == 0
    assert main(["merge", str(tmp_path / "a"), "--out", str(tmp_path / "m"), "--quiet"]) == 130
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["status"] == "partial"


def test_mismatched_shards_are_refused(tmp_path, capsys):
    assert main(["audit", *SMALL, "--shard", "1/2", "--out", str(tmp_path / "a")]) == 0
    assert main(["audit", *SMALL, "--seed", "5", "--shard", "2/2", "--out", str(tmp_path / "b")]) == 0
    assert main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]) == 2
    assert "seed" in capsys.readouterr().err


def test_workers_within_a_shard_then_merge_across_shards(single, tmp_path):
    # one machine runs shard 1 with a pool of two processes, another runs shard 2 plainly
    assert main(["audit", *SMALL, "--shard", "1/2", "--workers", "2", "--out", str(tmp_path / "a")]) == 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["shard"] == [1, 2]
    # one task per cell of the shard, each in its own folder, merged into the shard's report
    assert len(list((tmp_path / "a" / "cells").iterdir())) == len(manifest["completed_cells"]) > 1
    assert main(["audit", *SMALL, "--shard", "2/2", "--out", str(tmp_path / "b")]) == 0
    assert main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m"), "--quiet"]) == 0
    pd.testing.assert_frame_equal(_records(single), _records(tmp_path / "m"))


def test_workers_cannot_resume(single, capsys):
    assert main(["audit", "--resume", str(single), "--workers", "2"]) == 2  # refused before any work
    assert "--workers cannot resume" in capsys.readouterr().err


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
