"""Kernels as they ship: JAX and NumPy implementations, Triton kernels on the CPU, compiled kernels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import harness
from harness.calling.caller import Caller, Request
from harness.calling.loading import load_implementation
from harness.calling.sandbox import WorkerOptions
from harness.cli import main
from harness.runner import run_case
from strategies import Case

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ROOT / "tests" / "implementations"
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _cases(dtype: torch.dtype) -> list[Case]:
    """A moderate case, and a huge one where exp overflows the dtype (naive versions fail there)."""
    huge = torch.finfo(dtype).max / 4
    return [
        Case(torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.25, 4.0]]).to(dtype), torch.tensor([0, 2]), "moderate"),
        Case(torch.tensor([[huge, huge / 2, 0.0]], dtype=torch.float64).to(dtype), torch.tensor([1]), "huge"),
    ]


def _outcomes(spec: str, **options) -> dict[tuple[str, str], str]:
    """(dtype, regime) -> verdict of each of the cases above, run through the sandbox."""
    impl = load_implementation(spec, WorkerOptions(**options))
    found = {}
    with Caller(**options) as caller:
        for dtype in DTYPES:
            for case in _cases(dtype):
                (record,) = run_case(case, [impl], caller=caller)
                found[(case.format.name, case.regime)] = record["verdict"]
    return found


@pytest.mark.parametrize("framework", ["jax", "numpy"])
def test_array_frameworks_in_every_dtype(framework):
    pytest.importorskip(framework)
    pytest.importorskip("ml_dtypes")  # bfloat16 arrays
    stable = load_implementation(f"tests.implementations.{framework}_impls:stable")
    assert stable.framework == framework  # detected from its imports
    assert set(_outcomes(f"tests.implementations.{framework}_impls:stable").values()) <= {"ok", "inaccurate"}
    naive = _outcomes(f"tests.implementations.{framework}_impls:naive")
    assert all(naive[(dtype, "huge")] == "unstable" for dtype in ("float16", "bfloat16", "float32", "float64"))


def test_jax_float64_runs_in_x64_and_jit_compile_time_is_recorded():
    pytest.importorskip("jax")
    case = _cases(torch.float64)[0]
    impl = load_implementation("tests.implementations.jax_impls:jitted")
    with Caller() as caller:
        called = caller.call(impl, case)
    assert called.failure is None and called.output.dtype == torch.float64
    assert called.compile_seconds > 0  # JAX's compile events, apart from the run time
    expected = torch.nn.functional.cross_entropy(case.logits, case.targets, reduction="none")
    assert torch.allclose(called.output, expected, rtol=1e-15, atol=0)


def test_jax_catches_the_logsumexp_then_subtract_bug():
    pytest.importorskip("jax")
    result = harness.check("tests.implementations.jax_impls:lse_then_subtract", dtypes=["float32"],
                           regimes=["offset"], examples=15)  # fmt: skip
    assert not result.passed and result.counterexamples[0].case.regime == "offset"


def test_numpy_framework_named_explicitly_and_odd_arrays():
    with Caller(framework="numpy") as caller:
        impl = load_implementation("tests.implementations.numpy_impls:returns_object_array",
                                   WorkerOptions(framework="numpy"))  # fmt: skip
        called = caller.call(impl, _cases(torch.float32)[0])
    assert called.failure == "bad_output" and "dtype object" in called.message


def test_framework_option_on_the_command_line(tmp_path):
    argv = ["check", "tests.implementations.numpy_impls:stable", "--framework", "numpy", "--dtype", "float32",
            "--regime", "moderate", "--examples", "2", "--quiet", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((tmp_path / "manifest.json").read_text())["framework"] == "numpy"


def test_triton_kernels_on_the_cpu_interpreter():
    pytest.importorskip("triton")
    sound = _outcomes(f"{IMPLS / 'triton_ce.py'}:cross_entropy", triton_interpret=True)
    assert set(sound.values()) <= {"ok", "inaccurate"}
    buggy = _outcomes(f"{IMPLS / 'triton_ce.py'}:no_max_shift", triton_interpret=True)
    assert buggy[("float32", "huge")] == "unstable" and buggy[("float32", "moderate")] != "unstable"


def test_triton_interpret_is_a_check_and_audit_option(tmp_path):
    pytest.importorskip("triton")
    result = harness.check(f"{IMPLS / 'triton_ce.py'}:no_max_shift", dtypes=["float16"], regimes=["huge"],
                           examples=3, triton_interpret=True)  # fmt: skip
    assert not result.passed and result.counterexamples[0].record["outcome"] in ("spurious_inf", "spurious_nan")
    out = tmp_path / "audit"
    argv = ["audit", "--impl", f"{IMPLS / 'triton_ce.py'}:cross_entropy", "--triton-interpret", "--dtype",
            "float32", "--regime", "moderate", "--examples", "2", "--quiet", "--shrink-seconds", "0",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["triton_interpret"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_kernel_on_a_real_gpu():
    pytest.importorskip("triton")
    result = harness.check(f"{IMPLS / 'triton_ce.py'}:cross_entropy", dtypes=["float32"], regimes=["moderate"],
                           examples=3, device="cuda")  # fmt: skip
    assert result.passed


# -- compiled kernels -----------------------------------------------------------------------------------


def test_dynamo_compile_time_is_allowed_and_reported_apart():
    """A call that compiles (dynamo's start/end callbacks) past --timeout is not a timeout."""
    impl = load_implementation("tests.implementations.compile_probe:compiles_every_call")
    plain = load_implementation("tests.implementations.compile_probe:sleeps_every_call")
    x = torch.ones(2, 3)
    with Caller(timeout=1.0, compile_timeout=30) as caller:
        called = caller.invoke(impl, Request((x,), key=("float32", 2, "small")))
        assert called.failure is None and called.compile_seconds >= 2 * 1.5 and called.seconds < 1.0
        # the same sleep with no compile reported: the first call gets the compile allowance
        # (a compiler is loaded), the second call gets --timeout and is killed
        slow = caller.invoke(plain, Request((x,), key=("float32", 2, "small")))
        assert slow.failure == "timeout" and slow.message.startswith("second call")


@pytest.mark.slow
def test_torch_compile_of_cross_entropy_is_graded_as_compiled(tmp_path):
    """torch.compile(F.cross_entropy) as a module attribute: no timeouts, exit 0, compile time apart,
    and the recorded outputs are what the compiled function returns when called directly."""
    out = tmp_path / "check"
    done = subprocess.run([sys.executable, "-m", "harness", "check", f"{IMPLS / 'compiled.py'}:cross_entropy",
                           "--dtype", "float32", "--examples", "4", "--max-classes", "4096", "--quiet",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    records = pd.read_csv(out / "records.csv")
    mine = records[records["impl"] != "torch"]
    assert "timeout" not in set(mine["outcome"]) and mine["compile_seconds"].sum() > 0
    assert set(mine["reduction"]) == {"mean"}
    script = (
        "import sys, json, torch\nsys.path.insert(0, sys.argv[2])\n"
        "from reports.store import load_cases\nfrom tests.implementations.compiled import cross_entropy\n"
        "from harness.formats import bit_pattern\n"
        "cases = load_cases(sys.argv[1])\n"
        "print(json.dumps({i: bit_pattern(cross_entropy(c.logits, c.targets)) for i, c in cases.items()}))\n"
    )
    direct = subprocess.run([sys.executable, "-c", script, str(out), str(ROOT)], capture_output=True, text=True,
                            timeout=1200, cwd=ROOT)  # fmt: skip
    bits = json.loads(direct.stdout.strip().splitlines()[-1])
    stored = mine[mine["case_id"].isin(bits)]
    assert len(stored) and all(bits[row.case_id] == row.output_bits for row in stored.itertuples())
