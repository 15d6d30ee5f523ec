"""The same seed draws the same cases, whatever else the user's process imports (harness.determinism).

Each run is a fresh process, as a user's would be: one imports a module full of
constants before calling the harness, one does not, and the records must be identical
(timing columns aside) through the CLI, the Python API and the pytest fixture.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from harness.runner import TIMING_COLUMNS

TIMING = list(TIMING_COLUMNS)
# the loss only: the seed notebook's stable version computes its backward in bfloat16 (flagged, issue 15)
BUDGET = {"dtypes": ["bfloat16"], "regimes": ["moderate", "ties", "offset", "tiny"], "examples": 12, "seed": 0,
          "grad": False}  # fmt: skip
CONSTANTS = """
# Constants of every kind Hypothesis collects from local modules.
LIMIT = 1500
HUGE = 3.5e38
FP16_MAX = -65504.0
SMALL = [0, 1, 2, 3, 7, 100, 127, -126, 255, 1023]
HALF = 0.5
NAME = "bfloat16"
"""


def _run(code: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def _records(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"output_bits": str}).drop(columns=TIMING)
    return frame.sort_values(["impl", "case_id", "quantity"], kind="stable").reset_index(drop=True)


def _api_records(tmp_path: Path, name: str, with_constants: bool) -> pd.DataFrame:
    (tmp_path / "my_constants.py").write_text(CONSTANTS)
    out = tmp_path / f"{name}.csv"
    _run(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        if {with_constants}:
            import my_constants  # noqa: F401 - only its constants matter
        import pandas as pd
        import harness
        result = harness.check("stable", **{BUDGET!r})
        pd.concat([result.records, result.reference]).to_csv({str(out)!r}, index=False)
        """,
        tmp_path,
    )
    return _records(out)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> pd.DataFrame:
    return _api_records(tmp_path_factory.mktemp("plain"), "plain", with_constants=False)


def test_unrelated_constants_do_not_change_the_cases(plain, tmp_path):
    with_constants = _api_records(tmp_path, "constants", with_constants=True)
    assert len(plain) > 50
    pd.testing.assert_frame_equal(plain, with_constants)


def test_cli_and_api_draw_the_same_cases(plain, tmp_path):
    args = ["check", "stable", "--dtype", "bfloat16", "--examples", str(BUDGET["examples"]), "--seed", "0",
            "--out", str(tmp_path / "cli"), "--quiet", "--no-grad"]  # fmt: skip
    for regime in BUDGET["regimes"]:
        args += ["--regime", regime]
    done = subprocess.run([sys.executable, "-m", "harness", *args], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    pd.testing.assert_frame_equal(plain, _records(tmp_path / "cli" / "records.csv"))


def test_pytest_fixture_draws_the_same_cases(plain, tmp_path):
    (tmp_path / "my_constants.py").write_text(CONSTANTS)
    out = tmp_path / "fixture.csv"
    (tmp_path / "conftest.py").write_text("LOCAL_CONSTANT = 1500\n")
    (tmp_path / "test_user_loss.py").write_text(
        textwrap.dedent(
            f"""
            import pandas as pd
            import my_constants  # noqa: F401 - a user module full of constants

            def test_loss(ce_stability):
                result = ce_stability("stable", **{BUDGET!r})
                pd.concat([result.records, result.reference]).to_csv({str(out)!r}, index=False)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "test_user_loss.py"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert out.exists(), done.stdout[-3000:]
    pd.testing.assert_frame_equal(plain, _records(out))


def test_the_harness_restores_hypothesis_default_backend():
    from hypothesis.internal.conjecture import providers

    from harness.determinism import GlobalConstantsProvider, independent_of_local_constants

    before = providers.AVAILABLE_PROVIDERS["hypothesis"]
    with independent_of_local_constants():
        assert providers.AVAILABLE_PROVIDERS["hypothesis"] == "harness.determinism.GlobalConstantsProvider"
        assert GlobalConstantsProvider.__module__ == "harness.determinism"
    assert providers.AVAILABLE_PROVIDERS["hypothesis"] is before
