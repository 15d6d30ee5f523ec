"""The sandbox: hostile implementations become outcomes, the harness's arithmetic stays its own,
tensors cross the process boundary exactly, and the protocol carries what later calling paths need."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
import torch.nn.functional as F

import harness
from harness import oracle
from harness.calling.caller import Backward, Caller, Request
from harness.calling.loading import LoadError, load_implementation
from harness.calling.registry import Implementation
from harness.cli import main
from harness.numerics import flushes_denormals, harness_numerics
from harness.runner import TIMING_COLUMNS
from strategies import Case

ROOT = Path(__file__).resolve().parents[1]
SMALL = Case(torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]]), torch.tensor([0, 2]), "moderate")
LARGE = Case(torch.linspace(-8, 8, 3 * 5000).reshape(3, 5000), torch.tensor([0, 7, 4999]), "large_vocab")
H = "tests.implementations.hostile:"


def _expected(case: Case) -> torch.Tensor:
    return F.cross_entropy(case.logits, case.targets, reduction="none")


# Every behaviour of issue 12's "Why" that a call can show: (name, Caller options, case, outcome, message).
# outcome None: graded, the output equal bit for bit to F.cross_entropy's.
HOSTILE = [
    ("reuses_output_buffer", {}, SMALL, "nondeterministic", "answered differently"),
    ("flushes_denormals_at_call", {}, SMALL, None, ""),
    ("patches_exp_for_large_tensors", {}, LARGE, None, ""),
    ("changes_default_dtype", {}, SMALL, None, ""),
    ("changes_directory", {}, SMALL, None, ""),
    ("holds_the_gil", {"timeout": 1}, SMALL, "timeout", "no answer within 1 s"),
    ("hard_exit_zero", {}, SMALL, "crashed", "exited with code 0"),
    ("exits_at_call", {}, SMALL, "crashed", "sys.exit(3)"),
    ("segfaults", {}, SMALL, "crashed", "signal 11 (SIGSEGV)"),
    ("recurses_forever", {}, SMALL, "crashed", "died of signal"),
    ("runs_away_with_memory", {"memory_limit_mib": 700}, SMALL, "killed_memory", "over the limit of 700 MiB"),
    ("returns_sparse", {}, SMALL, None, "sparse_coo converted to dense"),
    ("returns_negative_view", {}, SMALL, None, "negative view resolved"),
    ("returns_subclass", {}, SMALL, None, "Tagged (tensor subclass)"),
    ("returns_refusing_subclass", {}, SMALL, None, "Refusing (tensor subclass)"),
    ("returns_complex", {}, SMALL, "bad_output", "dtype torch.complex64"),
    ("returns_conj", {}, SMALL, "bad_output", "dtype torch.complex64"),
    ("returns_integers", {}, SMALL, "bad_output", "dtype torch.int32"),
    ("returns_meta", {}, SMALL, "bad_output", "on meta"),
    ("returns_a_float", {}, SMALL, "bad_output", "returned float, not a tensor"),
    ("raises_unprintable", {}, SMALL, "raised", "Unprintable: (its message could not be rendered: ValueError"),
    ("mutates_targets", {}, SMALL, "mutated_input", "modified its input targets in place"),
    ("mutates_logits", {}, SMALL, "mutated_input", "modified its input logits in place"),
]


@pytest.mark.parametrize(("name", "options", "case", "outcome", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_behaviour_is_an_outcome_and_the_harness_is_untouched(name, options, case, outcome, message):
    impl = load_implementation(H + name)
    good = load_implementation("torch")
    cwd, dtype = os.getcwd(), torch.get_default_dtype()
    with Caller(**options) as caller:
        called = caller.call(impl, case)
        assert called.failure == outcome, called
        assert message in called.message
        if outcome is None:
            assert torch.equal(called.output, _expected(case))
        assert caller.call(good, case).failure is None  # the run goes on
    # nothing it did reached this process
    assert not flushes_denormals() and torch.get_default_dtype() == dtype == torch.float32
    assert os.getcwd() == cwd and torch.exp is torch._C._VariableFunctions.exp


def test_a_killed_sandbox_restarts_and_repeated_deaths_are_skipped_then_retried():
    impl = load_implementation(H + "segfaults")
    with Caller() as caller:
        results = [caller.call(impl, SMALL) for _ in range(6)]
        assert [r.failure for r in results] == ["crashed"] * 6
        assert [r.message.startswith("skipped:") for r in results] == [False] * 3 + [True] * 3
        assert caller._sandboxes[impl.name].starts == 3


def test_a_crash_that_does_not_recur_is_a_counterexample_not_a_tool_error(tmp_path):
    """Hypothesis replays a failing case and calls it Flaky when it passes: the crash it saw stands."""
    from tests.implementations import hostile

    crashes_once = functools.partial(hostile.crashes_once, mark=str(tmp_path / "crashed"))
    result = harness.check(crashes_once, name="crashes_once", dtypes=["float32"], regimes=["moderate"], examples=5,
                           grad=False)  # fmt: skip
    assert not result.passed and result.errors == []
    assert [c.record["outcome"] for c in result.counterexamples] == ["crashed"]
    assert "exited with code 7" in result.counterexamples[0].record["message"]


def test_exits_at_import_are_one_line_load_errors(capsys):
    for module, message in (("exits", "called sys.exit(3)"), ("hard_exit", "exited with code 4 while importing")):
        with pytest.raises(LoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_implementation(f"tests.implementations.at_import.{module}:cross_entropy")
        assert main(["check", f"tests.implementations.at_import.{module}:cross_entropy", "--examples", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err


def test_flush_denormals_at_import_leaves_the_oracle_and_the_tiny_regime_alone():
    result = harness.check("tests.implementations.at_import.flushes_denormals:cross_entropy", dtypes=["float32"],
                           regimes=["tiny"], examples=6)  # fmt: skip
    assert not flushes_denormals()
    cases = result.search.cases.values()
    assert any(bool(((c.logits != 0) & (c.logits.abs() < torch.finfo(torch.float32).tiny)).any()) for c in cases)
    for record in result.records.query("quantity == 'loss'").to_dict(orient="records"):
        case = result.search.cases[record["case_id"]]
        again = oracle.evaluate(case.row_logits, case.row_targets)[max(record["sample"], 0)]
        assert again.value == record["oracle"] or (again.value != again.value and record["oracle"] != record["oracle"])


def test_exp_patched_at_import_leaves_large_vocabulary_grading_alone():
    result = harness.check("tests.implementations.at_import.patches_exp:cross_entropy", dtypes=["float32"],
                           regimes=["large_vocab"], examples=2, max_classes=4096)  # fmt: skip
    assert result.passed and result.search.self_checked > 0 and not result.errors


def test_the_script_calling_check_may_flush_denormals_itself():
    """The Python API runs in the user's process: its own settings must not reach the oracle."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        assert flushes_denormals()
        result = harness.check(harness.REGISTRY.get("stable"), dtypes=["float32"], regimes=["tiny"], examples=5)
        assert flushes_denormals()  # the caller's setting is back
    finally:
        torch.set_flush_denormal(False)
    for record in result.records.query("quantity == 'loss'").to_dict(orient="records"):
        case = result.search.cases[record["case_id"]]
        again = oracle.evaluate(case.row_logits, case.row_targets)[max(record["sample"], 0)]
        assert again.value == record["oracle"] or again.value != again.value


