"""Counterexamples exported as self-contained pytest files: exact inputs, failing on the bug, passing when sound."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import harness
from harness.api import with_contract_settings
from harness.calling.caller import request_for
from harness.calling.loading import load_implementation
from harness.export import export_test, reproducer_source
from harness.grading.verdicts import Policy
from harness.oracle.options import OPTION_NAMES, LossOptions
from harness.runner import run_case
from strategies import Case, apply_layout, cases
from strategies.contract import Contract, with_contract

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


def _probs_case() -> Case:
    """Probability targets, one row smoothed: z_loss_leaks adds 1e-4 lse² though z_loss is 0."""
    logits = torch.tensor([[2.0, -1.0, 0.5], [30.0, 0.0, -3.0]])
    probs = torch.tensor([[0.25, 0.5, 0.25], [1.0, 0.0, 0.0]])
    return Case(logits, torch.tensor([1, 0]), "moderate", Contract(frozenset(), LossOptions(), (), probs))


def _ignored_mean_case() -> Case:
    """A mean over 3 samples, one of them ignored: mean_over_ignored_rows's backward divides by 3, not 2."""
    logits = torch.tensor([[1.0, 2.0, -1.0, 0.0], [0.5, 0.25, 3.0, -2.0], [4.0, 0.0, 1.0, 2.0]])
    options = LossOptions(ignore_index=-100, reduction="mean")
    return Case(
        logits, torch.tensor([1, 0, 3]), "moderate", Contract(frozenset({"ignore_index", "reduction"}), options, (1,))
    )


CONTRACT, GRADIENTS = "tests.implementations.contract:", "tests.implementations.gradients:"
# each kind the export once refused: (buggy implementation, check's settings (a short search that bites, or
# one given case), a sound implementation of the same contract, what the exported file must hold)
KINDS = {
    "options": (CONTRACT + "weighted_mean_by_rows",
                {"dtypes": ["float32"], "regimes": ["dominant"], "examples": 3, "max_classes": 16, "grad": False,
                 "options": ["weight", "reduction"]},
                CONTRACT + "sound_cross_entropy", ("def _options():", '"reduction": "mean"', "weight = ")),
    "probability_targets": (CONTRACT + "z_loss_leaks", {"case": _probs_case, "grad": False, "options": "none"},
                            CONTRACT + "sound_cross_entropy", ("targets = torch.tensor([[0.25, 0.5, 0.25]",)),
    "family": ("naive.log_softmax", {"dtypes": ["float16"], "regimes": ["offset"], "examples": 3},
               CONTRACT + "sound_log_softmax", ("out = implementation(logits)",)),
    "gradient": (GRADIENTS + "ignores_grad_output",
                 {"dtypes": ["float32"], "regimes": ["ties"], "examples": 3, "grad_only": True},
                 GRADIENTS + "custom_float32_backward", ("requires_grad_(True)", "def _upstream():")),
    "gradient_with_options": (GRADIENTS + "mean_over_ignored_rows", {"case": _ignored_mean_case, "grad_only": True},
                              CONTRACT + "sound_cross_entropy",
                              ("UPSTREAM = ", "torch.full_like(out.detach(), UPSTREAM)", "[1, -100, 3]")),
}  # fmt: skip


def _counterexample(spec: str, budget: dict):
    """(case, record, implementation as check called it) of the first counterexample of a real check run."""
    budget = dict(budget)
    if callable(budget.get("case")):
        budget["case"] = budget["case"]()
    result = harness.check(spec, **budget)
    assert result.counterexamples, result.describe()
    cx = result.counterexamples[0]
    impl = with_contract_settings(load_implementation(spec), options=budget.get("options"))
    return cx.case, cx.record, impl


def _swap(text: str, sound: str) -> str:
    """The same exported file, its implementation swapped for ``sound`` (module:function)."""
    module, _, function = sound.partition(":")
    binding = r"^(from \S+ import \S+ as implementation|implementation = .*)$"
    return re.sub(binding, f"from {module} import {function} as implementation", text, count=1, flags=re.M)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]) if t.is_floating_point() else t


