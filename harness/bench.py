"""`python -m harness bench`: speed and memory ratios, each measured side by side in one run.

Ratios, not absolute times, are the goals (these machines are shared and noisy):
- the fast oracle tier against torch's own float64 cross entropy on the same batch;
- the oracle on a float64 batch, for each output dtype (float64 outputs: the
  double-double tier), against torch's float64 cross entropy on that batch;
- a whole audit of one case (oracle, every built-in called twice with checks, metrics)
  against calling the three built-ins alone;
- the mpmath tier against a plain per-element mpmath loop at 200 bits, on the same row;
- one checked call (two calls, the determinism check, with every input and output check)
  in a sandbox process against the same in a thread of this process (the caller before
  issue 12, kept here only to be measured against), on a (3, 32) and an (N, C) case;
- peak memory of auditing an (8, 256000) case, in a fresh process.
"""

from __future__ import annotations

import gc
import math
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import mpmath
import torch
import torch.nn.functional as F

from harness import oracle
from harness.calling.caller import Caller
from harness.calling.implementations import naive, stable, torch_cross_entropy
from harness.calling.registry import REGISTRY, Implementation
from harness.formats import FORMATS
from harness.numerics import harness_numerics
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


class _ThreadCaller:
    """The caller before issue 12, reduced to its work: fresh copies of the inputs, the call in a
    thread joined with a timeout, the output checks, the pristine-input comparison and the second
    call. Kept only so bench can measure the sandbox against it, side by side."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout

    def _run(self, impl: Implementation, logits: torch.Tensor, targets: torch.Tensor):
        box: dict = {}

        def work() -> None:
            try:
                box["value"] = impl.fn(logits, targets)
            except BaseException as exc:
                box["error"] = exc

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        worker.join(self.timeout)
        return box.get("value"), box.get("error")

    def call(self, impl: Implementation, case: Case) -> torch.Tensor | None:
        pristine = case.logits.clone()
        logits, targets = case.logits.clone(), case.targets.clone()
        value, error = self._run(impl, logits, targets)
        if error is not None or not isinstance(value, torch.Tensor) or value.dtype != case.dtype:
            return None
        if not torch.equal(logits, pristine):
            return None
        output = value.detach().cpu()
        again, error = self._run(impl, pristine.clone(), targets.clone())
        if error is not None or not torch.equal(again.detach().cpu(), output):
            return None
        return output


def _call_overhead(caller: Caller, case: Case, repeats: int) -> tuple[float, float]:
    """Best times of one checked call of torch's cross entropy: (sandbox, thread).

    Both run on one CPU thread (the harness's, and a sandbox worker's), so the difference is
    the process boundary, not the thread count.
    """
    impl = REGISTRY.get("torch")
    threaded = _ThreadCaller()
    return _best_of_pair(lambda: caller.call(impl, case), lambda: threaded.call(impl, case), repeats)


def _plain_mpmath(row: list[float], target: int) -> mpmath.mpf:
    with mpmath.workprec(200):
        values = [mpmath.mpf(v) for v in row]
        m = max(values)
        return (m - values[target]) + mpmath.log(mpmath.fsum(mpmath.exp(v - m) for v in values))


def _peak_memory_mib(rows: int, classes: int) -> tuple[float, float]:
    """Peak resident memory (MiB) of a fresh process that audits one (rows, classes) float32 case,
    and the largest peak of its sandbox workers (Linux's VmHWM; 0 where /proc is missing)."""
    code = (
        "import resource, torch\n"
        "from harness.calling.caller import Caller\nfrom harness.calling.loading import REGISTRY\n"
        "from harness.runner import run_case\nfrom strategies import Case\n"
        f"x = (torch.randn({rows}, {classes}, generator=torch.Generator().manual_seed(0)) * 3)\n"
        "with Caller() as caller:\n"
        f"    run_case(Case(x, torch.arange({rows}) * 7, 'large_vocab'), list(REGISTRY), caller=caller)\n"
        "    peaks = [0]\n"
        "    for sandbox in caller._sandboxes.values():\n"
        "        try:\n"
        "            status = open(f'/proc/{sandbox.process.pid}/status').read()\n"
        "            peaks += [int(l.split()[1]) for l in status.splitlines() if l.startswith('VmHWM')]\n"
        "        except OSError:\n"
        "            pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, max(peaks))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    harness_kib, worker_kib = done.stdout.strip().splitlines()[-1].split()
    return int(harness_kib) / 1024, int(worker_kib) / 1024  # KiB on Linux


def run_bench(rows: int = 8, classes: int = 131_072, repeats: int = 3) -> str:
    """The bench's report, every pair timed on one CPU thread (harness_numerics, as the harness and
    its sandbox workers run), so each ratio compares work, not the machine's parallelism."""
    with harness_numerics():
        return _run_bench(rows, classes, repeats)


def _run_bench(rows: int, classes: int, repeats: int) -> str:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, classes, generator=generator) * 3
    targets = torch.arange(rows) * 7
    as_double = logits.double()
    lines = [f"bench: ({rows}, {classes}) float32 logits, best of {repeats}, {torch.get_num_threads()} CPU thread "
             "on each side; ratios are what to read", ""]  # fmt: skip

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
    with Caller() as caller:
        alone, whole = _best_of_pair(
            lambda: [fn(logits, targets) for fn in (stable, naive, torch_cross_entropy)],
            lambda: run_case(case, implementations, caller=caller),
            repeats,
        )
    lines.append(f"audit of one case      {whole * 1e3:9.1f} ms   three built-ins alone       {alone * 1e3:7.1f} ms"
                 f"   ratio {whole / alone:6.1f}x  (goal <= 20x)")  # fmt: skip

    # issue 15: a case graded with its gradient (backward step, gradient oracle, allowance) against the loss alone
    torch_impl = [REGISTRY.get("torch")]
    for label, graded in (("float32", case), ("bfloat16", Case(logits.bfloat16(), targets, "large_vocab"))):
        with Caller() as caller:
            loss_only, with_grad = _best_of_pair(
                lambda graded=graded: run_case(graded, torch_impl, caller=caller),
                lambda graded=graded: run_case(graded, torch_impl, caller=caller, quantities=("loss", "grad")),
                repeats,
            )
        lines.append(f"loss + gradient {label:<8s}{with_grad * 1e3:7.1f} ms   loss only (torch, one case)  "
                     f"{loss_only * 1e3:7.1f} ms   ratio {with_grad / loss_only:6.1f}x  (goal <= 4x)")  # fmt: skip

    row = (torch.randn(2048, generator=generator, dtype=torch.float64) * 3).tolist()
    fmt64 = FORMATS["float64"]
    # a few milliseconds each: more repeats cost little and steady the ratio
    plain, tiered = _best_of_pair(lambda: _plain_mpmath(row, 5), lambda: oracle.row_loss(row, 5, fmt64), 3 * repeats)
    backend = mpmath.libmp.BACKEND
    lines.append(f"mpmath tier (float64)  {tiered * 1e3:9.1f} ms   plain mpmath loop, 200 bits {plain * 1e3:7.1f} ms"
                 f"   speed-up {plain / tiered:5.1f}x  (goal >= 5x; 2048-class row; backend {backend})")  # fmt: skip

    small = Case(torch.randn(3, 32, generator=generator), torch.tensor([0, 7, 31]), "moderate")
    with Caller() as caller:
        caller.call(REGISTRY.get("torch"), small)  # the worker starts and imports before timing
        for name, bench_case, times in (("(3, 32)", small, 20 * repeats), (f"({rows}, {classes})", case, 5 * repeats)):
            sandboxed, threaded = _call_overhead(caller, bench_case, times)
            goal = "; goal: well under +1 ms" if bench_case is small else ""
            lines.append(f"sandbox call {name:<10s}{sandboxed * 1e3:9.2f} ms   thread call (before #12)*   "
                         f"{threaded * 1e3:7.2f} ms   ratio {sandboxed / threaded:6.1f}x  "
                         f"({(sandboxed - threaded) * 1e3:+.2f} ms a checked call{goal})")  # fmt: skip

    lines.append("  * the same checked call in a thread of this process, as the caller made it before issue 12")
    peak, worker = _peak_memory_mib(8, 256_000)
    lines.append(f"peak memory, auditing one (8, 256000) float32 case in a fresh process: {peak:.0f} MiB, "
                 f"its largest sandbox worker {worker:.0f} MiB "
                 f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")  # fmt: skip
    return "\n".join(lines)
