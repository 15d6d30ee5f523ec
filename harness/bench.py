"""`python -m harness bench`: speed and memory ratios, each measured side by side in one run.

Ratios, not absolute times, are the goals (these machines are shared and noisy):
- the fast oracle tier against torch's own float64 cross entropy on the same batch;
- the oracle on a float64 batch, for each output dtype (float64 outputs: the
  double-double tier), against torch's float64 cross entropy on that batch;
- a whole audit of one case (oracle, every built-in called twice with checks, metrics)
  against calling the three built-ins alone;
- the mpmath tier against a plain per-element mpmath loop at 200 bits, on the same row;
- peak memory of auditing an (8, 256000) case, in a fresh process.
"""

from __future__ import annotations

import gc
import math
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import mpmath
import torch
import torch.nn.functional as F

from harness import oracle
from harness.calling.implementations import naive, stable, torch_cross_entropy
from harness.calling.registry import REGISTRY
from harness.formats import FORMATS
from harness.oracle.dd_kernels import BACKEND
from harness.runner import run_case
from strategies import Case

__all__ = ["run_bench"]


def _best_of_pair(first: Callable[[], object], second: Callable[[], object], repeats: int) -> tuple[float, float]:
    """The fastest time of each of two functions, timed alternately after one warm-up call each.

    Alternating puts both under the same conditions of a shared machine, and the fastest
    of several is the run least disturbed by other work; the garbage collector is paused.
    """
    first(), second()
    best = [math.inf, math.inf]
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for slot, fn in enumerate((first, second)):
                start = time.perf_counter()
                fn()
                best[slot] = min(best[slot], time.perf_counter() - start)
    finally:
        if enabled:
            gc.enable()
    return best[0], best[1]


def _plain_mpmath(row: list[float], target: int) -> mpmath.mpf:
    with mpmath.workprec(200):
        values = [mpmath.mpf(v) for v in row]
        m = max(values)
        return (m - values[target]) + mpmath.log(mpmath.fsum(mpmath.exp(v - m) for v in values))


def _peak_memory_mib(rows: int, classes: int) -> float:
    """Peak resident memory of a fresh process that audits one (rows, classes) float32 case."""
    code = (
        "import resource, torch\n"
        "from harness.calling.registry import REGISTRY\nfrom harness.runner import run_case\n"
        "from strategies import Case\n"
        f"x = (torch.randn({rows}, {classes}, generator=torch.Generator().manual_seed(0)) * 3)\n"
        f"run_case(Case(x, torch.arange({rows}) * 7, 'large_vocab'), list(REGISTRY))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1]) / 1024  # ru_maxrss is in KiB on Linux


def run_bench(rows: int = 8, classes: int = 131_072, repeats: int = 3) -> str:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, classes, generator=generator) * 3
    targets = torch.arange(rows) * 7
    as_double = logits.double()
    lines = [f"bench: ({rows}, {classes}) float32 logits, best of {repeats}; ratios are what to read", ""]

    torch64, fast = _best_of_pair(
        lambda: F.cross_entropy(as_double, targets, reduction="none"), lambda: oracle.evaluate(logits, targets), repeats
    )
    methods = {v.method for v in oracle.evaluate(logits, targets)}
    tiers = ", ".join(sorted(methods))
    lines.append(f"fast oracle tier       {fast * 1e3:9.1f} ms   torch float64 cross_entropy {torch64 * 1e3:7.1f} ms"
                 f"   ratio {fast / torch64:6.1f}x  (goal <= 10x; tiers used: {tiers})")  # fmt: skip

    # float64 logits: every output dtype, float64 outputs through the double-double tier
    ratios = {}
    for name in ("float64", "float32", "bfloat16", "float16"):
        dtype = FORMATS[name].dtype
        torch64, tier = _best_of_pair(
            lambda: F.cross_entropy(as_double, targets, reduction="none"),
            lambda dtype=dtype: oracle.evaluate(as_double, targets, dtype),
            repeats,
        )
        ratios[name] = (tier, torch64)
    tier, torch64 = ratios["float64"]
    methods = ", ".join(sorted({v.method for v in oracle.evaluate(as_double, targets)}))
    lines.append(f"double-double tier     {tier * 1e3:9.1f} ms   torch float64 cross_entropy {torch64 * 1e3:7.1f} ms"
                 f"   ratio {tier / torch64:6.1f}x  (goal <= 20x; float64 logits and outputs; tiers used: {methods};"
                 f" kernels: {BACKEND})")  # fmt: skip
    lines.append("  oracle / torch float64 cross_entropy on the float64 batch, by output dtype: "
                 + ", ".join(f"{name} {t / base:.1f}x" for name, (t, base) in ratios.items()))  # fmt: skip

    case = Case(logits, targets, "large_vocab")
    implementations = list(REGISTRY)
    alone, whole = _best_of_pair(
        lambda: [fn(logits, targets) for fn in (stable, naive, torch_cross_entropy)],
        lambda: run_case(case, implementations),
        repeats,
    )
    lines.append(f"audit of one case      {whole * 1e3:9.1f} ms   three built-ins alone       {alone * 1e3:7.1f} ms"
                 f"   ratio {whole / alone:6.1f}x  (goal <= 20x)")  # fmt: skip

    row = (torch.randn(2048, generator=generator, dtype=torch.float64) * 3).tolist()
    fmt64 = FORMATS["float64"]
    # a few milliseconds each: more repeats cost little and steady the ratio
    plain, tiered = _best_of_pair(lambda: _plain_mpmath(row, 5), lambda: oracle.row_loss(row, 5, fmt64), 3 * repeats)
    backend = mpmath.libmp.BACKEND
    lines.append(f"mpmath tier (float64)  {tiered * 1e3:9.1f} ms   plain mpmath loop, 200 bits {plain * 1e3:7.1f} ms"
                 f"   speed-up {plain / tiered:5.1f}x  (goal >= 5x; 2048-class row; backend {backend})")  # fmt: skip

    peak = _peak_memory_mib(8, 256_000)
    lines.append(f"peak memory, auditing one (8, 256000) float32 case in a fresh process: {peak:.0f} MiB "
                 f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")  # fmt: skip
    return "\n".join(lines)
