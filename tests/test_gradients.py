"""Gradients in check (issue 15): the backward pass is taken, graded per element, recorded and reported."""

from __future__ import annotations

import json
import math

import pytest
import torch

import harness
from harness.baseline import compare, statistics
from harness.calling.caller import Caller
from harness.calling.loading import load_implementation
from harness.cli import main
from harness.export import reproducer_source
from harness.replay import replay_case
from harness.runner import run_case
from reports.store import load_records
from strategies import Case
from strategies.upstream import PATTERNS, upstream_gradients, upstream_pattern, upstream_scalar

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
PROBES = "tests.implementations.backward_probes"


def _impl(name: str):
    return load_implementation(f"{PROBES}:{name}")


def _case(dtype=torch.float32, logits=None, targets=None) -> Case:
    x = torch.tensor([[1.0, 2.0, -3.0, 9.0], [0.5, -math.inf, 3.0, 0.0], [20.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([3, 2, 0]) if targets is None else targets
    return Case((x if logits is None else logits).to(dtype), targets, "moderate")


# -- upstream gradients --------------------------------------------------------------------------


def test_upstream_gradients_are_exact_in_the_dtype_and_a_function_of_the_case():
    seen = set()
    for k in range(60):
        for dtype in DTYPES:
            case = _case(dtype, logits=torch.randn(3, 5, generator=torch.Generator().manual_seed(k)))
            g = upstream_gradients(case)
            assert g.shape == case.targets.shape and g.dtype == torch.float64
            assert torch.equal(g.to(dtype).double(), g), "not exact in the case's dtype"
            assert torch.equal(g, upstream_gradients(case)), "not a function of the case"
            assert upstream_scalar(case) != 0
            seen.add(upstream_pattern(case))
    assert seen == set(PATTERNS)


# -- the backward step -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_autograd_of_an_upcasting_forward_passes_in_every_dtype(dtype):
    case = _case(dtype)
    records = run_case(case, [_impl("upcast"), _impl("upcast_mean")], quantities=("loss", "grad"))
    grads = [r for r in records if r["quantity"] == "grad"]
    assert len(grads) == 2 and len(records) == 4
    for record in grads:
        # float32's p_t − 1 is 0 at p_t > 1 − 2**-25 (row 2): inaccurate, never unstable (issue 15)
        assert record["verdict"] in ("ok", "inaccurate"), record
        assert record["output_dtype"] == str(dtype).removeprefix("torch.")
        assert 0 <= record["sample"] < 3 and 0 <= record["element"] < 4 and math.isfinite(record["upstream"])
        assert record["oracle_certified"]
    mean = next(r for r in grads if r["impl"].endswith("upcast_mean"))
    assert mean["reduction"] == "mean" and mean["upstream"] == upstream_scalar(case)


def test_grad_only_records_only_the_gradient():
    records = run_case(_case(), [_impl("upcast")], quantities=("grad",))
    assert [r["quantity"] for r in records] == ["grad"]
    with pytest.raises(ValueError, match="unknown quantity"):
        run_case(_case(), [_impl("upcast")], quantities=("hessian",))


@pytest.mark.parametrize("name", ["detached", "through_numpy"])
def test_an_implementation_that_is_not_differentiable_is_graded_on_its_forward(name):
    for quantities in (("loss", "grad"), ("grad",)):
        records = run_case(_case(), [_impl(name)], quantities=quantities)
        assert [r["quantity"] for r in records] == ["loss"]
        assert records[0]["verdict"] != "unstable" and "not differentiable" in records[0]["message"]


def test_a_numpy_implementation_is_not_differentiable():
    records = run_case(_case(torch.float64), [load_implementation("tests.implementations.numpy_impls:stable")],
                       quantities=("loss", "grad"))  # fmt: skip
    assert [r["quantity"] for r in records] == ["loss"] and "a numpy implementation" in records[0]["message"]


def test_a_backward_that_raises_is_a_gradient_failure_beside_a_graded_loss():
    loss, grad = run_case(_case(), [_impl("raising_backward")], quantities=("loss", "grad"))
    assert loss["quantity"] == "loss" and loss["verdict"] != "unstable"
    assert grad["quantity"] == "grad" and grad["outcome"] == "raised" and grad["verdict"] == "unstable"
    assert "not implemented" in grad["message"]


def test_the_gradient_of_a_k_dimensional_case_is_graded_per_row():
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    case = Case(x, torch.tensor([[0, 1, 2, 0], [2, 2, 1, 0]]), "layout")
    fn = harness.Implementation("k_dim", lambda logits, targets: torch.nn.functional.cross_entropy(
        logits, targets, reduction="none"), k_dimensional=True)  # fmt: skip
    with Caller() as caller:
        records = run_case(case, [fn], caller=caller, quantities=("grad",))
    assert records[0]["verdict"] == "ok" and records[0]["sample"] < 8 and records[0]["element"] < 3


# -- check, the CLI and reports --------------------------------------------------------------------


def ignores_grad_output(logits, targets):
    """Gradient computed in the forward and returned unscaled by grad_output (issue 15's second bug)."""

    class Fused(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, t):
            wide = x.float() if x.dtype != torch.float64 else x
            p = torch.softmax(wide, dim=1)
            p[torch.arange(len(t)), t] -= 1
            ctx.save_for_backward(p.to(x.dtype))
            return torch.nn.functional.cross_entropy(wide, t, reduction="none").to(x.dtype)

        @staticmethod
        def backward(ctx, grad_output):
            (grad,) = ctx.saved_tensors
            return grad, None

    return Fused.apply(logits, targets)


def test_check_grades_gradients_by_default_and_catches_an_ignored_grad_output():
    result = harness.check(ignores_grad_output, dtypes=["float32"], regimes=["moderate"], examples=12)
    assert not result.passed
    assert set(result.records["quantity"]) == {"loss", "grad"}
    assert not result.records.query("quantity == 'loss'")["verdict"].eq("unstable").any()
    assert result.counterexamples[0].record["quantity"] == "grad"
    text = result.describe()
    assert "in the gradient" in text and "gradient: " in text.splitlines()[0]
    plain = harness.check(ignores_grad_output, dtypes=["float32"], regimes=["moderate"], examples=12, grad=False)
    assert plain.passed and set(plain.records["quantity"]) == {"loss"}
    with pytest.raises(ValueError, match="grad_only"):
        harness.check(ignores_grad_output, grad=False, grad_only=True)


def test_check_reports_once_that_an_implementation_is_not_differentiable():
    result = harness.check(f"{PROBES}:detached", dtypes=["float32"], regimes=["moderate"], examples=3)
    assert result.passed and "not differentiable" in result.not_differentiable
    assert result.status_line().count("not differentiable") == 1


def test_cli_grad_flags_replay_baseline_and_export(tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["check", "tests/test_gradients.py:ignores_grad_output", "--dtype", "float64", "--regime", "moderate",
                 "--examples", "8", "--out", str(out), "--save-baseline", str(tmp_path / "base.json")])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 1, printed.err
    assert "gradient element" in printed.out and "backward = " in printed.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantities"] == ["loss", "grad"]
    records = load_records(out)
    assert set(records["quantity"]) == {"loss", "grad"}
    assert set(statistics(records)["quantity"]) == {"loss", "grad"}
    saved = json.loads((tmp_path / "base.json").read_text())
    assert {c["quantity"] for c in saved["cells"]} == {"loss", "grad"}
    assert not compare(saved, records, {k: saved[k] for k in ("seed", "examples", "max_classes", "profile")})[
        "regressed"
    ].any()
    failing = records[(records["quantity"] == "grad") & (records["verdict"] == "unstable")].iloc[0]
    text = replay_case(out, failing["case_id"])
    assert "gradient [" in text and "[same bits as recorded]" in text and "DIFFERS" not in text
    assert main(["check", "torch", "--no-grad", "--grad-only", "--examples", "1"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    cases = {c.case_id: c for c in map(Case.from_json, map(json.loads, (out / "cases.jsonl").read_text().splitlines()))}
    text = reproducer_source(cases[failing["case_id"]], failing.to_dict(),
                             load_implementation("tests/test_gradients.py:ignores_grad_output"))  # fmt: skip
    assert "logits.requires_grad_(True)" in text and "in the gradient" in text  # a test of the gradient (test_export)
    compile(text, "exported.py", "exec")
    html = (out / "report.html").read_text()
    assert "(gradient)" in html


def test_a_zero_upstream_on_a_nan_row_accepts_zero_and_nan():
    """The forward is NaN there, so NaN (0 · NaN, torch's autograd) is "NaN only where the forward is NaN"."""
    from harness.formats import FORMATS
    from harness.grading.expected import Expectations
    from harness.grading.metrics import measure

    inf = math.inf
    case = _case(torch.float32, torch.tensor([[inf, 1.0, 0.0], [math.nan, 1.0, 0.0], [2.0, 1.0, 0.0]]),
                 torch.tensor([0, 2, 1]))  # fmt: skip
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    expected = Expectations(case).gradient(None, "none", up, FORMATS["float32"])
    x = case.logits.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(x, case.targets, reduction="none")
    (nan_grad,) = torch.autograd.grad(loss, x, up.float())
    assert torch.isnan(nan_grad[:2]).all()
    for grad in (nan_grad, torch.nan_to_num(nan_grad, nan=0.0)):
        metrics = measure(grad, expected.values, torch.float32, allowed=expected.allowed,
                          special_input=expected.special, accept_nonfinite=expected.accept_nonfinite)  # fmt: skip
        assert metrics["verdict"] in ("ok", "inaccurate"), metrics
    (real,) = torch.autograd.grad(torch.nn.functional.cross_entropy(x, case.targets, reduction="none"), x,
                                  torch.ones(3))  # fmt: skip
    metrics = measure(real, Expectations(case).gradient(None, "none", torch.ones(3, dtype=torch.float64),
                      FORMATS["float32"]).values, torch.float32)  # fmt: skip
    assert torch.isnan(real[:2]).all() and metrics["outcome"] != "spurious_nan"


def test_hostile_backwards_are_gradient_failures_or_read():
    (none,) = run_case(_case(), [_impl("returns_none")], quantities=("grad",))
    assert none["quantity"] == "grad" and none["outcome"] == "bad_output" and "None" in none["message"]
    records = run_case(_case(), [_impl("sparse_gradient"), _impl("writes_grad_output")], quantities=("loss", "grad"))
    assert [r["verdict"] != "unstable" for r in records] == [True] * 4, records


def test_a_large_common_offset_does_not_absorb_the_allowance():
    """1,024 equal logits at −2.49e35: p = 1/1024 each, as at 0 (the allowance once saw p = 1)."""
    for offset in (0.0, -2.49e35):
        case = Case(torch.full((1, 1024), offset, dtype=torch.bfloat16), torch.tensor([3]), "ties")
        (record,) = run_case(case, [_impl("doubles_non_targets")], quantities=("grad",))
        assert record["verdict"] == "unstable", (offset, record)


def test_grad_only_on_an_implementation_that_is_not_differentiable_grades_nothing():
    result = harness.check(f"{PROBES}:detached", dtypes=["float32"], regimes=["moderate"], examples=2, grad_only=True)
    assert not result.passed and any("no gradient was graded" in e for e in result.errors)


def test_grad_only_on_the_softmax_family_is_a_usage_error(capsys):
    """Only cross entropy's backward is graded: --grad-only on log_softmax would grade nothing."""
    assert main(["check", "torch.log_softmax", "--grad-only", "--dtype", "float32", "--examples", "1"]) == 2
    assert "gradients are graded for cross entropy only" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cross entropy only"):
        harness.check("torch.softmax", grad_only=True, dtypes=["float32"], examples=1)
