"""pytest plugin (entry point ``pytest11``): a ``ce_stability`` fixture and budget options.

    def test_my_loss_is_stable(ce_stability):
        ce_stability(my_cross_entropy)                   # raises AssertionError with counterexamples
        ce_stability(my_cross_entropy, dtypes=["bfloat16"], strict=True)

Command-line options set the default budget for every call:
``--ce-profile``, ``--ce-examples``, ``--ce-seed``, ``--ce-max-classes``; and how the
implementation is called (its sandbox process): ``--ce-timeout``, ``--ce-compile-timeout``,
``--ce-memory-limit`` (MiB), ``--ce-framework``, ``--ce-triton-interpret``, ``--ce-device``;
and what is graded: ``--ce-no-grad`` (the loss only) or ``--ce-grad-only`` (the backward only).
The ``ce_stability`` marker skips nothing; it only labels tests (``-m ce_stability``).
"""

from __future__ import annotations

import pytest

from harness.api import CheckResult, assert_stable
from harness.calling.frameworks import FRAMEWORKS
from harness.profiles import PROFILES


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ce-harness", "cross-entropy stability checks")
    group.addoption("--ce-profile", choices=sorted(PROFILES), default=None, help="search budget (default dev)")
    group.addoption("--ce-examples", type=int, default=None, help="cases per (dtype, regime) cell")
    group.addoption("--ce-seed", type=int, default=0, help="seed for case generation (default 0)")
    group.addoption("--ce-max-classes", type=int, default=None, help="largest class count drawn")
    group.addoption("--ce-timeout", type=float, default=None, help="seconds per call (default 5)")
    group.addoption("--ce-compile-timeout", type=float, default=None,
                    help="seconds for a compiler's first call per (dtype, shape class), and its compiles")  # fmt: skip
    group.addoption("--ce-memory-limit", type=float, default=None, help="MiB of the sandbox's resident memory")
    group.addoption("--ce-framework", choices=FRAMEWORKS, default=None, help="arrays the implementation takes")
    group.addoption("--ce-triton-interpret", action="store_true", default=None,
                    help="run Triton kernels on Triton's CPU interpreter")  # fmt: skip
    group.addoption("--ce-device", default=None, help="where implementations run (default cpu)")
    group.addoption("--ce-no-grad", action="store_true", default=None,
                       help="grade the loss only (default: the gradient too, where differentiable)")  # fmt: skip
    group.addoption("--ce-grad-only", action="store_true", default=None,
                       help="grade only the gradient with respect to the logits")  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ce_stability: a cross-entropy stability check (ce-harness)")
    if config.getoption("--ce-no-grad") and config.getoption("--ce-grad-only"):
        raise pytest.UsageError("--ce-no-grad and --ce-grad-only exclude each other")


@pytest.fixture
def ce_stability(request: pytest.FixtureRequest):
    """A function ``(fn, **check_options) -> CheckResult`` that fails the test when fn is flagged."""
    config = request.config
    defaults = {
        "profile": config.getoption("--ce-profile"),
        "examples": config.getoption("--ce-examples"),
        "seed": config.getoption("--ce-seed"),
        "max_classes": config.getoption("--ce-max-classes"),
    }
    sandbox = {
        "timeout": config.getoption("--ce-timeout"),
        "compile_timeout": config.getoption("--ce-compile-timeout"),
        "memory_limit_mib": config.getoption("--ce-memory-limit"),
        "framework": config.getoption("--ce-framework"),
        "triton_interpret": config.getoption("--ce-triton-interpret"),
        "device": config.getoption("--ce-device"),
    }
    defaults.update({key: value for key, value in sandbox.items() if value is not None})
    if config.getoption("--ce-no-grad"):
        defaults["grad"] = False
    if config.getoption("--ce-grad-only"):
        defaults["grad_only"] = True

    def run(fn, **options) -> CheckResult:
        __tracebackhide__ = True
        chosen = dict(defaults)
        if "grad" in options or "grad_only" in options:  # the test's own choice of quantities wins
            chosen.pop("grad", None)
            chosen.pop("grad_only", None)
        return assert_stable(fn, **{**chosen, **options})

    return run
