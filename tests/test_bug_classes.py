"""Every bug class is flagged and sound code spared: on a small budget, and on check's default one (--run-slow)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import harness
from harness.calling.caller import Caller
from harness.calling.registry import Implementation
from harness.formats import FORMATS
from harness.profiles import Profile, resolve_profile
from harness.search import search
from strategies import REGIMES
from tests.implementations import mutants, sound, tiled

SOUND = {
    "torch_ce": ("bfloat16", "float32", "float64"),  # float16: see the overflow test below
    "upcast_float32": ("float16", "bfloat16", "float32", "float64"),
    "cross_entropy_from_scratch": ("float32", "float64"),
}
ALL_DTYPES = ("float16", "bfloat16", "float32", "float64")
# online-softmax kernels over tiles (tests/implementations/tiled.py), at the smallest and largest
# tile size the default budget must reach; scripts/catch_rates.py measures every size over seeds
TILED = [f"{variant}_{tile}" for variant in tiled.VARIANTS for tile in (1024, 8192)]
# The default run's budget: the ci profile's 8 examples per cell at the dev profile's sizes (up to
# 131,072 classes and 4,096 rows, which the tiled kernels and torch's float16 overflow need).
FAST = Profile("fast", examples=8, max_classes=131_072, database=False, max_rows=4_096)
# Bug classes that bite only on rare shapes (thousands of rows; odd widths of 513 to 1,023 classes),
# and the regimes that draw them: on these cells the fast budget runs them with dev's 25 examples.
RARE_SHAPES = {"low_precision_batch_mean": ["batch"], "drops_last_class_odd_wide": ["strided", "large_vocab"]}
# records each sound implementation must have (a run that graded little proves little)
MIN_RECORDS = {"fast": 150, "dev": 500}


def _implementation(module, name: str) -> Implementation:
    """``module.name`` as harness.check takes a Python callable (sent to its sandbox by reference)."""
    fn = getattr(module, name)
    return Implementation(f"{module.__name__}:{name}", fn, source="python",
                          k_dimensional=bool(getattr(fn, "k_dimensional", False)))  # fmt: skip


def _search(names, regimes, profile: Profile) -> pd.DataFrame:
    modules = {**dict.fromkeys(mutants.BUG_CLASSES, mutants), **dict.fromkeys(SOUND, sound),
               **dict.fromkeys(TILED, tiled)}  # fmt: skip
    implementations = [_implementation(modules[name], name) for name in names]
    with Caller(repeat=False) as caller:
        found = search(list(FORMATS.values()), regimes, implementations, profile=profile, caller=caller)
    return pd.DataFrame(found.records)


@pytest.fixture(scope="module", params=["fast", pytest.param("dev", marks=pytest.mark.slow)])
def default_budget_records(request) -> pd.DataFrame:
    """Every bug class and sound implementation on the cases of a budget: ``dev`` is check's default.

    check() draws its cases per (dtype, regime) cell with the same seeds; running every
    implementation over them at once shares the oracle and keeps this test affordable.
    Each is called once per case (these implementations are deterministic; the determinism
    check's second call would double the sandbox round trips). The literal
    per-implementation check() runs are the slow tests below. ``fast`` (the default run)
    is FAST on every cell, plus dev's examples on the RARE_SHAPES bug classes' cells.
    """
    names = [*mutants.BUG_CLASSES, *SOUND, *TILED]
    if request.param == "dev":
        records = _search(names, list(REGIMES), resolve_profile("dev"))
    else:  # the deep cells first: their two sandboxes stay parked for the broad search (harness.calling.sandbox)
        deep = sorted({regime for regimes in RARE_SHAPES.values() for regime in regimes})
        rare = _search(list(RARE_SHAPES), deep, resolve_profile("dev"))
        records = pd.concat([_search(names, list(REGIMES), FAST), rare], ignore_index=True)
    records["impl"] = records["impl"].str.rsplit(":", n=1).str[-1]
    records.attrs["budget"] = request.param
    return records


@pytest.mark.parametrize("bug", list(mutants.BUG_CLASSES))
def test_default_budget_flags_every_bug_class(default_budget_records, bug):
    mine = default_budget_records[default_budget_records["impl"] == bug]
    flagged = set(mine.loc[mine["verdict"] == "unstable", "dtype"])
    assert set(mutants.BUG_CLASSES[bug]) <= flagged


@pytest.mark.parametrize("kernel", [name for name in TILED if not name.startswith("sound")])
def test_default_budget_flags_tiled_kernel_bugs_in_every_dtype(default_budget_records, kernel):
    """A forgotten rescale of the running sum, and no -inf guard for a fully masked leading tile
    (flash-attention#1930), at tiles of 1,024 and 8,192 classes: both bite in every dtype."""
    mine = default_budget_records[default_budget_records["impl"] == kernel]
    assert set(mine.loc[mine["verdict"] == "unstable", "dtype"]) == set(ALL_DTYPES)


@pytest.mark.parametrize("kernel", [name for name in TILED if name.startswith("sound")])
def test_default_budget_spares_sound_tiled_kernels(default_budget_records, kernel):
    mine = default_budget_records[default_budget_records["impl"] == kernel]
    assert len(mine) > 2 * MIN_RECORDS[default_budget_records.attrs["budget"]] and mine["n_classes"].max() > 100_000
    assert not (mine["verdict"] == "unstable").any(), mine[mine["verdict"] == "unstable"].head()


@pytest.mark.parametrize("name", list(SOUND))
def test_default_budget_spares_sound_implementations(default_budget_records, name):
    mine = default_budget_records[
        (default_budget_records["impl"] == name) & default_budget_records["dtype"].isin(SOUND[name])
    ]
    assert len(mine) > MIN_RECORDS[default_budget_records.attrs["budget"]]
    assert not (mine["verdict"] == "unstable").any(), mine[mine["verdict"] == "unstable"].head()


def test_torch_float16_overflows_past_65504_classes(default_budget_records):
    """A real PyTorch CPU defect the default budget (and the fast one) finds: the float16 normaliser overflows.

    With more than 65,504 equal logits the exponential sum exceeds float16's range and
    F.cross_entropy returns inf, although the loss (log n, about 11.8) is representable.
    check flags exactly those cases and nothing else of torch in float16.
    """
    logits = torch.zeros(1, 65_600, dtype=torch.float16)
    assert torch.isinf(F.cross_entropy(logits, torch.tensor([0]), reduction="none")).all()
    mine = default_budget_records[
        (default_budget_records["impl"] == "torch_ce") & (default_budget_records["dtype"] == "float16")
    ]
    unstable = mine[mine["verdict"] == "unstable"]
    assert (
        len(unstable) > 0 and (unstable["n_classes"] > 65_504).all() and (unstable["outcome"] == "spurious_inf").all()
    )
    # the loss only: torch's float16 backward rounds p_t to 16 bits (flagged, README "Gradients")
    assert harness.check(sound.torch_ce, dtypes=["float16"], max_classes=65_504, examples=10, grad=False).passed


@pytest.mark.slow
@pytest.mark.parametrize("bug", list(mutants.BUG_CLASSES))
def test_check_flags_bug_class_on_its_default_budget(bug):
    result = harness.check(getattr(mutants, bug))
    assert not result.passed
    assert set(mutants.BUG_CLASSES[bug]) <= set(result.records.loc[result.records["verdict"] == "unstable", "dtype"])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SOUND))
def test_check_passes_sound_implementation_on_its_default_budget(name):
    # the loss: torch's own 16-bit backward is flagged (README "Gradients"); tests/test_gradient_bug_classes.py
    assert harness.check(getattr(sound, name), dtypes=SOUND[name], grad=False).passed


@pytest.mark.slow
@pytest.mark.parametrize("kernel", [f"{v}_{t}" for v in tiled.VARIANTS for t in tiled.TILE_SIZES])
def test_check_judges_tiled_kernels_on_their_default_budget(kernel):
    result = harness.check(getattr(tiled, kernel), grad=False)  # forward kernels; autograd of the loop is slow
    if kernel.startswith("sound"):
        assert result.passed
    else:
        assert set(result.records.loc[result.records["verdict"] == "unstable", "dtype"]) == set(ALL_DTYPES)
