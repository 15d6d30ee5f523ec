"""HTML report, demo and precision audit."""

from __future__ import annotations

import html.parser
import json

import pandas as pd
import pytest

from harness.cli import main
from harness.demo import find_thresholds
from harness.formats import FORMATS
from reports.precision import PRECISION_COLUMNS


class _Collector(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.headings: list[str] = []
        self.scripts = 0
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "script":
            self.scripts += 1
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


@pytest.fixture(scope="module")
def html_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("html")
    mine = folder / "mine.py"
    mine.write_text(
        "import torch.nn.functional as F\ndef ce(x, t):\n    return F.cross_entropy(x, t, reduction='none')\n"
    )
    # implementation names with HTML in them are refused (tests/test_cli.py); a folder name is not
    out = folder / "<script>alert(1)"
    args = ["audit", "--examples", "3", "--max-classes", "64", "--regime", "huge", "--regime", "moderate",
            "--impl", "naive", "--impl", f"{mine}:ce", "--quiet", "--shrink-seconds", "10",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    return out


def test_html_parses_with_every_section_and_embedded_images(html_report):
    text = (html_report / "report.html").read_text()
    collector = _Collector()
    collector.feed(text)
    for section in ("At a glance", "Outcomes per implementation and dtype", "Error against the largest logit magnitude",
                    "Error against the logit spread", "Error against class count", "Distribution of errors",
                    "Worst case per regime and implementation", "Summary per implementation"):  # fmt: skip
        assert any(h.startswith(section) for h in collector.headings), section
    assert len(collector.images) >= 5 and all(src.startswith("data:image/png;base64,") for src in collector.images)
    assert "http://" not in text and "https://" not in text  # nothing fetched from the network
    for needle in ("Command:", "Seed:", "torch", "hypothesis", "mpmath", "python -m harness replay"):
        assert needle in text


def test_failures_get_shrunk_reproducers_that_replay_bit_for_bit(html_report, capsys):
    """The audit keeps every case; afterwards each failing cell is searched again and shrunk."""
    from harness.calling.registry import REGISTRY
    from harness.formats import FORMATS as formats
    from harness.runner import run_case
    from reports.store import load_cases, load_records, load_reproducers

    reproducers = load_reproducers(html_report)
    records = load_records(html_report)
    failing = records[records["verdict"] == "unstable"].drop_duplicates(["impl", "dtype", "regime"])
    assert len(reproducers) == len(failing) and set(reproducers["impl"]) == {"naive"}
    shrunk = reproducers[reproducers["status"] == "shrunk"]
    assert len(shrunk) >= 1
    stored = load_cases(html_report)
    for row in shrunk.to_dict(orient="records"):
        case = stored[row["reproducer"]]  # stored exactly, so it replays
        assert case.format is formats[row["dtype"]] and case.regime == row["regime"]
        worst = stored[row["worst_case"]]
        assert case.row_logits.numel() <= worst.row_logits.numel()  # no bigger than the worst case
        (again,) = run_case(case, [REGISTRY.get("naive")])
        assert again["outcome"] == row["outcome"] and again["verdict"] == "unstable"
        assert again["output_bits"] == row["output_bits"]
        assert main(["replay", str(html_report), row["reproducer"], "--impl", "naive"]) == 0
        assert "[same bits as recorded]" in capsys.readouterr().out
    text = (html_report / "report.html").read_text()
    assert "Minimal reproducers" in text and "Minimal reproducers" in (html_report / "summary.md").read_text()


def test_shrinking_can_be_turned_off(tmp_path):
    args = ["audit", "--impl", "naive", "--dtype", "float32", "--regime", "huge", "--examples", "3",
            "--max-classes", "64", "--quiet", "--shrink-seconds", "0", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    assert not (tmp_path / "reproducers.csv").exists()
    assert json.loads((tmp_path / "manifest.json").read_text())["shrink_seconds"] == 0


def test_html_escapes_hostile_paths(html_report):
    text = (html_report / "report.html").read_text()
    collector = _Collector()
    collector.feed(text)
    assert collector.scripts == 0 and "<script>" not in text and "&lt;script&gt;" in text


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=list(FORMATS))
def test_demo_thresholds_match_theory_within_one_ulp(fmt):
    found = find_thresholds(fmt)
    assert abs(found.naive_breaks_at - found.theory_overflow) <= found.ulp_at_overflow
    assert abs(found.exp_underflows_below - found.theory_underflow) <= found.ulp_at_underflow
    assert found.stable_ulps == 0 and found.torch_ulps == 0  # stable and torch stay exact there


def test_demo_command_writes_its_page(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    for name in ("demo-overflow.png", "demo-underflow.png", "demo-dominant.png", "demo.md", "demo.html"):
        assert (tmp_path / name).stat().st_size > 0
    shown = capsys.readouterr().out
    assert "naive breaks at" in shown and "pytorch#113708" in shown
    page = (tmp_path / "demo.html").read_text()
    for words in ("max-shifted log-sum-exp", "naive: softmax, then log", "Underflow", "A loss near 0"):
        assert words in page, words
    assert "seed notebook" not in page  # words a student knows


def test_precision_audit_tables(tmp_path):
    args = ["audit", "--precision", "--dtype", "float16", "--dtype", "bfloat16", "--dtype", "float32",
            "--examples", "8", "--max-classes", "64", "--regime", "moderate", "--regime", "ties", "--quiet",
            "--shrink-seconds", "0", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    table = pd.read_csv(tmp_path / "precision.csv")
    assert list(table.columns) == PRECISION_COLUMNS
    assert set(table["impl"]) == {"pure_low_precision", "float32_accumulate", "torch_native", "torch_autocast"}
    shares = ["ulps_0", "ulps_1", "ulps_2", "ulps_3", "ulps_gt3", "accepted_nonfinite", "failed", "ungraded"]
    assert ((table[shares].sum(axis=1) - 1).abs() < 1e-9).all()  # shares of every case
    native32 = table[
        (table["impl"] == "torch_native") & (table["dtype"] == "float32") & (table["regime"] == "moderate")
    ]
    # torch's float32 path on moderate inputs: mostly correctly rounded or one ULP off, always within the
    # bound; losses near 0 can be many ULPs off in relative terms (absolute error ~ u), so not all are exact
    assert native32["correctly_rounded"].iloc[0] >= 0.4
    assert (native32["ulps_0"] + native32["ulps_1"]).iloc[0] >= 0.75 and native32["max_error_over_bound"].iloc[0] < 1
    upcast16 = table[(table["impl"] == "float32_accumulate") & (table["dtype"] == "float16")]
    assert (upcast16["max_error_over_bound"] < 1).all()  # one final rounding stays within the bound
    assert "Precision audit" in (tmp_path / "precision.md").read_text()
    page = (tmp_path / "report.html").read_text()  # the report page shows precision.md's content and figures
    for section in ("ULP distribution per method and dtype", "Blanchard–Higham–Higham bound, per regime",
                    "Precision table (precision.md)", "Findings"):  # fmt: skip
        assert section in page, section
    assert json.loads((tmp_path / "manifest.json").read_text())["precision"] is True
