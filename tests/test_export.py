"""Counterexamples exported as self-contained pytest files: exact inputs, failing on the bug, passing when sound."""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from harness.calling.loading import load_implementation
from harness.export import export_test, reproducer_source
from harness.grading.verdicts import Policy
from harness.runner import run_case
from strategies import Case, apply_layout, cases

ROOT = Path(__file__).resolve().parents[1]


def _failing_record(spec: str, case: Case) -> dict:
    records = run_case(case, [load_implementation(spec)])
    failing = [r for r in records if Policy().fails(r["verdict"])]
    assert failing, records
    return failing[0]


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(f"exported_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _masked_tile_case() -> Case:
    logits = torch.zeros(1, 20_000)
    logits[0, :4_096] = -math.inf
    logits[0, 7_000] = 5.0
    logits[0, 12_345] = -2.5
    return Case(logits, torch.tensor([12_345]), "tiled")


def _masked_target_case() -> Case:
    """What the default check finds (README): the target inside the masked tile, so the loss is inf."""
    logits = torch.zeros(1, 4_160, dtype=torch.float16)
    logits[0, :4_096] = -math.inf
    logits[0, 4_096] = 1.0
    return Case(logits, torch.tensor([0]), "tiled")


def _naive_overflow_case() -> Case:
    return Case(torch.tensor([[8.0] * 22], dtype=torch.float16), torch.tensor([0]), "huge")


def _strided_case() -> Case:
    values = torch.tensor([[1.5, 3.75, -2.0], [0.25, 0.5, 8.0]])
    return Case(apply_layout(values, "transposed"), torch.tensor([1, 2]), "strided")


def _batch_mean_case() -> Case:
    logits = torch.tensor([[0.0, 0.0]] * 600, dtype=torch.bfloat16)
    return Case(logits, torch.zeros(600, dtype=torch.int64), "batch")


# (buggy implementation, the case, a sound implementation of the same contract)
EXPORTS = {
    "masked_tile": ("tests.implementations.tiled:no_inf_guard_4096", _masked_tile_case,
                    "tests.implementations.tiled:sound_4096"),
    "masked_target": ("tests.implementations.tiled:no_inf_guard_4096", _masked_target_case,
                      "tests.implementations.tiled:sound_4096"),
    "overflow": ("naive", _naive_overflow_case, "tests.implementations.sound:upcast_float32"),
    "strided": ("tests.implementations.mutants:ignores_strides", _strided_case, "tests.implementations.sound:torch_ce"),
    "batch_mean": ("tests.implementations.mutants:low_precision_batch_mean", _batch_mean_case,
                   "tests.implementations.sound:cross_entropy_from_scratch"),
}  # fmt: skip


def _pytest(folder: Path) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-n", "0", str(folder)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    return run.stdout + run.stderr


def test_exported_tests_fail_on_the_bug_and_pass_when_sound(tmp_path):
    buggy, sound = tmp_path / "buggy", tmp_path / "sound"
    for name, (spec, make, fixed) in EXPORTS.items():
        case = make()
        path = export_test(buggy, case, _failing_record(spec, case), load_implementation(spec))
        text = path.read_text()
        assert len(text) < 2_500, (name, len(text))  # short enough to paste into a bug report
        assert "ORACLE =" in text and "ALLOWANCE =" in text and "def test_" in text
        code = text.split("import torch", 1)[1]
        assert ("import math" in text) == ("math." in code), name  # no unused import in a pasted test
        # the same file, its implementation swapped for a sound one
        target = fixed.replace(":", " import ").replace("tests.implementations.", "from tests.implementations.")
        binding = r"^(from \S+ import \S+ as implementation|implementation = .*)$"
        swapped = re.sub(binding, f"{target} as implementation", text, count=1, flags=re.M)
        (sound / path.name).parent.mkdir(exist_ok=True)
        (sound / path.name).write_text(swapped)
    failed = _pytest(buggy)
    assert re.search(rf"\b{len(EXPORTS)} failed\b", failed), failed
    # pasted into a project, the file passes a linter as it is (no unused import, sorted imports)
    lint = ["check", "--isolated", "--select", "E,F,W,I", "--ignore", "E501", str(buggy)]
    run = subprocess.run([sys.executable, "-m", "ruff", *lint], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    passed = _pytest(sound)
    assert re.search(rf"\b{len(EXPORTS)} passed\b", passed) and "failed" not in passed, passed


def test_a_large_row_is_built_from_a_fill_and_a_few_positions():
    case = _masked_tile_case()
    text = reproducer_source(case, _failing_record(EXPORTS["masked_tile"][0], case),
                             load_implementation(EXPORTS["masked_tile"][0]))  # fmt: skip
    assert "torch.full((20000,), 0.0" in text and 'storage[0:4096] = -float("inf")' in text
    assert "storage[[7000, 12345]]" in text and "BITS" not in text


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(cases(regimes=["special", "strided", "tiled", "layout", "batch", "tiny"], max_classes=3_000, max_rows=300))
def test_exported_inputs_are_the_case_bit_for_bit(tmp_path_factory, case):
    """Whatever the case (NaN payloads, -0.0, subnormals, strides, offsets, K dimensions), the file rebuilds it."""
    record = {"reduction": "none", "sample": 0, "verdict": "unstable", "outcome": "finite_error", "output": 0.0,
              "output_bits": "0x0"}  # fmt: skip
    impl = load_implementation("torch")
    folder = tmp_path_factory.mktemp("exported")
    module = _module(export_test(folder, case, record, impl))
    logits, targets = module._inputs()
    assert logits.dtype == case.dtype and logits.shape == case.logits.shape
    assert torch.equal(logits.view(case.format.int_dtype), case.logits.view(case.format.int_dtype))
    assert logits.storage_offset() == case.logits.storage_offset()
    assert all(a == b for a, b, n in zip(logits.stride(), case.logits.stride(), case.logits.shape) if n > 1)
    assert torch.equal(targets, case.targets)


def test_nan_payloads_and_signed_zeros_survive_export(tmp_path):
    bits = torch.tensor([[0x7E01, -0x8000, 0x3C00, 0x7C00]], dtype=torch.int16)  # NaN payload, -0.0, 1.0, +inf
    case = Case(bits.view(torch.float16), torch.tensor([2]), "special")
    path = export_test(tmp_path, case, {"reduction": "none", "sample": 0, "verdict": "unstable",
                                        "outcome": "missing_nonfinite", "output": 1.0, "output_bits": "0x3c00"},
                       load_implementation("torch"))  # fmt: skip
    logits, _ = _module(path)._inputs()
    assert torch.equal(logits.view(torch.int16), bits)


def test_check_and_audit_export_tests(tmp_path):
    from harness.cli import main

    assert main(["check", "naive", "--dtype", "float32", "--regime", "huge", "--examples", "5", "--quiet", "--no-grad",
                 "--out", str(tmp_path / "c"), "--export-tests", str(tmp_path / "ct")]) == 1  # fmt: skip
    assert len(list((tmp_path / "ct").glob("test_naive_*.py"))) == 1
    assert main(["audit", "--impl", "naive", "--dtype", "float16", "--regime", "huge", "--regime", "offset",
                 "--examples", "5", "--quiet", "--out", str(tmp_path / "a"),
                 "--export-tests", str(tmp_path / "at")]) == 0  # fmt: skip
    exported = list((tmp_path / "at").glob("test_naive_*.py"))
    assert len(exported) == 2
    assert re.search(r"\b2 failed\b", _pytest(tmp_path / "at"))


@pytest.mark.parametrize("bad", ["lambda"])
def test_an_unimportable_callable_cannot_be_exported(tmp_path, bad):
    from harness.calling.registry import Implementation
    from harness.export import ExportError

    impl = Implementation("mine", lambda x, t: x.sum(dim=1), source="python")
    case = _naive_overflow_case()
    with pytest.raises(ExportError, match="not importable"):
        export_test(tmp_path, case, {"reduction": "none", "sample": 0, "verdict": "unstable",
                                     "outcome": "finite_error", "output": 0.0, "output_bits": ""}, impl)  # fmt: skip
