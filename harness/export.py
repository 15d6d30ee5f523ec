"""Counterexamples as self-contained pytest files, short enough to paste into a bug report.

Each file builds the exact input (every bit of the logits, their layout, the targets),
calls the implementation, and asserts what the harness's verdict asserts for the failing
sample (or the mean): the oracle's correctly rounded value and the allowance are written
into the file, so the test needs only torch and the implementation. Small inputs are
written as literals; large ones from a compact description: a fill value, runs of equal
values (a masked tile of -inf), and the few positions that differ, or, when nothing
compact describes them, the compressed bit patterns.
"""

from __future__ import annotations

import base64
import math
import re
import textwrap
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from harness import oracle
from harness.calling.layout import copy_like, storage_extent
from harness.calling.registry import Implementation
from harness.grading.verdicts import Policy, allowance
from harness.runner import run_case
from reports.store import load_cases, load_reproducers
from strategies import Case

__all__ = ["ExportError", "export_reproducers", "export_test", "export_tests", "reproducer_source"]

LITERAL_LIMIT = 64  # logits written as a nested list up to this many
POSITION_LIMIT = 256  # positions listed one by one before the bits are compressed instead
RUN_MIN = 8  # equal values written as a slice from this many on
_TORCH_DTYPES = {"float16": "torch.float16", "bfloat16": "torch.bfloat16", "float32": "torch.float32",
                 "float64": "torch.float64"}  # fmt: skip
_INT_DTYPES = {16: "torch.int16", 32: "torch.int32", 64: "torch.int64"}


class ExportError(ValueError):
    """A counterexample that cannot be written as a self-contained test (one line)."""


def _string(text: str) -> str:
    """``text`` as a double-quoted Python string literal (the style ruff and black write)."""
    quoted = repr(text)
    if quoted.startswith("'") and '"' not in text:
        quoted = '"' + quoted[1:-1].replace("\\'", "'") + '"'
    return quoted


def _literal(value: float) -> str:
    if math.isnan(value):
        return 'float("nan")'
    if math.isinf(value):
        return 'float("inf")' if value > 0 else '-float("inf")'
    return repr(value)


def _storage(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, bits) of the storage the logits reach, flat, laid out as the case's (see Case.to_json)."""
    if case.contiguous:
        values = case.logits.reshape(-1)
    else:
        laid = copy_like(case.logits)
        values = laid.as_strided((storage_extent(laid),), (1,), 0)
    return values.to(torch.float64), values.view(case.format.int_dtype).to(torch.int64)


def _round_trips(values: torch.Tensor, bits: torch.Tensor, case: Case) -> torch.Tensor:
    """Which values a float literal rebuilds bit for bit (every one but NaNs with other payloads or signs)."""
    literal = torch.where(torch.isnan(values), torch.tensor(math.nan, dtype=torch.float64), values)
    rebuilt = literal.to(case.dtype).view(case.format.int_dtype).to(torch.int64)
    return rebuilt == bits