def test_the_oracle_api_ignores_a_flush_to_zero_caller():
    """The issue's example: a loss of 3.78e-44 (float32 subnormal) that a flushing oracle returned as 0."""
    logits, targets = torch.tensor([[0.0, -100.0]]), torch.tensor([0])
    right = oracle.cross_entropy(logits, targets, dtype=torch.float32)
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        assert flushes_denormals()
        flushed = oracle.cross_entropy(logits, targets, dtype=torch.float32)
    finally:
        torch.set_flush_denormal(False)
    assert right.item() == flushed.item() == pytest.approx(3.78e-44, rel=0.01)


def test_harness_numerics_restores_the_callers_state():
    import gmpy2
    import mpmath

    torch.exp = lambda x: x  # a script's own patch
    torch.set_default_dtype(torch.float64)
    mpmath.mp.prec = 20
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        with harness_numerics():
            assert torch.exp is torch._C._VariableFunctions.exp and torch.get_default_dtype() == torch.float32
            assert mpmath.mp.prec == 53 and gmpy2.get_context().precision == 53 and torch.get_num_threads() == 1
        assert torch.exp is not torch._C._VariableFunctions.exp and torch.get_default_dtype() == torch.float64
        assert mpmath.mp.prec == 20 and torch.get_num_threads() == threads + 1
    finally:
        torch.set_num_threads(threads)
        torch.exp = torch._C._VariableFunctions.exp
        torch.set_default_dtype(torch.float32)
        mpmath.mp.prec = 53


