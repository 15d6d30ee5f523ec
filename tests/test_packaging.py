"""The README's commands are what CI runs; CI runs them in a fresh virtual environment."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_gives_two_copy_paste_commands_through_the_project_venv():
    audit, tests = _quick_start_commands()
    assert audit.startswith("bash scripts/setup.sh") and ".venv/bin/python -m harness audit" in audit
    assert tests.startswith("bash scripts/setup.sh") and ".venv/bin/python -m pytest" in tests


def test_ci_runs_exactly_the_readme_test_command_in_a_fresh_venv():
    _, tests = _quick_start_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci, "the README's test command must appear verbatim in .ci/run"
    assert ci.index("rm -rf .venv") < ci.index(tests), "CI must delete .venv before the test command"
    assert any(line.startswith(".venv/bin/deptry") for line in ci)


def test_the_setup_script_never_installs_into_the_system_python():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-m venv .venv" in setup and "--user" not in setup and "--break-system-packages" not in setup
