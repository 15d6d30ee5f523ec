"""Drive Hypothesis over (dtype, regime) cells and run implementations on every case.

Each cell gets its own seed derived from the run's seed, so adding a dtype or a regime
does not change the cases drawn for the others, and the same seed reproduces the run.
Targeted search climbs the worst error; with a ``fails`` predicate, the first failing
case of a cell is shrunk by Hypothesis, then structurally (harness.minimize: layout,
rows, tiles of classes, magnitudes), to a minimal counterexample.
"""

from __future__ import annotations

import math
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from hypothesis import Phase, Verbosity, example, given, target
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Flaky
from hypothesis.internal.conjecture import engine
from tqdm import tqdm

from harness import interrupts, oracle
from harness.calling.caller import Caller
from harness.calling.registry import Implementation
from harness.determinism import independent_of_local_constants
from harness.formats import Format
from harness.grading.verdicts import FAILED_CALLS, Policy
from harness.minimize import minimize
from harness.numerics import harness_numerics
from harness.profiles import Profile
from harness.runner import run_case
from strategies import Case, anchor_cases, cases, with_contract

__all__ = ["Counterexample", "SearchResult", "cell_seed", "search", "self_check_choice"]

SHRINK_SECONDS = 30.0  # shrinking time for a whole run
SELF_CHECK_CASES = 12  # oracle values re-derived at higher precision after every run
SELF_CHECK_MAX_ELEMENTS = 4096  # larger cases: only their worst row is re-derived
# Class-count classes the self-check draws from in turn, so large rows are always among them.
SELF_CHECK_SIZE_CLASSES = ((2, 64), (65, 4096), (4097, 32_768), (32_769, 1 << 62))
CELL_SHRINK_SECONDS = 8.0  # Hypothesis's shrinking of one (dtype, regime) cell
CELL_MINIMIZE_SECONDS = 4.0  # then the structural pass on its counterexample


@dataclass(frozen=True)
class Counterexample:
    """A failing case after shrinking, with its record."""

    case: Case
    record: dict