def _build_lines(case: Case) -> list[str]:
    """Python lines that build ``logits`` and ``targets`` exactly."""
    dtype = _TORCH_DTYPES[case.format.name]
    int_dtype = _INT_DTYPES[case.format.bits]
    repeated = _repeated_rows(case)
    if repeated is not None:  # N copies of one row: the row, then repeat
        lines = _build_lines(repeated)[:-1]  # the row's logits, (1, C), without its targets
        lines.append(f"logits = logits.repeat({case.logits.shape[0]}, 1)")
        return [*lines, _targets_line(case)]
    values, bits = _storage(case)
    exact = _round_trips(values, bits, case)
    lines = []
    n = values.numel()
    if n <= LITERAL_LIMIT and bool(exact.all()) and case.contiguous:
        nested = _nested(case.logits.to(torch.float64))
        lines.append(f"logits = torch.tensor({nested}, dtype=torch.float64).to({dtype})")
    else:
        fill_bits = int(torch.mode(bits).values)
        fill = values[bits == fill_bits][0].item()
        different = torch.nonzero(bits != fill_bits).flatten()
        runs = _runs(bits, different)
        singles = [i for i in different.tolist() if not any(a <= i < b for a, b, _ in runs)]
        if len(runs) + len(singles) > POSITION_LIMIT:
            packed = base64.b64encode(zlib.compress(bits.to(case.format.int_dtype).numpy().tobytes(), 9)).decode()
            wrapped = textwrap.wrap(packed, 96)
            lines.append("BITS = (")
            lines.extend(f'    "{chunk}"' for chunk in wrapped)
            lines.append(")  # zlib-compressed little-endian bit patterns, base64")
            lines.append(
                f"storage = torch.frombuffer(bytearray(zlib.decompress(base64.b64decode(BITS))), dtype={int_dtype})"
                f".view({dtype})"
            )
        else:
            if bool(exact[bits == fill_bits][0]):
                lines.append(f"storage = torch.full(({n},), {_literal(fill)}, dtype=torch.float64).to({dtype})")
            else:
                lines.append(f"storage = torch.full(({n},), {fill_bits}, dtype={int_dtype}).view({dtype})")
            fixes = []
            for start, stop, value_bits in runs:
                value = values[start].item()
                if bool(exact[start]):
                    lines.append(f"storage[{start}:{stop}] = {_literal(value)}")
                else:
                    fixes.append((f"{start}:{stop}", value_bits))
            literal = [(i, values[i].item()) for i in singles if bool(exact[i])]
            if literal:
                positions = ", ".join(str(i) for i, _ in literal)
                shown = ", ".join(_literal(v) for _, v in literal)
                lines.append(f"storage[[{positions}]] = torch.tensor([{shown}], dtype=torch.float64).to({dtype})")
            fixes += [(str(i), int(bits[i])) for i in singles if not bool(exact[i])]
            for where, value_bits in fixes:  # values a literal cannot rebuild (NaN payloads): their bits
                lines.append(f"storage.view({int_dtype})[{where}] = {value_bits}")
        if case.contiguous:
            lines.append(f"logits = storage.reshape{tuple(case.logits.shape)}")
        else:
            lines.append(
                f"logits = storage.as_strided({tuple(case.logits.shape)}, {tuple(case.logits.stride())}, "
                f"{case.logits.storage_offset()})  # the layout the implementation was handed"
            )
    lines.append(_targets_line(case))
    return lines


def _repeated_rows(case: Case) -> Case | None:
    """The first row as a case of its own when a large contiguous (N, C) case is N copies of it."""
    logits = case.logits
    if logits.ndim != 2 or not case.contiguous or logits.shape[0] < 2 or logits.numel() <= LITERAL_LIMIT:
        return None
    bits = logits.view(case.format.int_dtype)
    if not bool((bits == bits[:1]).all()):
        return None
    return Case(logits[:1].clone(), case.targets[:1].clone(), case.regime)


def _nested(t: torch.Tensor) -> str:
    if t.ndim == 1:
        return "[" + ", ".join(_literal(v) for v in t.tolist()) + "]"
    return "[" + ", ".join(_nested(r) for r in t) + "]"


def _runs(bits: torch.Tensor, different: torch.Tensor) -> list[tuple[int, int, int]]:
    """[start, stop) of each run of at least RUN_MIN equal, non-fill bit patterns."""
    runs = []
    index = different.tolist()
    i = 0
    while i < len(index):
        j = i
        while j + 1 < len(index) and index[j + 1] == index[j] + 1 and bits[index[j + 1]] == bits[index[i]]:
            j += 1
        if j - i + 1 >= RUN_MIN:
            runs.append((index[i], index[j] + 1, int(bits[index[i]])))
        i = j + 1
    return runs


def _targets_line(case: Case) -> str:
    flat = case.targets.reshape(-1)
    shape = tuple(case.targets.shape)
    if bool((flat == flat[0]).all()):
        return f"targets = torch.full({shape}, {int(flat[0])}, dtype=torch.int64)"
    if flat.numel() <= 4 * POSITION_LIMIT:
        return f"targets = torch.tensor({flat.tolist()}, dtype=torch.int64).reshape{shape}"
    packed = base64.b64encode(zlib.compress(flat.numpy().astype("<i8").tobytes(), 9)).decode()
    return (f'targets = torch.frombuffer(bytearray(zlib.decompress(base64.b64decode("{packed}"))), '
            f"dtype=torch.int64).reshape{shape}")  # fmt: skip


