"""check() and the check command: the API, counterexamples, baselines, devices and the layout regime."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import harness
from harness.cli import main
from tests.implementations import mutants, sound


def test_check_api_result_and_shrunk_counterexample():
    result = harness.check(mutants.rounded_lse_then_subtract, dtypes=["float32"], regimes=["offset"], examples=15)
    assert not result.passed and result.counts["unstable"] >= 1
    (cx,) = result.counterexamples
    assert cx.case.regime == "offset" and cx.case.logits.shape[1] <= 4  # shrunk to a tiny row
    text = result.describe(replay_dir="out")
    assert "counterexample" in text and "python -m harness replay out" in text
    assert result.worst_cases(2)["verdict"].iloc[0] == "unstable"
    assert set(result.versus_reference()["versus_torch"]) <= {"better", "same", "worse"}


def test_assert_stable_raises_with_the_counterexample():
    with pytest.raises(AssertionError, match="counterexample"):
        harness.assert_stable(mutants.no_max_shift, dtypes=["float32"], regimes=["huge"], examples=10)
    assert harness.assert_stable(sound.torch_ce, dtypes=["float64"], regimes=["moderate"], examples=10).passed


def test_mean_reduction_is_recognised():
    result = harness.check(sound.cross_entropy_from_scratch, dtypes=["float64"], regimes=["moderate"], examples=10)
    assert result.passed and set(result.records["reduction"]) == {"mean"}


def _raises(logits, targets):
    raise RuntimeError("kernel exploded")


def _wrong_shape(logits, targets):
    return torch.zeros(logits.shape[0], 2)


@pytest.mark.parametrize(("fn", "outcome", "message"), [(_raises, "raised", "kernel exploded"),
                                                         (_wrong_shape, "bad_output", "shape")])  # fmt: skip
def test_failing_implementations_are_outcomes_not_crashes(fn, outcome, message):
    result = harness.check(fn, dtypes=["float32"], regimes=["moderate"], examples=5)
    assert not result.passed
    record = result.counterexamples[0].record
    assert record["outcome"] == outcome and message in record["message"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown regime"):
        harness.check(sound.torch_ce, regimes=["bogus"])
    with pytest.raises(ValueError, match="unknown dtype"):
        harness.check(sound.torch_ce, dtypes=["fp8"])
    with pytest.raises(ValueError, match="unknown profile"):
        harness.check(sound.torch_ce, profile="huge")
    with pytest.raises(ValueError, match="examples"):
        harness.check(sound.torch_ce, examples=0)


SMALL = ["--dtype", "float32", "--regime", "moderate", "--regime", "huge", "--examples", "5", "--quiet"]


def test_check_command_exit_codes(tmp_path, capsys):
    assert main(["check", "tests.implementations.sound:torch_ce", *SMALL, "--out", str(tmp_path / "a")]) == 0
    assert main(["check", "naive", *SMALL, "--out", str(tmp_path / "b")]) == 1
    out = capsys.readouterr().out
    assert "FAILED: naive" in out and f"python -m harness replay {tmp_path / 'b'}" in out
    assert main(["check", "no_such_thing", *SMALL]) == 2
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["passed"] is False and manifest["counts"]["unstable"] > 0


def test_counterexample_replays_from_the_check_report(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["check", "naive", *SMALL, "--out", str(out)]) == 1
    case_id = capsys.readouterr().out.split("replay: python -m harness replay ")[1].split()[1]
    assert main(["replay", str(out), case_id]) == 0
    shown = capsys.readouterr().out
    assert "naive (cross_entropy" in shown and "[same bits as recorded]" in shown and "DIFFERS" not in shown


def test_baselines_save_compare_and_reject_bad_files(tmp_path, capsys):
    base = tmp_path / "base.json"
    spec = "tests.implementations.sound:upcast_float32"
    assert main(["check", spec, *SMALL, "--out", str(tmp_path / "o"), "--save-baseline", str(base)]) == 0
    assert main(["check", spec, *SMALL, "--out", str(tmp_path / "o"), "--baseline", str(base)]) == 0
    # a worse implementation on the same cases regresses against that baseline
    worse = "tests.implementations.mutants:silent_bfloat16"
    assert main(["check", worse, *SMALL, "--out", str(tmp_path / "o"), "--baseline", str(base)]) == 1
    assert "regressed" in capsys.readouterr().out
    # other cases: not comparable
    assert main(["check", spec, *SMALL, "--seed", "9", "--out", str(tmp_path / "o"), "--baseline", str(base)]) == 2
    assert "recorded on other cases" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    assert main(["check", spec, *SMALL, "--baseline", str(corrupt)]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert main(["check", spec, *SMALL, "--baseline", str(tmp_path / "missing.json")]) == 2


def test_unavailable_device_is_a_usage_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["check", "torch", *SMALL, "--device", "cuda"]) == 2
    assert "not available" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown device"):
        harness.check(sound.torch_ce, device="warp-drive")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_check_runs_the_implementation_on_cuda():
    seen = []

    def on_device(logits, targets):
        seen.append(logits.device.type)
        return F.cross_entropy(logits, targets, reduction="none")

    result = harness.check(on_device, dtypes=["float32"], regimes=["moderate"], examples=3, device="cuda")
    assert result.passed and set(seen) == {"cuda"}


def test_layout_regime_catches_a_layout_bug_and_spares_torch():
    """Only implementations declared k_dimensional get (N, C, d1, ...) cases (pytorch#85791)."""
    broken = harness.check(mutants.flatten_ignoring_layout, dtypes=["float32"], regimes=["layout"], examples=10)
    assert not broken.passed
    (cx,) = broken.counterexamples
    assert cx.case.logits.ndim >= 3 and cx.case.targets.shape == (cx.case.logits.shape[0], *cx.case.logits.shape[2:])
    sound_torch = harness.check(sound.torch_ce, dtypes=["float32"], regimes=["layout"], examples=10)
    assert sound_torch.passed and sound_torch.cases == 10  # the gradient of each (N, C, d1, ...) case too
    assert sorted(sound_torch.records["quantity"].value_counts().items()) == [("grad", 10), ("loss", 10)]


def test_layout_regime_needs_a_k_dimensional_implementation():
    with pytest.raises(ValueError, match="k_dimensional"):
        harness.check(mutants.no_max_shift, dtypes=["float32"], regimes=["layout"], examples=2)
    # by default the regime is simply left out for a 2-D-only implementation
    plain = harness.check(sound.cross_entropy_from_scratch, dtypes=["float64"], examples=2, max_classes=64)
    assert "layout" not in set(plain.records["regime"])
    declared = harness.check(sound.upcast_float32, dtypes=["float64"], regimes=["layout"], examples=3,
                             k_dimensional=True)  # fmt: skip
    assert set(declared.records["regime"]) == {"layout"} and declared.passed


def test_layout_output_must_have_the_targets_shape():
    def flattened(logits, targets):
        return F.cross_entropy(logits, targets, reduction="none").reshape(-1)

    flattened.k_dimensional = True
    result = harness.check(flattened, dtypes=["float64"], regimes=["layout"], examples=5)
    multi = result.records[result.records["n_samples"] > 1]
    assert len(multi) and (multi["outcome"] == "bad_output").all()
    assert multi["message"].str.contains("expected").all()


def test_strided_regime_hands_implementations_their_exact_layout(tmp_path):
    """The implementation receives the drawn strides and storage offset, not a contiguous clone."""
    log = tmp_path / "layouts.txt"  # the implementation runs in a sandbox process: it writes what it saw

    def recording(logits, targets):
        with open(log, "a") as out:
            out.write(f"{tuple(logits.stride())};{logits.storage_offset()};{logits.is_contiguous()}\n")
        return F.cross_entropy(logits, targets, reduction="none")

    result = harness.check(recording, dtypes=["float32"], regimes=["strided"], examples=12)
    seen = {tuple(line.split(";")) for line in log.read_text().splitlines()}
    drawn = {(str(tuple(c.logits.stride())), str(c.logits.storage_offset()), str(c.logits.is_contiguous()))
             for c in result.search.cases.values()}  # fmt: skip
    assert result.passed and seen == drawn and not any(contiguous == "True" for _, _, contiguous in seen)
    assert any(int(offset) > 0 for _, offset, _ in seen) and any(stride.startswith("(0,") for stride, _, _ in seen)
    broken = harness.check(mutants.ignores_strides, dtypes=["float32"], regimes=["strided"], examples=12)
    assert not broken.passed and not broken.counterexamples[0].case.contiguous


def test_contiguous_only_implementations_get_no_strided_case(tmp_path, capsys):
    declared = harness.check(mutants.ignores_strides, dtypes=["float32"], examples=3, max_classes=64,
                             contiguous_only=True)  # fmt: skip
    assert declared.passed and "strided" not in set(declared.records["regime"])
    with pytest.raises(ValueError, match="contiguous_only"):
        harness.check(mutants.ignores_strides, regimes=["strided"], contiguous_only=True)

    def needs_contiguous(logits, targets):
        assert logits.is_contiguous() and logits.storage_offset() == 0
        return F.cross_entropy(logits, targets, reduction="none")

    needs_contiguous.contiguous_only = True  # the function attribute, like k_dimensional
    assert harness.check(needs_contiguous, dtypes=["float64"], examples=3, max_classes=64).passed
    spec = "tests.implementations.mutants:ignores_strides"
    out = ["--dtype", "float32", "--examples", "3", "--max-classes", "64", "--quiet", "--out", str(tmp_path)]
    assert main(["check", spec, "--contiguous-only", *out]) == 0
    assert main(["check", spec, *out]) == 1
    assert main(["check", spec, "--contiguous-only", "--regime", "strided", *out]) == 2


def test_every_run_prints_what_its_cases_reached(capsys):
    result = harness.check(sound.torch_ce, dtypes=["bfloat16"], regimes=["tiled", "batch", "moderate"], examples=6,
                           grad=False)  # torch's bfloat16 backward fails a cell early: fewer cases  # fmt: skip
    line = result.describe().splitlines()[1]
    assert line.startswith("coverage: ") and "cases had more than 4,096 classes" in line
    from reports.stats import coverage

    reached = coverage(result.records)
    assert reached["over_4096_classes"] >= 3 and reached["max_rows"] > 3 and sum(reached["bands"].values()) == 18