@dataclass
class SearchResult:
    records: list[dict] = field(default_factory=list)
    cases: dict[str, Case] = field(default_factory=dict)
    counterexamples: list[Counterexample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the tool's own failures, per cell
    seconds: float = 0.0
    interrupted: bool = False
    self_checked: int = 0
    completed_cells: list[tuple[str, str]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # ids of every case with records


class _Flagged(Exception):
    def __init__(self, case: Case, record: dict) -> None:
        super().__init__(f"{record['impl']} flagged on case {case.case_id}")
        self.case, self.record = case, record


def contract_of(implementations: Sequence[Implementation]) -> tuple[frozenset[str], bool]:
    """(option names, probability targets) a run's cases draw: what any of its cross entropies takes."""
    losses = [impl for impl in implementations if impl.op == "cross_entropy"]
    return frozenset().union(*(impl.options for impl in losses)), any(impl.soft_targets for impl in losses)


def cell_seed(seed: int, fmt: Format, regime: str) -> int:
    """A stable per-(dtype, regime) seed derived from the run's seed."""
    return zlib.crc32(f"{seed}/{fmt.name}/{regime}".encode())


def _score(records: list[dict]) -> float:
    """What targeted search climbs: the worst error over the allowance, finite by construction."""
    ratios = [r["allowance_ratio"] for r in records if not math.isnan(r["allowance_ratio"])]
    # rounded, so a score re-read from a report (a resumed run) steers the search identically
    return round(math.log2(1.0 + min(max(ratios, default=0.0), 1e300)), 6)


@contextmanager
def _shrink_time_limit(seconds: float):
    """Cap Hypothesis's shrinking time (its engine allows 300 s by default)."""
    previous = getattr(engine, "MAX_SHRINKING_SECONDS", None)
    engine.MAX_SHRINKING_SECONDS = seconds
    try:
        yield
    finally:
        if previous is not None:
            engine.MAX_SHRINKING_SECONDS = previous


def search(
    formats: Sequence[Format],
    regimes: Sequence[str],
    implementations: Sequence[Implementation],
    *,
    profile: Profile,
    seed: int = 0,
    examples: int | None = None,
    max_classes: int | None = None,
    policy: Policy = Policy(),
    fails: Callable[[dict], bool] | None = None,
    subject: Implementation | None = None,
    shrink_seconds: float = SHRINK_SECONDS,
    caller: Caller | None = None,
    finished: dict[tuple[str, str], list[dict]] | None = None,
    finished_cases: dict[str, Case] | None = None,
    self_check: int = SELF_CHECK_CASES,
    on_cell: Callable[[SearchResult], None] | None = None,
    shard: tuple[int, int] = (1, 1),
    progress: bool | None = None,
    targeted: bool = True,
    on_case: Callable[[], None] | None = None,
    quantities: Sequence[str] = ("loss",),
) -> SearchResult:
    """Every implementation on ``examples`` cases per (dtype, regime) cell.

    ``fails(record)`` marks a record as a failure: the cell then stops, shrinks the case
    (running only ``subject``, when given) and reports it as a counterexample. Shrinking
    shares ``shrink_seconds`` across the run; past it, failures are reported unshrunk.
    Without ``fails``, every case is kept. ``finished`` maps (dtype name, regime) cells
    of a resumed run to their records: those cells are not run again (and
    ``finished_cases`` supplies their stored cases). A stop request
    (``harness.interrupts``: Ctrl-C, SIGTERM), checked before every case, stops
    the run and returns what was computed, with ``interrupted`` set. ``on_case()`` is
    called after each new case (a progress display). Finally ``self_check`` cases are
    re-evaluated by the oracle at higher precision, mpmath only; a disagreement is a tool
    error. ``shard=(k, n)`` runs only the k-th of every n cells (see ``harness merge``).
    ``targeted=False`` turns off Hypothesis's target phase (plain generation, for comparison).
    ``quantities``: what each record grades (harness.runner.run_case): the loss, and with
    "grad" the gradient with respect to the logits.
    Implementations run in ``caller``'s sandboxes (default: a Caller of this search);
    cases are drawn and graded under ``harness_numerics``.
    """
    if caller is None:
        with Caller() as own:
            return search(
                formats, regimes, implementations, profile=profile, seed=seed, examples=examples,
                max_classes=max_classes, policy=policy, fails=fails, subject=subject, shrink_seconds=shrink_seconds,
                caller=own, finished=finished, finished_cases=finished_cases, self_check=self_check, on_cell=on_cell,
                shard=shard, progress=progress, targeted=targeted, on_case=on_case, quantities=quantities,
            )  # fmt: skip
    caller.start(implementations)  # the workers start side by side while the first case is drawn
    with harness_numerics():
        return _search(formats, regimes, implementations, profile, seed, examples, max_classes, policy, fails,
                       subject, shrink_seconds, caller, finished, finished_cases, self_check, on_cell, shard, progress,
                       targeted, on_case, tuple(quantities))  # fmt: skip


def _search(formats, regimes, implementations, profile, seed, examples, max_classes, policy, fails, subject,
            shrink_seconds, caller, finished, finished_cases, self_check, on_cell, shard, progress,
            targeted, on_case, quantities) -> SearchResult:  # fmt: skip
    finished = finished or {}
    finished_cases = finished_cases or {}
    result = SearchResult()
    start = time.perf_counter()
    shrink_left = shrink_seconds
    examples = examples or profile.examples
    max_classes = max_classes or profile.max_classes
    # shard (k, n) runs every n-th cell starting at the k-th: shards split a campaign
    cells = [(fmt, regime) for fmt in formats for regime in regimes][shard[0] - 1 :: shard[1]]
    contract = contract_of([subject] if subject is not None else implementations)  # check: what IMPL takes
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=len(cells) * examples, disable=not show, unit="case", desc="cases") as bar:
        for fmt, regime in cells:
            if interrupts.requested():
                result.interrupted = True
                break
            if (fmt.name, regime) in finished:
                records = finished[(fmt.name, regime)]
                result.records.extend(records)
                result.seen.update(r["case_id"] for r in records)
                result.cases.update({r["case_id"]: finished_cases[r["case_id"]] for r in records
                                     if r["case_id"] in finished_cases})  # fmt: skip
                result.completed_cells.append((fmt.name, regime))
                bar.update(examples)
                continue
            shrinking = False
            last_flagged: _Flagged | None = None  # the latest failure seen in this cell
            phases = [Phase.explicit, Phase.generate] + ([Phase.target] if targeted else [])
            phases += [Phase.shrink] if fails and shrink_left > 0 else []

            def visit(case: Case) -> None:
                nonlocal shrinking, last_flagged
                interrupts.check()  # a stop request ends the cell here, never inside foreign code
                running = [subject] if shrinking and subject else implementations
                records = run_case(case, running, policy, caller, quantities)
                failing = [r for r in records if fails and fails(r)]
                if not shrinking and case.case_id not in result.seen:  # Hypothesis may replay a case
                    bar.update(1)
                    result.seen.add(case.case_id)
                    result.cases[case.case_id] = case
                    result.records.extend(records)
                    if on_case:
                        on_case()
                if failing:
                    shrinking = True
                    last_flagged = _Flagged(case, failing[0])
                    raise last_flagged
                if targeted:
                    # one target per implementation: a single shared score would be pinned by
                    # whichever implementation fails worst (naive's inf) and steer nothing else
                    for impl in running:
                        mine = [r for r in records if r["impl"] == impl.name]
                        target(_score(mine), label=f"log2(1 + error / allowance) of {impl.name}")

            @profile.hypothesis_settings(
                max_examples=examples, phases=phases, report_multiple_bugs=False, verbosity=Verbosity.quiet
            )
            @hypothesis_seed(cell_seed(seed, fmt, regime))
            @given(with_contract(cases(dtype=fmt, regimes=[regime], max_classes=max_classes, max_rows=profile.max_rows),
                                 *contract))  # fmt: skip
            def body(case: Case) -> None:
                visit(case)

            for anchor in anchor_cases(fmt, regime, max_classes):
                body = example(anchor)(body)

            cell_start = time.perf_counter()
            try:
                with _shrink_time_limit(min(shrink_left, CELL_SHRINK_SECONDS)), independent_of_local_constants():
                    body()
            except (_Flagged, Flaky) as raised:
                # Flaky: a failure that did not recur when Hypothesis replayed it (a crash or
                # a timeout that happens once); the failure it saw is still a counterexample
                flagged = raised if isinstance(raised, _Flagged) else last_flagged
                if flagged is None:
                    result.errors.append(f"{fmt.name}/{regime}: {type(raised).__name__}: {str(raised).splitlines()[0]}")
                else:
                    case, record = flagged.case, flagged.record
                    left = min(shrink_left - (time.perf_counter() - cell_start), CELL_MINIMIZE_SECONDS)
                    if subject is not None and fails is not None and left > 0:
                        try:
                            case, record = _minimized(flagged, subject, fails, policy, caller, left, quantities)
                        except (interrupts.Interrupted, KeyboardInterrupt):
                            result.interrupted = True
                    result.counterexamples.append(Counterexample(case, record))
                    if result.interrupted:
                        result.cases.setdefault(case.case_id, case)  # stored, so its replay command works
                        break
                    if case.case_id not in result.seen:
                        result.seen.add(case.case_id)
                        result.cases[case.case_id] = case
                        result.records.extend(run_case(case, implementations, policy, caller, quantities))
            except (interrupts.Interrupted, KeyboardInterrupt):
                result.interrupted = True
                break
            except Exception as exc:  # the tool's own failure in this cell: recorded, and the run goes on
                result.errors.append(f"{fmt.name}/{regime}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            result.completed_cells.append((fmt.name, regime))
            if shrinking:
                shrink_left -= time.perf_counter() - cell_start
            if on_cell:
                try:
                    on_cell(result)  # e.g. a checkpoint of the partial report
                except (interrupts.Interrupted, KeyboardInterrupt):
                    result.interrupted = True
                    break
    if not result.interrupted:
        try:
            result.errors.extend(oracle_self_check(result, self_check))
        except (interrupts.Interrupted, KeyboardInterrupt):
            result.interrupted = True
    result.seconds = time.perf_counter() - start
    return result


def _minimized(flagged: _Flagged, subject: Implementation, fails: Callable[[dict], bool], policy: Policy,
               caller: Caller, seconds: float, quantities: tuple[str, ...] = ("loss",),
               ) -> tuple[Case, dict]:  # fmt: skip
    """The flagged case shrunk structurally, running only the subject, failing with the same outcome and quantity."""
    outcome, quantity = flagged.record["outcome"], flagged.record.get("quantity", "loss")
    # a failed call has no gradient: shrinking it needs only the forward
    needed = quantities if quantity == "grad" else ("loss",)

    def still_fails(case: Case) -> dict | None:
        for record in run_case(case, [subject], policy, caller, needed):
            if record["outcome"] == outcome and record.get("quantity", "loss") == quantity and fails(record):
                return record
        return None

    found = minimize(flagged.case, flagged.record, still_fails, seconds=seconds)
    return found.case, found.record


def self_check_choice(result: SearchResult, count: int) -> list[dict]:
    """``count`` graded per-sample records, one case each, spread evenly within each class-count
    class and taken from the classes in turn (small rows to vocabulary-size rows)."""
    by_case: dict[str, dict] = {}
    for record in result.records:
        plain = not record.get("options") and record.get("op", "cross_entropy") == "cross_entropy" \
            and record.get("quantity", "loss") == "loss" \
            and record.get("output_dtype", record["dtype"]) == record["dtype"]  # fmt: skip
        graded = int(record["sample"]) >= 0 and record["outcome"] not in FAILED_CALLS  # failed calls: no oracle value
        if plain and graded and record["reduction"] == "none" and record["oracle_certified"] \
                and record["case_id"] in result.cases:  # fmt: skip
            by_case.setdefault(record["case_id"], record)
    pools = []
    for low, high in SELF_CHECK_SIZE_CLASSES:
        members = [r for r in by_case.values() if low <= result.cases[r["case_id"]].n_classes <= high]
        if members:
            pools.append(members)
    chosen: list[dict] = []
    if not count or not pools:
        return chosen
    share = [count // len(pools) + (i < count % len(pools)) for i in range(len(pools))]
    for members, n in zip(pools, share):
        if n:
            chosen.extend(members[:: max(1, len(members) // n)][:n])
    return chosen[:count]


def oracle_self_check(result: SearchResult, count: int) -> list[str]:
    """Re-evaluate ``count`` of the run's cases, from every class-count class, with the mpmath tier alone,
    starting at twice the usual precision; every disagreement is returned as a tool error.

    It runs here, in the harness process, which implementations never touch. Each chosen
    case is evaluated again as grading did (both tiers) and at high precision (mpmath
    only), and the recorded oracle value of its worst sample is compared too. A case of
    more than SELF_CHECK_MAX_ELEMENTS elements is checked on its recorded worst row, so a
    vocabulary-size row costs one row's evaluation.
    """
    errors = []
    chosen = self_check_choice(result, count)
    with harness_numerics():
        for record in chosen:
            interrupts.check()
            case = result.cases[record["case_id"]]
            rows, targets = case.row_logits, case.row_targets
            samples = list(range(len(targets)))
            worst = max(int(record["sample"]), 0)
            if case.logits.numel() > SELF_CHECK_MAX_ELEMENTS:
                samples = [worst]
            first = oracle.evaluate(rows[samples], targets[samples])
            precision = 2 * (case.format.precision + 53) + 80
            again = oracle.evaluate(rows[samples], targets[samples], start_precision=precision, tiers=("mpmath",))
            recorded = OracleValueLike(float(record["oracle"]))
            pairs = [(s, a, b) for s, a, b in zip(samples, first, again)]
            pairs += [(worst, recorded, b) for s, b in zip(samples, again) if s == worst]
            for sample, a, b in pairs:
                if not (a.value == b.value or (math.isnan(a.value) and math.isnan(b.value))):
                    what = "recorded" if a is recorded else a.method
                    errors.append(f"oracle self-check: case {case.case_id} sample {sample}: {a.value!r} ({what}) "
                                  f"but {b.value!r} at higher precision")  # fmt: skip
    result.self_checked = len(chosen)
    return errors


@dataclass(frozen=True)
class OracleValueLike:
    """A recorded oracle value, compared like an OracleValue."""

    value: float