def _import_lines(impl: Implementation) -> list[str]:
    """Lines that bind ``implementation`` to the callable under test."""
    source = impl.source
    if source in ("built-in", "python"):  # imported from where the function is defined
        module = getattr(impl.fn, "__module__", None)
        qualname = getattr(impl.fn, "__qualname__", "")
        if not module or "<" in qualname or module == "__main__" or module.startswith("_harness_user_"):
            raise ExportError(f"{impl.name} is not importable (a lambda, a local or a __main__ function); "
                              "pass it as module:function or file.py:function")  # fmt: skip
        source = f"{module}:{qualname}"
    target, _, attr = source.rpartition(":")
    if target.endswith(".py") or "/" in target or "\\" in target:
        return [
            f'_spec = importlib.util.spec_from_file_location("implementation_module", {_string(target)})',
            "_module = importlib.util.module_from_spec(_spec)",
            "_spec.loader.exec_module(_module)",
            f"implementation = _module.{attr}",
        ]
    head, _, rest = attr.partition(".")
    return [
        f"from {target} import {head} as implementation",
        *([f"implementation = implementation.{rest}"] if rest else []),
    ]


def _expected(case: Case, record: dict) -> dict:
    """What the assertion needs: the graded value (a sample's loss or the mean) and its allowance."""
    rows, targets = case.row_logits, case.row_targets
    special = (torch.isnan(rows) | torch.isposinf(rows)).any(dim=1)
    if record["reduction"] == "mean":
        values = oracle.evaluate(rows, targets)
        mean = oracle.mean_loss(rows, targets)
        exact = np.array([v.exact for v in values])
        with np.errstate(over="ignore"):
            total = float(np.abs(exact).sum())
            per_row = allowance(exact, case.n_classes, case.format).mean()
            allowed = per_row + case.format.unit_roundoff * math.log2(max(len(values), 1) * 2) * np.abs(exact).mean()
        overflow = any(math.isinf(v.value) for v in values) or total > case.format.max_finite
        return {"sample": None, "oracle": mean.value, "exact": mean.exact, "allowance": float(allowed),
                "accept_nonfinite": bool(special.any()) or overflow, "special": bool(special.any())}  # fmt: skip
    sample = max(int(record["sample"]), 0)
    value = oracle.evaluate(rows[sample : sample + 1], targets[sample : sample + 1])[0]
    allowed = float(allowance(np.array([value.exact]), case.n_classes, case.format)[0])
    return {"sample": sample, "oracle": value.value, "exact": value.exact, "allowance": allowed,
            "accept_nonfinite": bool(special[sample]), "special": bool(special[sample])}  # fmt: skip


def _ulp_lines(case: Case) -> list[str]:
    return [
        "",
        "",
        "def _ordinal(x):",
        "    # the position of a float on the format's number line: adjacent floats differ by 1",
        f"    bits = x.view({_INT_DTYPES[case.format.bits]}).to(torch.int64).item()",
        f"    return bits if bits >= 0 else -(bits & {(1 << (case.format.bits - 1)) - 1})",
    ]


