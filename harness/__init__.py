"""ce-harness: numerical-stability verification for softmax cross-entropy implementations.

import harness
result = harness.check(my_loss, dtypes=["float16", "bfloat16"])
harness.assert_stable(my_loss)
report = harness.audit(["stable", "torch", "my_kernels.py:cross_entropy"], out="harness-out/audit")
"""

from __future__ import annotations

from typing import Any

__all__ = ["REGISTRY", "AuditReport", "CheckResult", "Implementation", "assert_stable", "audit", "check"]

# Loaded on first use: strategies import harness.formats, and an eager import of
# harness.check here would import strategies back while they are half-initialised.
_LAZY = {
    "audit": "harness.campaign.engine",
    "AuditReport": "harness.campaign.report",
    "check": "harness.api",
    "assert_stable": "harness.api",
    "CheckResult": "harness.api",
    "REGISTRY": "harness.calling.loading",
    "Implementation": "harness.calling.registry",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