def _assert_called_as_the_harness_did(module, case: Case, record: dict, impl) -> None:
    """The exported file's inputs, keywords and upstream gradient are those of harness.calling.caller, bit for bit."""
    request = request_for(impl, case, gradients=record["quantity"] == "grad")
    inputs = module._inputs()
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    assert len(inputs) == len(request.args)
    for mine, theirs in zip(inputs, request.args):
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape and mine.stride() == theirs.stride()
        assert torch.equal(_bits(mine), _bits(theirs))
    options = module._options() if hasattr(module, "_options") else {}
    assert options.keys() == request.kwargs.keys()
    for name, value in request.kwargs.items():
        if isinstance(value, torch.Tensor):
            assert options[name].dtype == value.dtype and torch.equal(_bits(options[name]), _bits(value)), name
        else:
            assert options[name] == value and type(options[name]) is type(value), name
    if request.backward is not None and record["reduction"] == "none":
        upstream = module._upstream()
        assert upstream.dtype == case.dtype and torch.equal(_bits(upstream), _bits(request.backward.grad_output))
    elif request.backward is not None:
        assert request.backward.grad_scalar == module.UPSTREAM


def test_exported_tests_fail_on_the_bug_and_pass_when_sound(tmp_path):
    """Plain counterexamples of several shapes (EXPORTS), then each kind once refused, from a real check (KINDS)."""
    buggy, sound = tmp_path / "buggy", tmp_path / "sound"
    sound.mkdir()
    exported = []  # (name, spec, path, a sound implementation)
    for name, (spec, make, fixed) in EXPORTS.items():
        case = make()
        path = export_test(buggy, case, _failing_record(spec, case), load_implementation(spec))
        assert len(path.read_text()) < 2_500, (name, len(path.read_text()))  # short enough to paste into a report
        exported.append((name, spec, path, fixed))
    for kind, (spec, budget, fixed, holds) in KINDS.items():
        case, record, impl = _counterexample(spec, budget)
        assert (record["quantity"] == "grad") == kind.startswith("gradient"), (kind, record)
        path = export_test(buggy, case, record, impl)
        assert all(part in path.read_text() for part in holds), (kind, path.read_text())
        _assert_called_as_the_harness_did(_module(path), case, record, impl)
        exported.append((kind, spec, path, fixed))
    for name, spec, path, fixed in exported:
        text = path.read_text()
        assert "ORACLE =" in text and "ALLOWANCE =" in text and "def test_" in text
        code = text.split("import torch", 1)[1]
        assert ("import math" in text) == ("math." in code), name  # no unused import in a pasted test
        # ce-harness is imported only for its own built-in implementations
        assert not re.search(r"^(from|import) (harness|strategies)\b", text, re.M) or ":" not in spec, name
        (sound / path.name).write_text(_swap(text, fixed))  # the same file, its implementation a sound one
    failed = _pytest(buggy)
    assert re.search(rf"\b{len(exported)} failed\b", failed), failed
    # each fails on a value it checks (an assertion), not on an error of the exported code
    summary = [line for line in failed.splitlines() if line.startswith("FAILED")]
    assert len(summary) == len(exported) and all(" - AssertionError: " in line for line in summary), failed
    # pasted into a project, the file passes a linter as it is (no unused import, sorted imports)
    lint = ["check", "--isolated", "--select", "E,F,W,I", "--ignore", "E501", str(buggy)]
    run = subprocess.run([sys.executable, "-m", "ruff", *lint], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    passed = _pytest(sound)
    assert re.search(rf"\b{len(exported)} passed\b", passed) and "failed" not in passed, passed


KERNELS = """
import torch.nn.functional as F


def doubled_gradient(logits, targets):
    # the right loss (float32, rounded once) whose gradient is doubled: 2 L - L, the second term detached
    loss = F.cross_entropy(logits.float(), targets, reduction="none")
    return (2 * loss - loss.detach()).to(logits.dtype)


def sound(logits, targets):
    return F.cross_entropy(logits.float(), targets, reduction="none").to(logits.dtype)
"""


def _family_case() -> Case:
    """exp(12) overflows float16 in row 1 only: naive softmax is NaN at [1, 1] and [1, 2], logsumexp inf at row 1."""
    return Case(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 12.0, 11.5, -3.0]], dtype=torch.float16), torch.zeros(2,
                dtype=torch.int64), "huge")  # fmt: skip


def _k_dimensional_case() -> Case:
    """(N, C, d) bfloat16 logits whose classes are the innermost storage dimension (stride 1)."""
    values = torch.tensor([[[0.5, -1.0, 2.0], [3.0, 0.25, -0.75]], [[1.5, 1.0, -4.0], [0.0, 6.0, 2.5]]])
    return Case(values.to(torch.bfloat16).permute(0, 2, 1), torch.tensor([[0, 2], [1, 1]]), "layout")