def test_changing_directory_does_not_move_the_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["check", H + "changes_directory", "--dtype", "float32", "--regime", "moderate", "--examples", "2",
                 "--quiet", "--out", "report"])  # fmt: skip
    assert code == 0 and (tmp_path / "report" / "manifest.json").is_file()


# -- tensors cross exactly ----------------------------------------------------------------------------


def _layouts() -> dict[str, torch.Tensor]:
    base = torch.arange(60, dtype=torch.float32)
    return {
        "transposed": base[:24].reshape(4, 6).t(),
        "offset": base.reshape(6, 10)[1:4, 2:7],
        "expanded": base[:5].reshape(1, 5).expand(3, 5),
        "bfloat16 strided": base.to(torch.bfloat16).reshape(6, 10)[::2, 1::3],
    }


@pytest.mark.parametrize("kind", list(_layouts()))
def test_inputs_arrive_with_their_exact_layout_and_storage(kind):
    x = _layouts()[kind]
    layout, storage = (
        load_implementation("tests.implementations.probes:layout"),
        load_implementation("tests.implementations.probes:storage"),
    )
    with Caller() as caller:
        seen = caller.invoke(layout, Request((x,), repeat=1))
        expected = [*x.shape, *x.stride(), x.storage_offset(), x.storage_offset() + 1 + sum(
            (n - 1) * s for n, s in zip(x.shape, x.stride()))]  # fmt: skip
        assert seen.failure is None and seen.output.tolist() == expected
        whole = caller.invoke(storage, Request((x,), repeat=1)).output
        reached = x.untyped_storage()
        original = torch.empty(0, dtype=x.dtype).set_(reached)[: len(whole)]
        assert torch.equal(whole, original)  # every storage element the view reaches, and those between


def test_large_inputs_travel_through_shared_memory():
    case = Case(torch.randn(8, 256_000, generator=torch.Generator().manual_seed(1)) * 4, torch.arange(8) * 9,
                "large_vocab")  # fmt: skip
    with Caller() as caller:
        called = caller.call(load_implementation("torch"), case)
        sandbox = caller._sandboxes["torch"]
        assert called.failure is None and torch.equal(called.output, _expected(case))
        assert sandbox.arena.size() >= case.logits.numel() * 4  # the payload went through the arena


def test_keyword_arguments_pass_through_by_keyword():
    fn = load_implementation("tests.implementations.probes:with_keywords")
    x, weight = torch.ones(2, 3), torch.full((4,), 0.5)
    request = Request((x,), {"scale": 3, "label": "mean", "flag": True, "nothing": None, "weight": weight})
    with Caller() as caller:
        called = caller.invoke(fn, request)
        assert called.failure is None and called.output.item() == 6 * 3 + 2.0
        wrong = caller.invoke(fn, Request((x,), {**request.kwargs, "label": "sum"}))
        assert wrong.failure == "raised" and "AssertionError" in wrong.message


def test_backward_returns_the_owned_gradient_of_the_chosen_input():
    x = torch.tensor([[1.0, -2.0], [0.5, 3.0]]).t()  # a transposed input: the gradient keeps its shape
    with Caller() as caller:
        scalar = caller.invoke(load_implementation("tests.implementations.probes:square_sum"),
                               Request((x,), backward=Backward()))  # fmt: skip
        assert scalar.failure is None and torch.equal(scalar.grad, 2 * x)
        grad_out = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
        vector = caller.invoke(load_implementation("tests.implementations.probes:squares"),
                               Request((x,), backward=Backward(0, grad_out)))  # fmt: skip
        assert vector.failure is None and torch.equal(vector.grad, 2 * x * grad_out)
        flat = caller.invoke(load_implementation("tests.implementations.probes:detached_squares"),
                             Request((x,), backward=Backward(0, grad_out)))  # fmt: skip
        assert flat.failure is None and flat.grad is None and "not differentiable" in flat.grad_message


# -- how implementations reach the sandbox -------------------------------------------------------------


def test_callables_are_pickled_lambdas_and_closures_included():
    offset = torch.tensor(0.0)

    def closure(logits, targets):
        return F.cross_entropy(logits, targets, reduction="none") + offset

    for fn in (closure, lambda logits, targets: F.cross_entropy(logits, targets, reduction="none")):
        result = harness.check(fn, dtypes=["float64"], regimes=["moderate"], examples=2)
        assert result.passed, result.describe()
    named = harness.check(lambda x, t: F.cross_entropy(x, t, reduction="none"), dtypes=["float64"], examples=1,
                          regimes=["moderate"]).implementation  # fmt: skip
    assert named.endswith("lambda") and "<" not in named  # '<lambda>' made safe for reports