def _assertion_lines(expected: dict, case: Case, max_ulps: float | None) -> list[str]:
    """The verdict's rule for one value: what a stable implementation may return."""
    lines = []
    if expected["accept_nonfinite"]:
        why = "a +inf or NaN logit, or an overflowing sum"
        lines += ["if not math.isfinite(value):", f"    return  # inf or NaN is acceptable here ({why})"]
    if expected["special"]:
        return [*lines, 'raise AssertionError(f"finite loss {value!r} for a row holding +inf or NaN")']
    if math.isnan(expected["oracle"]):
        return [*lines, 'assert math.isnan(value), f"loss {value!r}, expected NaN"']
    if math.isinf(expected["oracle"]):
        return [*lines, 'assert value == ORACLE, f"loss {value!r}, expected {ORACLE!r}"']
    lines += [
        'assert math.isfinite(value), f"loss {value!r}, expected {ORACLE!r}"',
        "error = abs(value - EXACT)",
        "assert value == ORACLE or error <= ALLOWANCE, (",
        '    f"loss {value!r}, expected {ORACLE!r}: off by {error:.3g}, {error / ALLOWANCE:.3g} x the allowance"',
        ")",
    ]
    if max_ulps is not None:
        dtype = _TORCH_DTYPES[case.format.name]
        lines += [
            f"got, want = (torch.tensor(v, dtype=torch.float64).to({dtype}) for v in (value, ORACLE))",
            "ulps = abs(_ordinal(got) - _ordinal(want))",
            f'assert ulps <= {max_ulps!r}, f"{{ulps}} ULPs from the correctly rounded loss"',
        ]
    return lines


def reproducer_source(case: Case, record: dict, impl: Implementation, *, max_ulps: float | None = None) -> str:
    """The text of a self-contained pytest file reproducing ``record`` (impl's failure on ``case``).

    The test builds the input, calls the implementation, checks the output is a tensor of
    the logits' dtype and of the targets' shape (or a scalar mean), that the input was
    not written, that a second call answers the same bits, and that the graded value
    is what a stable implementation returns (the harness's verdict for that value).
    ``max_ulps``: also assert it is within that many ULPs of the oracle (an *inaccurate*
    counterexample of a strict check). Raises ExportError when the implementation cannot
    be imported by the test. Not yet exported (ExportError, so no test that passes where it
    should fail is written): cases called with options or probability targets, the
    softmax family (issue 14), and gradients (issue 15).
    """
    if record.get("quantity") == "grad":
        raise ExportError("a gradient counterexample cannot be exported as a test yet; replay it instead")
    contract = case.contract.restricted(impl.options) if case.contract is not None else None
    if impl.op != "cross_entropy" or (contract is not None and (contract.names or contract.probs is not None)):
        what = impl.op if impl.op != "cross_entropy" else "options or probability targets"
        raise ExportError(f"a counterexample with {what} cannot be exported as a test yet; replay it instead")
    if record["verdict"] != "inaccurate":
        max_ulps = None  # an unstable value fails the allowance already
    expected = _expected(case, record)
    imports = _import_lines(impl)
    name = re.sub(r"\W+", "_", impl.name.rsplit("/", 1)[-1].rsplit(":", 1)[-1]).strip("_").lower() or "impl"
    build = _build_lines(case)
    int_dtype = _INT_DTYPES[case.format.bits]
    where = "the mean" if expected["sample"] is None else f"sample {expected['sample']}"
    header = [
        f'"""{impl.name} on case {case.case_id} ({case.format.name}, regime {case.regime}): '
        f"{record['verdict']}, {record['outcome']}.",
        "",
        f"Exported by ce-harness. It recorded output {record['output']!r} ({record['output_bits']}) for {where};",
        *(
            [
                f"the correctly rounded loss is {expected['oracle']!r} (exact {expected['exact']!r}); a stable",
                f"implementation stays within {expected['allowance']:.6g} of the exact loss (the harness's allowance).",
            ]
            if math.isfinite(expected["oracle"]) and not expected["special"]
            else ["a row holds +inf or NaN: a stable implementation returns inf or NaN."]
            if expected["special"]
            else [f"the loss is {expected['oracle']!r}, and a stable implementation returns it."]
        ),
        '"""',
        "",
        *sorted(
            {
                "import math",
                *(["import base64", "import zlib"] if any("zlib" in line for line in build) else []),
                *(["import importlib.util"] if imports[0].startswith("_spec") else []),
            }
        ),
        "",
        "import torch",
        "",
        *imports,
    ]
    graded = (
        ['assert out.numel() == 1, f"expected the mean (a scalar), got shape {tuple(out.shape)}"',
         "value = out.reshape(()).to(torch.float64).item()"]
        if expected["sample"] is None
        else ['assert tuple(out.shape) == tuple(targets.shape), f"returned shape {tuple(out.shape)}"',
              f"value = out.reshape(-1)[{expected['sample']}].to(torch.float64).item()"]
    )  # fmt: skip
    test = [
        "logits, targets = _inputs()",
        "out = implementation(logits, targets)",
        'assert isinstance(out, torch.Tensor), f"returned {type(out).__name__}, not a tensor"',
        'assert out.dtype == logits.dtype, f"returned {out.dtype} for {logits.dtype} logits"',
        f'assert torch.equal(logits.view({int_dtype}), _inputs()[0].view({int_dtype})), "wrote into its input"',
        "again = implementation(*_inputs())",
        "assert torch.equal(again.detach().cpu(), out.detach().cpu()) or bool(out.isnan().any()), (",
        '    "a second call answered differently"',
        ")",
        *graded,
        *_assertion_lines(expected, case, max_ulps),
    ]
    regime = re.sub(r"\W+", "_", case.regime)
    body = [
        "",
        f"ORACLE = {_literal(expected['oracle'])}  # the exact loss correctly rounded to {case.format.name}",
        f"EXACT = {_literal(expected['exact'])}",
        f"ALLOWANCE = {_literal(expected['allowance'])}  # the largest error a stable algorithm makes here",
        *(_ulp_lines(case) if max_ulps is not None else []),
        "",
        "",
        "def _inputs():",
        *("    " + line for line in build),
        "    return logits, targets",
        "",
        "",
        f"def test_{name}_{case.format.name}_{regime}_{case.case_id}():",
        *("    " + line for line in test),
    ]
    if not any("math." in line for line in body):  # e.g. an inf oracle compared with ==
        header.remove("import math")
        at = header.index("import torch")
        if header[at - 2 : at] == ["", ""]:  # no other standard-library import left above torch
            del header[at - 1]
    return "\n".join(header + body) + "\n"


