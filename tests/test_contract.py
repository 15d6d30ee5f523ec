"""The whole cross-entropy contract (issue 14): options read from signatures, output dtypes, the softmax family.

The oracle's own tests are tests/test_oracle_options.py (options and reductions) and
tests/test_oracle_gradient.py; here the contract is exercised end to end: loading, calling
by keyword, grading, records, counterexamples, replay and the bug classes.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

import harness
from harness.calling.caller import Caller, expected_shapes, request_for
from harness.calling.loading import load_implementation
from harness.calling.registry import REGISTRY, Implementation
from harness.cli import main
from harness.formats import FORMATS
from harness.oracle.options import LossOptions
from harness.profiles import resolve_profile
from harness.runner import RECORD_COLUMNS, run_case
from harness.search import contract_of, search
from strategies import REGIMES, Case, Contract, cases, with_contract
from tests.implementations import contract as bugs

ALL_OPTIONS = ("weight", "ignore_index", "reduction", "label_smoothing", "z_loss", "softcap")
SPEC = "tests.implementations.contract:{}"


def _impl(name: str) -> Implementation:
    return load_implementation(SPEC.format(name))


def _case(logits, targets, contract=None, dtype=torch.float32) -> Case:
    return Case(torch.tensor(logits, dtype=dtype), torch.tensor(targets), "moderate", contract)


# -- the contract is read from the signature ---------------------------------------------------


def test_options_and_soft_targets_are_read_from_the_signature():
    impl = _impl("sound_cross_entropy")
    assert impl.options == frozenset(ALL_OPTIONS) and impl.soft_targets and impl.op == "cross_entropy"
    assert REGISTRY.get("stable").options == frozenset()
    assert _impl("sound_log_softmax").op == "log_softmax"


def test_a_plain_signature_draws_the_cases_it_always_drew():
    plain = [REGISTRY.get("stable")]
    assert contract_of(plain) == (frozenset(), False)
    base = cases(dtype="float32", regimes=["moderate"])
    assert with_contract(base, *contract_of(plain)) is base


def test_options_flag_narrows_and_rejects_what_the_signature_lacks(tmp_path, capsys):
    impl = _impl("sound_cross_entropy")
    narrowed = harness.api.with_contract_settings(impl, options="reduction,weight")
    assert narrowed.options == {"reduction", "weight"}
    assert harness.api.with_contract_settings(impl, options="none").options == frozenset()
    with pytest.raises(ValueError, match="does not take 'weight'"):
        harness.api.with_contract_settings(REGISTRY.get("stable"), options="weight")
    with pytest.raises(ValueError, match="unknown option 'smoothing'"):
        harness.api.with_contract_settings(impl, options="smoothing")
    code = main(["check", "stable", "--options", "weight", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not take 'weight'" in err[0]


def test_a_kwargs_function_is_widened_by_the_options_flag(tmp_path):
    source = tmp_path / "kw.py"
    source.write_text(
        "import torch.nn.functional as F\n"
        "def ce(logits, targets, **kwargs):\n"
        "    return F.cross_entropy(logits, targets, reduction=kwargs.get('reduction', 'none'))\n"
    )
    impl = load_implementation(f"{source}:ce")
    assert impl.options == frozenset() and impl.var_keywords
    assert harness.api.with_contract_settings(impl, options="reduction").options == {"reduction"}


# -- calling: keywords, ignored targets, shapes -----------------------------------------------


def test_each_implementation_gets_the_options_it_takes():
    options = LossOptions(weight=(1.0, 2.0, 0.5), ignore_index=-1, reduction="sum", label_smoothing=0.25)
    contract = Contract(frozenset({"weight", "ignore_index", "reduction", "label_smoothing"}), options, (1,))
    case = _case([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]], [2, 0], contract)
    full = request_for(_impl("sound_cross_entropy"), case)
    assert full.args[1].tolist() == [2, -1] and full.kwargs["reduction"] == "sum"
    assert full.kwargs["weight"].dtype == torch.float32 and full.kwargs["weight"].tolist() == [1.0, 2.0, 0.5]
    plain = request_for(REGISTRY.get("stable"), case)
    assert plain.args[1].tolist() == [2, 0] and not plain.kwargs  # its real targets, no keywords
    assert expected_shapes(_impl("sound_cross_entropy"), case) == ((), (1,))
    assert expected_shapes(REGISTRY.get("stable"), case) == ((2,), (), (1,))
    assert expected_shapes(REGISTRY.get("torch.logsumexp"), case) == ((2,),)


def test_options_are_graded_against_the_certified_value():
    options = LossOptions(weight=(1.0, 2.0, 0.5), ignore_index=-1, reduction="sum", label_smoothing=0.25)
    contract = Contract(frozenset({"weight", "ignore_index", "reduction", "label_smoothing"}), options, (1,))
    case = _case([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]], [2, 0], contract, torch.float64)
    records = {r["impl"]: r for r in run_case(case, [_impl("sound_cross_entropy"), REGISTRY.get("stable")])}
    mine = records[SPEC.format("sound_cross_entropy")]
    weight = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    expected = F.cross_entropy(case.logits, torch.tensor([2, -1]), weight=weight, ignore_index=-1, reduction="sum",
                               label_smoothing=0.25)  # fmt: skip
    assert mine["verdict"] == "ok" and mine["reduction"] == "sum" and mine["n_ignored"] == 1
    assert mine["oracle"] == pytest.approx(float(expected), rel=1e-15) and mine["weighted"]
    assert "label_smoothing=0.25" in mine["options"]
    plain = records["stable"]  # the same case, without options: its own oracle value
    assert plain["options"] == "" and plain["reduction"] == "none" and plain["verdict"] == "ok"
    assert set(RECORD_COLUMNS) <= set(mine)


def test_a_mean_over_zero_weight_is_nan_as_in_torch():
    options = LossOptions(weight=(0.0, 1.0), reduction="mean", label_smoothing=0.5)
    contract = Contract(frozenset({"weight", "reduction", "label_smoothing"}), options)
    case = _case([[1.0, 2.0]], [0], contract)
    torch_mean = F.cross_entropy(case.logits, case.targets, weight=torch.tensor([0.0, 1.0]), label_smoothing=0.5)
    assert math.isnan(torch_mean)
    record = run_case(case, [_impl("sound_cross_entropy")])[0]
    assert math.isnan(record["oracle"]) and record["verdict"] in ("ok", "ungraded")
    wrong = run_case(case, [_impl("weighted_mean_by_rows")])[0]
    assert wrong["verdict"] == "unstable" and wrong["outcome"] == "missing_nonfinite"


# -- output dtypes ---------------------------------------------------------------------------------


def test_a_float32_loss_of_bfloat16_logits_is_graded_in_float32():
    case = _case([[3.0, 1.0, -2.0, 0.5]], [1], dtype=torch.bfloat16)
    good = run_case(case, [_impl("sound_float32_out")])[0]
    assert good["output_dtype"] == "float32" and good["dtype"] == "bfloat16" and good["verdict"] == "ok"
    bad = run_case(case, [_impl("float32_through_bfloat16")])[0]
    assert bad["output_dtype"] == "float32" and bad["verdict"] == "unstable"


def test_a_required_output_dtype_makes_any_other_a_bad_output():
    impl = harness.api.with_contract_settings(REGISTRY.get("stable"), output_dtype="float32")
    record = run_case(_case([[1.0, 2.0]], [0], dtype=torch.bfloat16), [impl])[0]
    assert record["outcome"] == "bad_output" and "required output dtype is torch.float32" in record["message"]


# -- the softmax family ------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["log_softmax", "softmax", "logsumexp"])
def test_the_family_is_graded_per_element(op):
    case = _case([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]], [0, 0])
    torch_impl, naive_impl = REGISTRY.get(f"torch.{op}"), REGISTRY.get(f"naive.{op}")
    records = {r["impl"]: r for r in run_case(case, [torch_impl, naive_impl])}
    assert records[torch_impl.name]["verdict"] == "ok" and records[torch_impl.name]["op"] == op
    assert records[naive_impl.name]["verdict"] == "unstable"  # exp(1000) overflows
    assert records[naive_impl.name]["sample"] == 0
    if op != "logsumexp":
        assert 0 <= records[naive_impl.name]["element"] < 3


# -- strategies, case storage, counterexamples -------------------------------------------------------


@settings(max_examples=30, deadline=None, database=None)
@given(with_contract(cases(dtype="bfloat16", max_classes=64), ALL_OPTIONS, True))
def test_drawn_contracts_survive_the_case_store(case):
    again = Case.from_json(json.loads(json.dumps(case.to_json())))
    assert again.case_id == case.case_id
    if case.contract is not None:
        assert again.contract.options == case.contract.options and again.contract.ignored == case.contract.ignored
        if case.contract.probs is not None:
            assert torch.equal(again.contract.probs, case.contract.probs)
            assert case.contract.probs.dtype == case.dtype and case.logits.ndim == 2


def test_option_shares_and_counterexamples_of_a_check(tmp_path, capsys):
    code = main(["check", SPEC.format("weighted_mean_by_rows"), "--dtype", "float32", "--profile", "ci",
                 "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1 and "options = " in out and "reduction='mean'" in out
    records = pd.read_csv(tmp_path / "records.csv")
    mine = records[records["impl"] == SPEC.format("weighted_mean_by_rows")]
    assert set(mine["reduction"]) == {"none", "sum", "mean"}
    assert mine["weighted"].any() and (mine["n_ignored"] > 0).any() and mine["soft_targets"].any()
    assert (mine["label_smoothing"] == 1.0).any() and (mine["z_loss"] > 0).any() and mine["softcap"].notna().any()
    case_id = mine.loc[mine["verdict"] == "unstable", "case_id"].iloc[0]
    assert main(["replay", str(tmp_path), case_id]) == 0
    replayed = capsys.readouterr().out
    assert case_id in replayed


# -- bug classes: each on an input where it bites (fast), then over drawn cases (slow) ----------------------


def _with(options: LossOptions, names, ignored=()) -> Contract:
    return Contract(frozenset(names), options, tuple(ignored))


BITES = {  # bug class -> (logits, targets, dtype, contract or None) where it bites
    "weighted_mean_by_rows": ([[1.0, 2.0], [3.0, 0.0]], [0, 1], torch.float32,
                              _with(LossOptions(weight=(1.0, 2.0), reduction="mean"), ["weight", "reduction"])),
    "ignored_rows_in_mean": ([[1.0, 2.0], [3.0, 0.0]], [0, 1], torch.float32,
                             _with(LossOptions(reduction="mean"), ["ignore_index", "reduction"], [1])),
    "smoothing_over_c_minus_1": ([[1.0, 2.0, 0.5]], [0], torch.float32,
                                 _with(LossOptions(label_smoothing=0.5), ["label_smoothing", "reduction"])),
    "smoothing_from_log_softmax_underflow": ([[0.0, -200.0]], [0], torch.float32,
                                             _with(LossOptions(label_smoothing=0.1), ["label_smoothing"])),
    "batch_sum_in_input_dtype": ([[0.0, 0.0]] * 1024, [0] * 1024, torch.bfloat16,
                                 _with(LossOptions(reduction="sum"), ["reduction"])),
    "float32_through_bfloat16": ([[1.0, 1.0]], [0], torch.float32, _with(LossOptions(), ["reduction"])),
    "z_loss_leaks": ([[10.0, 0.0]], [0], torch.float32, _with(LossOptions(), ["z_loss", "reduction"])),
    "z_loss_unshifted": ([[100.0, 0.0]], [0], torch.float32, _with(LossOptions(z_loss=1e-4), ["z_loss"])),
    "softcap_with_exp": ([[3000.0, 0.0]], [0], torch.float32, _with(LossOptions(softcap=30.0), ["softcap"])),
    "log_softmax_unshifted": ([[100.0, 0.0]], [0], torch.float32, None),
    "softmax_denominator_overflows": ([[0.0] * 70_000], [0], torch.float16, None),
}  # fmt: skip


@pytest.mark.parametrize("bug", list(bugs.BUG_CLASSES))
def test_each_contract_bug_class_is_flagged_where_it_bites(bug):
    logits, targets, dtype, contract = BITES[bug]
    case = _case(logits, targets, contract, dtype)
    mutant = _impl(bug)
    sound = _impl(
        {"log_softmax": "sound_log_softmax", "softmax": "sound_softmax"}.get(mutant.op, "sound_cross_entropy")
    )
    records = {r["impl"]: r for r in run_case(case, [mutant, sound])}
    assert records[mutant.name]["verdict"] == "unstable", records[mutant.name]
    assert records[sound.name]["verdict"] in ("ok", "inaccurate"), records[sound.name]


@pytest.fixture(scope="module")
def contract_records() -> pd.DataFrame:
    """Every contract bug class and sound implementation on check's default (dev) budget, cases shared."""
    names = list(bugs.BUG_CLASSES) + list(bugs.SOUND) + ["sound_float32_out"]
    implementations = [_impl(name) for name in names]
    with Caller(repeat=False) as caller:
        found = search(list(FORMATS.values()), list(REGIMES), implementations, profile=resolve_profile("dev"),
                       caller=caller)  # fmt: skip
    records = pd.DataFrame(found.records)
    records["impl"] = records["impl"].str.rsplit(":", n=1).str[-1]
    return records


@pytest.mark.slow
@pytest.mark.parametrize("bug", list(bugs.BUG_CLASSES))
def test_every_contract_bug_class_is_flagged(contract_records, bug):
    mine = contract_records[contract_records["impl"] == bug]
    flagged = set(mine.loc[mine["verdict"] == "unstable", "dtype"])
    assert set(bugs.BUG_CLASSES[bug]) <= flagged, mine.groupby("dtype")["verdict"].value_counts()


@pytest.mark.slow
@pytest.mark.parametrize("name", [*list(bugs.SOUND), "sound_float32_out"])
def test_sound_contract_implementations_pass(contract_records, name):
    mine = contract_records[contract_records["impl"] == name]
    assert len(mine) > 200
    unstable = mine[mine["verdict"] == "unstable"]
    assert unstable.empty, unstable[["dtype", "regime", "outcome", "options", "output", "oracle"]].head().to_string()