def test_an_unpicklable_callable_is_a_one_line_error():
    import threading

    lock = threading.Lock()

    def holds_a_lock(logits, targets):
        with lock:
            return F.cross_entropy(logits, targets, reduction="none")

    with pytest.raises(ValueError, match=r"cannot send .* to its sandbox process: .*file\.py:function") as info:
        harness.check(holds_a_lock, dtypes=["float32"], examples=1)
    assert "\n" not in str(info.value)


def test_a_function_of_a_scripts_main_module_is_sent_by_value(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import torch.nn.functional as F
        import harness

        def mine(logits, targets):
            return F.cross_entropy(logits, targets, reduction="none")

        result = harness.check(mine, dtypes=["float64"], regimes=["moderate"], examples=2)
        print("PASSED" if result.passed else result.describe())
    """))  # fmt: skip
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "PASSED", done.stderr


def test_workers_die_with_the_harness(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {str(ROOT)!r})
        from harness.calling.caller import Caller
        from harness.calling.loading import load_implementation
        from strategies import Case
        caller = Caller()
        caller.call(load_implementation("torch"), Case(torch.zeros(1, 2), torch.tensor([0]), "moderate"))
        print(caller._sandboxes["torch"].process.pid, flush=True)
        if sys.argv[1] == "wait":
            time.sleep(600)
    """))  # fmt: skip
    for how in ("exit", "wait"):
        parent = subprocess.Popen([sys.executable, str(script), how], stdout=subprocess.PIPE, text=True)
        pid = int(parent.stdout.readline())
        if how == "wait":
            parent.send_signal(signal.SIGKILL)  # no atexit: the kernel's parent-death signal, or the worker's own check
        parent.wait(timeout=120)
        deadline = time.time() + 30
        while (
            psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE and time.time() < deadline
        ):
            time.sleep(0.2)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, how


# -- audits survive them --------------------------------------------------------------------------------

ONE_CELL = ["--dtype", "float32", "--regime", "moderate", "--examples", "3", "--max-classes", "64", "--quiet",
            "--shrink-seconds", "0"]  # fmt: skip


def _records(folder: Path, impl: str) -> pd.DataFrame:
    records = pd.read_csv(folder / "records.csv")
    records["message"] = records["message"].astype(object).fillna("").astype(str)
    return records[records["impl"] == impl].drop(columns=list(TIMING_COLUMNS)).reset_index(drop=True)


def test_a_hostile_implementation_never_costs_the_others_their_records(tmp_path):
    alone, crowded = tmp_path / "alone", tmp_path / "crowded"
    assert main(["audit", "--impl", "torch", *ONE_CELL, "--out", str(alone)]) == 0
    hostile = [H + name for name in ("segfaults", "returns_refusing_subclass", "reuses_output_buffer",
                                     "mutates_targets")]  # fmt: skip
    argv = ["audit", "--impl", "torch", *[a for h in hostile for a in ("--impl", h)], *ONE_CELL, "--out", str(crowded)]
    assert main(argv) == 0
    pd.testing.assert_frame_equal(_records(alone, "torch"), _records(crowded, "torch"))
    outcomes = pd.read_csv(crowded / "records.csv").groupby("impl")["outcome"].agg(set)
    assert outcomes[H + "segfaults"] == {"crashed"} and outcomes[H + "mutates_targets"] == {"mutated_input"}
    assert outcomes[H + "reuses_output_buffer"] == {"nondeterministic"}


@pytest.mark.slow
def test_a_pool_of_workers_survives_crashing_implementations(tmp_path):
    out = tmp_path / "pool"
    argv = ["audit", "--impl", "torch", "--impl", H + "hard_exit_zero", "--impl", H + "segfaults", "--dtype",
            "float32", "--dtype", "float64", "--regime", "moderate", "--examples", "2", "--max-classes", "64",
            "--quiet", "--shrink-seconds", "0", "--workers", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    records = pd.read_csv(out / "records.csv")
    assert set(records.loc[records["impl"] != "torch", "outcome"]) == {"crashed"}
    assert (records.loc[records["impl"] == "torch", "outcome"] != "crashed").all()


def test_implementation_objects_made_in_tests_are_called_in_the_sandbox_too():
    seen_pid = Implementation("pid", lambda logits, targets: torch.full((logits.shape[0],), float(os.getpid())))
    with Caller() as caller:
        called = caller.invoke(seen_pid, Request((SMALL.logits, SMALL.targets), repeat=1))
    assert called.failure is None and int(called.output[0]) != os.getpid()