def export_test(folder: Path, case: Case, record: dict, impl: Implementation, **options) -> Path:
    """Write ``reproducer_source`` to ``folder/test_<impl>_<case id>.py``; the path written."""
    text = reproducer_source(case, record, impl, **options)
    stem = re.sub(r"\W+", "_", impl.name.rsplit("/", 1)[-1].rsplit(":", 1)[-1]).strip("_").lower() or "impl"
    path = Path(folder) / f"test_{stem}_{case.case_id}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def export_tests(
    folder: Path, items: Iterable[tuple[Case, dict, Implementation]], **options
) -> tuple[list[Path], list[str]]:
    """Export each (case, record, implementation); (paths written, one line per one that could not be)."""
    written, problems = [], []
    for case, record, impl in items:
        try:
            written.append(export_test(folder, case, record, impl, **options))
        except (ExportError, OSError) as exc:
            problems.append(f"could not export case {case.case_id} of {impl.name}: {exc}")
    return written, problems


def export_reproducers(
    report: Path, implementations: Iterable[Implementation], folder: Path, *, policy: Policy = Policy()
) -> tuple[list[Path], list[str]]:
    """Export every minimal reproducer of an audit report folder as a pytest file in ``folder``.

    Each reproducer is run again (only its implementation) for the record the test asserts
    against; one that no longer fails, or whose implementation is not among
    ``implementations``, is reported in the returned lines instead.
    """
    table = load_reproducers(report)
    if table is None or table.empty:
        return [], []
    stored = load_cases(report)
    by_name = {impl.name: impl for impl in implementations}
    items, problems = [], []
    for row in table.dropna(subset=["reproducer"]).to_dict(orient="records"):
        case, impl = stored.get(row["reproducer"]), by_name.get(row["impl"])
        if case is None or impl is None:
            problems.append(f"could not export reproducer {row['reproducer']} of {row['impl']}: not loaded")
            continue
        failing = [r for r in run_case(case, [impl], policy) if policy.fails(r["verdict"])]
        if not failing:
            problems.append(f"could not export reproducer {row['reproducer']} of {row['impl']}: it passes now")
            continue
        items.append((case, failing[0], impl))
    written, more = export_tests(folder, items)
    return written, problems + more