def test_exported_elements_and_layouts_are_the_graded_ones(tmp_path):
    """Run in this process: the family's (row, class) and per-row values, a K-dimensional strided gradient."""
    from harness.calling.caller import Caller

    (tmp_path / "kernels.py").write_text(KERNELS)
    kernels = _module(tmp_path / "kernels.py")
    contract = importlib.import_module("tests.implementations.contract")
    doubled = dataclasses.replace(
        load_implementation(f"{tmp_path / 'kernels.py'}:doubled_gradient"), k_dimensional=True
    )
    # (implementation, case, quantity, how the test reads the worst value, a sound implementation)
    runs = [(load_implementation("naive.softmax"), _family_case(), "loss", "out[{sample}, {element}]",
             contract.sound_softmax),
            (load_implementation("naive.logsumexp"), _family_case(), "loss", "out[{sample}]", contract.sound_logsumexp),
            (doubled, _k_dimensional_case(), "grad", "grad.movedim(1, -1).reshape(-1, 3)[{sample}, {element}]",
             kernels.sound)]  # fmt: skip
    with Caller() as caller:
        for impl, case, quantity, where, sound in runs:
            failing = [r for r in run_case(case, [impl], caller=caller, quantities=(quantity,))
                       if Policy().fails(r["verdict"])]  # fmt: skip
            assert failing and failing[0]["quantity"] == quantity, failing
            record = failing[0]
            assert record["sample"] == 1 or quantity == "grad", record  # the overflowing row, not the first
            path = export_test(tmp_path / "exported", case, record, impl)
            assert f"value = {where.format(**record)}.to(torch.float64)" in path.read_text(), path.read_text()
            module = _module(path)
            logits = module._inputs()[0] if quantity == "grad" else module._inputs()
            assert logits.stride() == case.logits.stride() and torch.equal(logits, case.logits)
            test = next(getattr(module, name) for name in dir(module) if name.startswith("test_"))
            with pytest.raises(AssertionError):
                test()
            module.implementation = sound
            test()


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


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(with_contract(cases(regimes=["special", "strided", "tiled", "masked"], max_classes=2_000, max_rows=40),
                     OPTION_NAMES, soft_targets=True))  # fmt: skip
def test_exported_calls_are_the_harness_calls_bit_for_bit(tmp_path_factory, case):
    """Drawn options (vocabulary-size weights, ignored samples), probability targets, upstream gradients."""
    impl = with_contract_settings(load_implementation(CONTRACT + "sound_cross_entropy"), soft_targets=True)
    reduction = case.contract.options.reduction if case.contract is not None else "mean"
    record = {"quantity": "grad", "reduction": reduction, "sample": 0, "element": 0, "verdict": "unstable",
              "outcome": "finite_error", "output": 0.0, "output_bits": "0x0"}  # fmt: skip
    path = export_test(tmp_path_factory.mktemp("exported"), case, record, impl)
    _assert_called_as_the_harness_did(_module(path), case, record, impl)


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


def test_an_unimportable_callable_cannot_be_exported_and_that_is_a_note(tmp_path):
    from harness.calling.registry import Implementation
    from harness.export import ExportError, export_tests

    impl = Implementation("mine", lambda x, t: x.sum(dim=1), source="python")
    case = _naive_overflow_case()
    record = {"reduction": "none", "sample": 0, "verdict": "unstable", "outcome": "finite_error", "output": 0.0,
              "output_bits": ""}  # fmt: skip
    with pytest.raises(ExportError, match="not importable"):
        export_test(tmp_path, case, record, impl)
    written, notes, errors = export_tests(tmp_path, [(case, record, impl)])
    assert not written and not errors and len(notes) == 1 and "not importable" in notes[0]


def test_check_notes_a_counterexample_it_cannot_export_and_keeps_its_exit_code(tmp_path, capsys):
    """An export refusal is a one-line note on stderr, not a write error (check's exit code 3 comes from those)."""
    from types import SimpleNamespace

    from harness.calling.registry import Implementation
    from harness.cli import _export
    from harness.search import Counterexample

    impl = Implementation("mine", lambda x, t: x.sum(dim=1), source="python")
    record = {"reduction": "none", "sample": 0, "verdict": "unstable", "outcome": "finite_error", "output": 0.0,
              "output_bits": ""}  # fmt: skip
    result = SimpleNamespace(counterexamples=[Counterexample(_naive_overflow_case(), record)])
    assert _export(result, impl, tmp_path / "exported", 4.0) == []  # no write error: the exit code is unchanged
    err = capsys.readouterr().err
    assert "exported 0 tests" in err and f"case {_naive_overflow_case().case_id} of mine not exported: " in err
    assert "not importable" in err and len(err.strip().splitlines()) == 2
    (tmp_path / "blocked").write_text("a file where the folder should be")
    assert len(_export(result, load_implementation("naive"), tmp_path / "blocked", 4.0)) == 1  # a write error
