"""check --case and check(case=...): grading exactly the user's own input."""

from __future__ import annotations

import json
import math

import pytest
import torch

import harness
from harness.calling.loading import load_implementation
from harness.cli import main
from harness.runner import run_case
from harness.user_case import CaseError, load_case
from strategies import Case, apply_layout
from tests.implementations import mutants, sound, tiled

MASKED = torch.zeros(2, 9_000)
MASKED[:, :4_096] = -math.inf
MASKED[1, 5_000] = 3.0


def _save(path, **data):
    torch.save(data, path)
    return str(path)


def test_the_given_input_gets_the_verdict_a_search_would_give_it():
    case = Case(MASKED.clone(), torch.tensor([4_097, 5_000]), "tiled")
    result = harness.check(tiled.no_inf_guard_4096, case=(MASKED, torch.tensor([4_097, 5_000])), grad=False)
    assert not result.passed and len(result.records) == 1 and len(result.reference) == 1
    (cx,) = result.counterexamples
    assert cx.case.case_id == case.case_id  # the same bits: the same case, whatever its label
    assert torch.equal(cx.case.logits, case.logits) and cx.case.regime == "user"
    record = result.records.iloc[0]
    (searched,) = run_case(cx.case, [load_implementation(f"{tiled.__file__}:no_inf_guard_4096")])
    assert (searched["outcome"], searched["output_bits"]) == (record["outcome"], record["output_bits"])
    assert record["outcome"] == "spurious_nan" and record["verdict"] == "unstable"
    assert "counterexample" in result.describe() and "-inf at 4,096 positions" in result.describe()
    assert harness.check(tiled.sound_4096, case={"logits": MASKED, "targets": torch.tensor([4_097, 5_000])}).passed


def test_the_layout_of_the_given_logits_is_kept():
    values = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    laid = apply_layout(values, "transposed")
    result = harness.check(mutants.ignores_strides, case=(laid, torch.tensor([0, 1, 2])))
    assert not result.passed  # handed (1, 3) strides, it reads the wrong values
    assert harness.check(mutants.ignores_strides, case=(values, torch.tensor([0, 1, 2]))).passed
    with pytest.raises(ValueError, match="contiguous_only"):
        harness.check(mutants.ignores_strides, case=(laid, torch.tensor([0, 1, 2])), contiguous_only=True)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"logits": torch.zeros(2, 3)}, "lacks 'targets'"),
        ({"logits": torch.zeros(2, 3), "targets": torch.tensor([0, 1]), "weight": 1}, "unknown key 'weight'"),
        ({"logits": torch.zeros(2, 3, dtype=torch.int32), "targets": torch.tensor([0, 1])}, "logits must be"),
        ({"logits": torch.zeros(2, 3), "targets": torch.tensor([0])}, "targets must have shape"),
        ({"logits": torch.zeros(2, 3), "targets": torch.tensor([0.0, 1.0])}, "targets must be integers"),
        ({"logits": torch.zeros(2, 3), "targets": torch.tensor([0, 3])}, "outside"),
        ({"logits": torch.zeros(2, 3), "targets": torch.tensor([0, -100])}, "ignore_index"),
        ({"logits": torch.zeros(3), "targets": torch.tensor([0])}, "must be \\(N, C\\)"),
    ],
)
def test_inputs_that_cannot_be_graded_name_the_problem(data, message):
    with pytest.raises(CaseError, match=message):
        load_case(data)
    with pytest.raises(ValueError, match=message):
        harness.check(sound.torch_ce, case=data)


def test_search_options_and_a_case_do_not_mix():
    with pytest.raises(ValueError, match="leave out dtypes"):
        harness.check(sound.torch_ce, case=(torch.zeros(1, 2), torch.tensor([0])), dtypes=["float32"])
    with pytest.raises(ValueError, match="only \\(N, C\\) logits"):
        harness.check(sound.upcast_float32, case=(torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.int64)))


def test_check_case_command_exit_codes_and_report(tmp_path, capsys):
    good = _save(tmp_path / "case.pt", logits=MASKED, targets=torch.tensor([4_097, 5_000]))
    bad = tiled.__file__ + ":no_inf_guard_4096"
    assert main(["check", bad, "--case", good, "--out", str(tmp_path / "r1")]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "on 1 cases" in out and "spurious_nan" in out and "replay" in out
    manifest = json.loads((tmp_path / "r1" / "manifest.json").read_text())
    assert manifest["passed"] is False and manifest["case"] == good
    case_id = manifest["case_id"]
    # the stored case grades the same from the report, and a sound kernel passes it
    assert main(["check", tiled.__file__ + ":sound_4096", "--case", f"{tmp_path / 'r1'}:{case_id}",
                 "--out", str(tmp_path / "r2")]) == 0  # fmt: skip
    assert main(["check", bad, "--case", f"{tmp_path / 'r1'}:{case_id}", "--out", str(tmp_path / "r3")]) == 1
    capsys.readouterr()
    # usage errors: exit 2 with one line
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a torch file")
    for args in (["--case", str(broken)], ["--case", str(tmp_path / "missing.pt")],
                 ["--case", good, "--dtype", "float16"], ["--case", f"{tmp_path / 'r1'}:0123456789ab"],
                 ["--case", _save(tmp_path / "list.pt", logits=[1.0], targets=[0])]):  # fmt: skip
        assert main(["check", bad, *args, "--out", str(tmp_path / "r4")]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("harness: error:") and len(err.strip().splitlines()) == 1, err


def test_replay_works_from_any_working_directory(tmp_path, monkeypatch, capsys):
    good = _save(tmp_path / "case.pt", logits=MASKED, targets=torch.tensor([4_097, 5_000]))
    kernel = tmp_path / "kernels" / "mine.py"
    kernel.parent.mkdir()
    kernel.write_text("from tests.implementations.tiled import no_inf_guard_1024 as ce\n")
    monkeypatch.chdir(tmp_path / "kernels")
    assert main(["check", "mine.py:ce", "--case", good, "--out", str(tmp_path / "r")]) == 1
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["implementations"][0]["source"] == f"{kernel}:ce"  # stored absolute
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(["replay", str(tmp_path / "r"), manifest["case_id"]]) == 0
    out = capsys.readouterr().out
    assert "[same bits as recorded]" in out and "-inf at 4,096 positions in 1 run" in out and "4096-aligned" in out
