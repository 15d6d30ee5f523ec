"""Counterexamples as self-contained pytest files, short enough to paste into a bug report.

Each file builds the exact input (every bit of the logits, their layout, the targets or
probability targets, the keyword arguments the harness passed), calls the implementation
(and, for a gradient counterexample, back-propagates the upstream gradients the harness
used), and asserts what the harness's verdict asserts for the graded value: a sample's
loss, the reduced loss, an element of the softmax family's output or of the gradient.
The oracle's correctly rounded value and the allowance come from
harness.grading.expected, as the runner grades, and are written into the file, so the
test needs only torch and the implementation. Small inputs are written as literals;
large ones from a compact description: a fill value, runs of equal values (a masked tile
of -inf), and the few positions that differ, or, when nothing compact describes them,
the compressed bit patterns.
"""

from __future__ import annotations

import base64
import math
import re
import textwrap
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.calling.layout import copy_like, storage_extent
from harness.calling.registry import Implementation
from harness.formats import FORMATS, Format, format_of
from harness.grading.expected import Expectations
from harness.grading.verdicts import Policy
from harness.numerics import harness_numerics
from harness.oracle.family import OracleArray
from harness.runner import run_case
from reports.store import load_cases, load_reproducers
from strategies import Case
from strategies.contract import Contract
from strategies.upstream import upstream_gradients, upstream_pattern, upstream_scalar

__all__ = ["ExportError", "export_reproducers", "export_test", "export_tests", "reproducer_source"]

LITERAL_LIMIT = 64  # logits written as a nested list up to this many
POSITION_LIMIT = 256  # positions listed one by one before the bits are compressed instead
RUN_MIN = 8  # equal values written as a slice from this many on
_TORCH_DTYPES = {"float16": "torch.float16", "bfloat16": "torch.bfloat16", "float32": "torch.float32",
                 "float64": "torch.float64"}  # fmt: skip
_INT_DTYPES = {16: "torch.int16", 32: "torch.int32", 64: "torch.int64"}
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


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


def _storage(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, bits) of the storage ``t`` reaches, flat, laid out as ``t`` is (see Case.to_json)."""
    if _contiguous(t):
        values = t.reshape(-1)
    else:
        laid = copy_like(t)
        values = laid.as_strided((storage_extent(laid),), (1,), 0)
    int_dtype = format_of(t.dtype).int_dtype
    return values.to(torch.float64), values.view(int_dtype).to(torch.int64)


def _contiguous(t: torch.Tensor) -> bool:
    return t.is_contiguous() and t.storage_offset() == 0


def _round_trips(values: torch.Tensor, bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Which values a float literal rebuilds bit for bit (every one but NaNs with other payloads or signs)."""
    literal = torch.where(torch.isnan(values), torch.tensor(math.nan, dtype=torch.float64), values)
    rebuilt = literal.to(dtype).view(format_of(dtype).int_dtype).to(torch.int64)
    return rebuilt == bits


def _tensor_lines(t: torch.Tensor, name: str, storage: str = "storage", packed_name: str = "BITS") -> list[str]:
    """Python lines that build the float tensor ``t`` as ``name``, bit for bit and in its layout.

    ``storage`` and ``packed_name``: the names of the flat storage and of the compressed bits, if used.
    """
    fmt = format_of(t.dtype)
    dtype = _TORCH_DTYPES[fmt.name]
    int_dtype = _INT_DTYPES[fmt.bits]
    repeated = _repeated_rows(t)
    if repeated is not None:  # N copies of one row: the row, then repeat
        lines = _tensor_lines(repeated, name, storage, packed_name)
        return [*lines, f"{name} = {name}.repeat({t.shape[0]}, 1)"]
    values, bits = _storage(t)
    exact = _round_trips(values, bits, t.dtype)
    lines = []
    n = values.numel()
    if n <= LITERAL_LIMIT and bool(exact.all()) and _contiguous(t):
        nested = _nested(t.to(torch.float64))
        return [f"{name} = torch.tensor({nested}, dtype=torch.float64).to({dtype})"]
    fill_bits = int(torch.mode(bits).values)
    fill = values[bits == fill_bits][0].item()
    different = torch.nonzero(bits != fill_bits).flatten()
    runs = _runs(bits, different)
    singles = [i for i in different.tolist() if not any(a <= i < b for a, b, _ in runs)]
    if len(runs) + len(singles) > POSITION_LIMIT:
        packed = base64.b64encode(zlib.compress(bits.to(fmt.int_dtype).numpy().tobytes(), 9)).decode()
        wrapped = textwrap.wrap(packed, 96)
        lines.append(f"{packed_name} = (")
        lines.extend(f'    "{chunk}"' for chunk in wrapped)
        lines.append(")  # zlib-compressed little-endian bit patterns, base64")
        lines.append(
            f"{storage} = torch.frombuffer(bytearray(zlib.decompress(base64.b64decode({packed_name}))), "
            f"dtype={int_dtype}).view({dtype})"
        )
    else:
        if bool(exact[bits == fill_bits][0]):
            lines.append(f"{storage} = torch.full(({n},), {_literal(fill)}, dtype=torch.float64).to({dtype})")
        else:
            lines.append(f"{storage} = torch.full(({n},), {fill_bits}, dtype={int_dtype}).view({dtype})")
        fixes = []
        for start, stop, value_bits in runs:
            value = values[start].item()
            if bool(exact[start]):
                lines.append(f"{storage}[{start}:{stop}] = {_literal(value)}")
            else:
                fixes.append((f"{start}:{stop}", value_bits))
        literal = [(i, values[i].item()) for i in singles if bool(exact[i])]
        if literal:
            positions = ", ".join(str(i) for i, _ in literal)
            shown = ", ".join(_literal(v) for _, v in literal)
            lines.append(f"{storage}[[{positions}]] = torch.tensor([{shown}], dtype=torch.float64).to({dtype})")
        fixes += [(str(i), int(bits[i])) for i in singles if not bool(exact[i])]
        for where, value_bits in fixes:  # values a literal cannot rebuild (NaN payloads): their bits
            lines.append(f"{storage}.view({int_dtype})[{where}] = {value_bits}")
    if _contiguous(t):
        lines.append(f"{name} = {storage}.reshape{tuple(t.shape)}")
    else:
        lines.append(
            f"{name} = {storage}.as_strided({tuple(t.shape)}, {tuple(t.stride())}, "
            f"{t.storage_offset()})  # the layout the implementation was handed"
        )
    return lines


def _repeated_rows(t: torch.Tensor) -> torch.Tensor | None:
    """The first row, (1, C), when a large contiguous (N, C) tensor is N copies of it."""
    if t.ndim != 2 or not _contiguous(t) or t.shape[0] < 2 or t.numel() <= LITERAL_LIMIT:
        return None
    bits = t.view(format_of(t.dtype).int_dtype)
    if not bool((bits == bits[:1]).all()):
        return None
    return t[:1].clone()


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


def _targets_line(targets: torch.Tensor) -> str:
    """The line that builds int64 class-index ``targets``."""
    flat = targets.reshape(-1)
    shape = tuple(targets.shape)
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


@dataclass(frozen=True)
class _Graded:
    """The one value an exported test asserts on (the record's worst element) and the verdict's rule for it."""

    noun: str  # what the value is: "loss", "gradient", "log_softmax", ...
    fmt: Format  # the dtype it is graded in (the output's, or the gradient's)
    sample: int | None  # its row; None for a reduced (scalar) loss
    element: int | None  # its class, for (N, C) outputs and gradients
    oracle: float  # the exact value correctly rounded to ``fmt``
    exact: float
    allowance: float
    special: bool  # its row has no finite answer: only inf or NaN is right
    accept_nonfinite: bool  # inf or NaN is acceptable (besides a value the allowance accepts)


def _index(record: dict, key: str) -> int:
    """A record's sample or element as an index (-1, missing or NaN: none)."""
    value = record.get(key, -1)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return -1
    return int(value)


def _expected(case: Case, record: dict, impl: Implementation, contract: Contract | None, upstream) -> _Graded:
    """What the harness grades ``record``'s value against: harness.grading.expected, as the runner calls it."""
    expectations = Expectations(case)
    quantity = record.get("quantity") or "loss"
    fmt = FORMATS[record.get("output_dtype") or case.format.name]
    with harness_numerics():
        if quantity == "grad":
            expected, noun = expectations.gradient(contract, record["reduction"], upstream, fmt), "gradient"
        elif impl.op != "cross_entropy":
            expected, noun = expectations.family(impl.op, fmt), impl.op
        else:
            expected, noun = expectations.loss(contract, record["reduction"], fmt), "loss"
    sample = max(_index(record, "sample"), 0)
    per_class = quantity == "grad" or impl.op in ("log_softmax", "softmax")  # (N, C) values, even for C = 1
    element = max(_index(record, "element"), 0) if per_class else None
    if quantity == "loss" and expected.reduction != "none":
        sample = None
    flat = (sample or 0) * expected.elements + (element or 0)
    values = expected.values
    if isinstance(values, OracleArray):
        value, exact = float(values.value.reshape(-1)[flat]), float(values.exact.reshape(-1)[flat])
    else:
        value, exact = values[flat].value, values[flat].exact
    special = bool(expected.special[flat])
    accept = special or (expected.accept_nonfinite is not None and bool(expected.accept_nonfinite[flat]))
    return _Graded(noun, fmt, sample, element, value, exact, float(expected.allowed[flat]), special, accept)


def _upstream(case: Case, record: dict, impl: Implementation) -> tuple[torch.Tensor | float, torch.Tensor]:
    """(what a gradient record's output was back-propagated with, the upstream as the implementation received it).

    The first is the per-sample upstream gradients in the logits' dtype (reduction "none")
    or the scalar of a reduced output, as harness.calling.caller sends them; the second,
    float64, cast to the output's dtype as harness.runner grades them. The output's dtype
    is the declared one or the logits', checked against the upstream the record names.
    """
    if record["reduction"] == "none":
        sent = upstream_gradients(case).to(case.dtype)
    else:
        sent = torch.tensor(upstream_scalar(case), dtype=torch.float64)
    at = min(max(_index(record, "sample"), 0), sent.numel() - 1)
    recorded = record.get("upstream")
    for dtype in dict.fromkeys((impl.output_dtype or case.dtype, case.dtype, *_DTYPES)):
        received = sent.to(case.dtype).to(dtype).double().reshape(-1)
        if recorded is None or math.isnan(recorded) or float(received[at]) == float(recorded):
            return (sent if record["reduction"] == "none" else upstream_scalar(case)), received
    raise ExportError(f"its upstream gradient {recorded!r} is not the case's (a record of another version?)")


def _ulp_lines(fmt: Format) -> list[str]:
    return [
        "",
        "",
        "def _ordinal(x):",
        "    # the position of a float on the format's number line: adjacent floats differ by 1",
        f"    bits = x.view({_INT_DTYPES[fmt.bits]}).to(torch.int64).item()",
        f"    return bits if bits >= 0 else -(bits & {(1 << (fmt.bits - 1)) - 1})",
    ]


def _assertion_lines(expected: _Graded, max_ulps: float | None, why: str) -> list[str]:
    """The verdict's rule for one value: what a stable implementation may return."""
    noun = expected.noun
    lines = []
    if expected.accept_nonfinite:
        lines += ["if not math.isfinite(value):", f"    return  # inf or NaN is acceptable here ({why})"]
    if expected.special:
        where = "a row holding +inf or NaN" + (" (or only -inf)" if noun == "gradient" else "")
        return [*lines, f'raise AssertionError(f"finite {noun} {{value!r}} for {where}")']
    if math.isnan(expected.oracle):
        return [*lines, f'assert math.isnan(value), f"{noun} {{value!r}}, expected NaN"']
    if math.isinf(expected.oracle):
        return [*lines, f'assert value == ORACLE, f"{noun} {{value!r}}, expected {{ORACLE!r}}"']
    lines += [
        f'assert math.isfinite(value), f"{noun} {{value!r}}, expected {{ORACLE!r}}"',
        "error = abs(value - EXACT)",
        "assert value == ORACLE or error <= ALLOWANCE, (",
        f'    f"{noun} {{value!r}}, expected {{ORACLE!r}}: off by {{error:.3g}}, '
        '{error / ALLOWANCE:.3g} x the allowance"',
        ")",
    ]
    if max_ulps is not None:
        dtype = _TORCH_DTYPES[expected.fmt.name]
        lines += [
            f"got, want = (torch.tensor(v, dtype=torch.float64).to({dtype}) for v in (value, ORACLE))",
            "ulps = abs(_ordinal(got) - _ordinal(want))",
            f'assert ulps <= {max_ulps!r}, f"{{ulps}} ULPs from the correctly rounded {noun}"',
        ]
    return lines


def _options_lines(contract: Contract, dtype: torch.dtype) -> list[str]:
    """The body of ``_options()``: the keyword arguments the harness passed, a weight tensor built exactly."""
    lines, items = [], []
    for name, value in contract.kwargs(dtype).items():
        if isinstance(value, torch.Tensor):
            lines += _tensor_lines(value, name, "weights", "WEIGHT_BITS")
            shown = name
        elif isinstance(value, float):
            shown = _literal(value)
        elif isinstance(value, str):
            shown = _string(value)
        else:
            shown = repr(value)
        items.append(f"{_string(name)}: {shown}")
    return [*lines, "return {" + ", ".join(items) + "}"]


def _dtype_line(subject: str, expected: _Graded, case: Case) -> str:
    """The dtype check of the output (``out``) or the gradient (``grad``): the dtype the harness graded."""
    got = f"returned {{{subject}.dtype}}" if subject == "out" else f"a {{{subject}.dtype}} gradient"
    if expected.fmt.name == case.format.name:
        return f'assert {subject}.dtype == logits.dtype, f"{got} for {{logits.dtype}} logits"'
    dtype = _TORCH_DTYPES[expected.fmt.name]
    return f'assert {subject}.dtype == {dtype}, f"{got} for {{logits.dtype}} logits; the harness graded {dtype}"'


def reproducer_source(case: Case, record: dict, impl: Implementation, *, max_ulps: float | None = None) -> str:
    """The text of a self-contained pytest file reproducing ``record`` (impl's failure on ``case``).

    Every kind of counterexample: cross entropy called with options (keyword arguments as
    the harness passed them, a weight tensor and the ignored samples' targets included) or
    probability targets, the softmax family (``fn(logits)``), and gradients (``record``'s
    quantity "grad": the logits are a leaf that requires grad, in their layout; the output
    is back-propagated with the case's upstream gradients, strategies.upstream).

    The test builds the input, calls the implementation, checks the output is a tensor of
    the graded dtype and shape (or a scalar for a reduced loss), that the input was not
    written, that a second call answers the same bits, and that the graded value (a
    sample's loss, the reduced loss, an element of the family's output or of the
    gradient) is what a stable implementation returns: the harness's verdict for that
    value, from the same oracle values and allowances (harness.grading.expected).
    ``max_ulps``: also assert it is within that many ULPs of the oracle (an *inaccurate*
    counterexample of a strict check). Raises ExportError when the implementation cannot
    be imported by the test (a lambda, a local or a ``__main__`` function).
    """
    quantity = record.get("quantity") or "loss"
    family = impl.op != "cross_entropy"
    contract = case.contract.restricted(impl.options) if case.contract is not None and not family else None
    probs = contract.probs if contract is not None else None
    keywords = contract is not None and bool(contract.names)
    if record["verdict"] != "inaccurate":
        max_ulps = None  # an unstable value fails the allowance already
    upstream = _upstream(case, record, impl) if quantity == "grad" else None
    expected = _expected(case, record, impl, contract, None if upstream is None else upstream[1])
    imports = _import_lines(impl)
    name = re.sub(r"\W+", "_", impl.name.rsplit("/", 1)[-1].rsplit(":", 1)[-1]).strip("_").lower() or "impl"
    build = _tensor_lines(case.logits, "logits")
    if probs is not None:
        build += _tensor_lines(probs, "targets", "probs", "PROBS_BITS")
    elif not family:
        build.append(_targets_line(contract.targets_for(case.targets) if contract is not None else case.targets))
    helpers = ["", "", "def _inputs():", *("    " + line for line in build)]
    helpers.append("    return logits" if family else "    return logits, targets")
    if keywords:
        helpers += ["", "", "def _options():", *("    " + line for line in _options_lines(contract, case.dtype))]
    if upstream is not None and record["reduction"] == "none":
        lines = _tensor_lines(upstream[0], "upstream", "grads", "UPSTREAM_BITS")
        helpers += ["", "", "def _upstream():", *("    " + line for line in lines), "    return upstream"]
    header = _header(case, record, impl, expected, contract, upstream)
    packed = any("zlib" in line for line in helpers)
    header += [
        "",
        *sorted(
            {
                "import math",
                *(["import base64", "import zlib"] if packed else []),
                *(["import importlib.util"] if imports[0].startswith("_spec") else []),
            }
        ),
        "",
        "import torch",
        "",
        *imports,
    ]
    if quantity == "grad":  # a helper calls and back-propagates (twice: the determinism check)
        helpers += ["", "", *_gradient_helper(case, record, keywords, probs)]
        test = _grad_test(case, expected)
    else:
        test = _test(case, record, expected, keywords, family, probs)
    test += _assertion_lines(expected, max_ulps, _why(quantity, contract))
    regime = re.sub(r"\W+", "_", case.regime)
    fmt = expected.fmt.name
    noun = "gradient element" if quantity == "grad" else expected.noun
    body = [
        "",
        f"ORACLE = {_literal(expected.oracle)}  # the exact {noun} correctly rounded to {fmt}",
        f"EXACT = {_literal(expected.exact)}",
        f"ALLOWANCE = {_literal(expected.allowance)}  # the largest error a stable algorithm makes here",
        *([f"UPSTREAM = {_literal(upstream[0])}  # the upstream gradient of the {record['reduction']}"]
          if upstream is not None and record["reduction"] != "none" else []),
        *(_ulp_lines(expected.fmt) if max_ulps is not None else []),
        *helpers,
        "",
        "",
        f"def test_{name}_{case.format.name}_{regime}_{case.case_id}():",
        *("    " + line for line in test),
    ]  # fmt: skip
    if not any("math." in line for line in body):  # e.g. an inf oracle compared with ==
        header.remove("import math")
        at = header.index("import torch")
        if header[at - 2 : at] == ["", ""]:  # no other standard-library import left above torch
            del header[at - 1]
    return "\n".join(header + body) + "\n"


def _header(case, record, impl, expected: _Graded, contract, upstream) -> list[str]:
    """The module docstring: what was recorded and what a stable implementation returns."""
    grad = (record.get("quantity") or "loss") == "grad"
    if expected.sample is None:
        where = f"the {record['reduction']}"
    elif expected.element is None:
        where = f"sample {expected.sample}"
    else:
        owner = "the gradient's " if grad else ""
        where = f"{owner}element [{expected.sample}, {expected.element}]"
    noun = expected.noun
    called = []
    if contract is not None and (contract.names or contract.probs is not None):
        called.append(f"called with {contract.describe()}")
    if upstream is not None:
        if record["reduction"] == "none":
            u = float(upstream[0].double().reshape(-1)[expected.sample])
            called.append(f"back-propagated with per-sample upstream gradients ({upstream_pattern(case)} pattern; "
                          f"{u!r} at sample {expected.sample})")  # fmt: skip
        else:
            called.append(f"back-propagated with upstream gradient {upstream[0]!r}")
    fmt = expected.fmt.name
    in_fmt = f" ({fmt})" if fmt != case.format.name else ""
    lines = [
        f'"""{impl.name} on case {case.case_id} ({case.format.name}, regime {case.regime}): '
        f"{record['verdict']}, {record['outcome']}{' in the gradient' if grad else ''}.",
        "",
        f"Exported by ce-harness. It recorded {'' if grad else 'output '}{record['output']!r} "
        f"({record['output_bits']}){in_fmt} for {where};",
    ]
    if expected.special:
        lines.append("a row holds +inf or NaN: a stable implementation returns inf or NaN.")
    elif math.isfinite(expected.oracle):
        lines += [
            f"the correctly rounded {noun} is {expected.oracle!r} (exact {expected.exact!r}); a stable",
            f"implementation stays within {expected.allowance:.6g} of the exact {noun} (the harness's allowance).",
        ]
    else:
        lines.append(f"the {noun} is {expected.oracle!r}, and a stable implementation returns it.")
    if called:
        text = "; ".join(called)
        lines += ["", *textwrap.wrap(text[0].upper() + text[1:] + ".", 100)]
    return [*lines, '"""']


def _why(quantity: str, contract: Contract | None) -> str:
    """Why inf or NaN is acceptable for the graded value (the verdict's accept_nonfinite)."""
    if quantity == "grad":
        return "a +inf or NaN logit, an upstream gradient times the loss's coefficients past the working precision"
    if contract is not None and (contract.options.label_smoothing or contract.options.z_loss):
        return "a +inf or NaN logit, or an overflowing sum or intermediate term"
    return "a +inf or NaN logit, or an overflowing sum"


def _test(case: Case, record: dict, expected: _Graded, keywords: bool, family: bool, probs) -> list[str]:
    """The body of a test of the output (a loss, or the softmax family's output)."""
    int_dtype = _INT_DTYPES[case.format.bits]
    options = ", **_options()" if keywords else ""
    if family:
        call, first, again = "implementation(logits)", "_inputs()", "implementation(_inputs())"
        unpack = "logits = _inputs()"
    else:
        call, first = f"implementation(logits, targets{options})", "_inputs()[0]"
        again, unpack = f"implementation(*_inputs(){options})", "logits, targets = _inputs()"
    lines = [
        unpack,
        f"out = {call}",
        'assert isinstance(out, torch.Tensor), f"returned {type(out).__name__}, not a tensor"',
        _dtype_line("out", expected, case),
        f'assert torch.equal(logits.view({int_dtype}), {first}.view({int_dtype})), "wrote into its input"',
        f"again = {again}",
        "assert torch.equal(again.detach().cpu(), out.detach().cpu()) or bool(out.isnan().any()), (",
        '    "a second call answered differently"',
        ")",
    ]
    if expected.sample is None:
        return [*lines,
                f'assert out.numel() == 1, f"expected the {record["reduction"]} (a scalar), got shape '
                '{tuple(out.shape)}"',
                "value = out.reshape(()).to(torch.float64).item()"]  # fmt: skip
    if family:
        shape = "tuple(logits.shape)" if expected.element is not None else "tuple(logits.shape[:1])"
        at = f"{expected.sample}, {expected.element}" if expected.element is not None else f"{expected.sample}"
        return [*lines, f'assert tuple(out.shape) == {shape}, f"returned shape {{tuple(out.shape)}}"',
                f"value = out[{at}].to(torch.float64).item()"]  # fmt: skip
    shape = "tuple(targets.shape)" if probs is None else repr(tuple(case.targets.shape))
    return [*lines, f'assert tuple(out.shape) == {shape}, f"returned shape {{tuple(out.shape)}}"',
            f"value = out.reshape(-1)[{expected.sample}].to(torch.float64).item()"]  # fmt: skip


def _gradient_helper(case: Case, record: dict, keywords: bool, probs) -> list[str]:
    """``_gradient()``: call with logits that require grad, back-propagate as the harness does, return the gradient."""
    options = ", **_options()" if keywords else ""
    if record["reduction"] == "none":
        shape = "tuple(targets.shape)" if probs is None else repr(tuple(case.targets.shape))
        backward = [
            f'assert tuple(out.shape) == {shape}, f"returned shape {{tuple(out.shape)}}"',
            "out.backward(_upstream().to(out.dtype))  # each sample's upstream gradient, in the output dtype",
        ]
    else:
        backward = [f'assert out.numel() == 1, f"expected the {record["reduction"]} (a scalar), got shape '
                    '{tuple(out.shape)}"',
                    "out.backward(torch.full_like(out.detach(), UPSTREAM))"]  # fmt: skip
    lines = [
        '"""The gradient with respect to the logits, back-propagated as the harness does."""',
        "logits, targets = _inputs()",
        "logits.requires_grad_(True)  # a leaf, in the layout the implementation was handed",
        f"out = implementation(logits, targets{options})",
        'assert isinstance(out, torch.Tensor), f"returned {type(out).__name__}, not a tensor"',
        *backward,
        'assert logits.grad is not None, "the backward gave no gradient for the logits"',
        "return logits.detach(), logits.grad.to_dense()  # a sparse gradient is read densely, as the harness does",
    ]
    return ["def _gradient():", *("    " + line for line in lines)]


def _grad_test(case: Case, expected: _Graded) -> list[str]:
    """The body of a test of one element of the gradient with respect to the logits."""
    int_dtype = _INT_DTYPES[case.format.bits]
    rows = "grad" if case.logits.ndim == 2 else f"grad.movedim(1, -1).reshape(-1, {case.n_classes})"
    return [
        "logits, grad = _gradient()",
        _dtype_line("grad", expected, case),
        'assert tuple(grad.shape) == tuple(logits.shape), f"a gradient of shape {tuple(grad.shape)}"',
        f'assert torch.equal(logits.view({int_dtype}), _inputs()[0].view({int_dtype})), "wrote into its input"',
        "again = _gradient()[1]",
        'assert torch.equal(again, grad) or bool(grad.isnan().any()), "a second backward answered differently"',
        f"value = {rows}[{expected.sample}, {expected.element}].to(torch.float64).item()",
    ]


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
) -> tuple[list[Path], list[str], list[str]]:
    """Export each (case, record, implementation) as a pytest file in ``folder``.

    Returns (paths written, notes, errors): a note is one line per counterexample that
    cannot be written as a test (ExportError: an implementation the test cannot import);
    an error is one line per file that could not be written (OSError).
    """
    written, notes, errors = [], [], []
    for case, record, impl in items:
        try:
            written.append(export_test(folder, case, record, impl, **options))
        except ExportError as exc:
            notes.append(f"case {case.case_id} of {impl.name} not exported: {exc}")
        except OSError as exc:
            errors.append(f"could not export case {case.case_id} of {impl.name}: {exc}")
    return written, notes, errors


def export_reproducers(
    report: Path, implementations: Iterable[Implementation], folder: Path, *, policy: Policy = Policy()
) -> tuple[list[Path], list[str], list[str]]:
    """Export every minimal reproducer of an audit report folder as a pytest file in ``folder``.

    Each reproducer is run again (only its implementation) for the record the test asserts
    against. Returns (paths written, notes, errors) as ``export_tests`` does; a reproducer
    that no longer fails (a nondeterministic implementation) is a note, one whose case or
    implementation is not loaded an error.
    """
    table = load_reproducers(report)
    if table is None or table.empty:
        return [], [], []
    stored = load_cases(report)
    by_name = {impl.name: impl for impl in implementations}
    items, notes, errors = [], [], []
    for row in table.dropna(subset=["reproducer"]).to_dict(orient="records"):
        case, impl = stored.get(row["reproducer"]), by_name.get(row["impl"])
        if case is None or impl is None:
            errors.append(f"could not export reproducer {row['reproducer']} of {row['impl']}: not loaded")
            continue
        failing = [r for r in run_case(case, [impl], policy) if policy.fails(r["verdict"])]
        if not failing:
            notes.append(f"reproducer {row['reproducer']} of {row['impl']} not exported: it passes now")
            continue
        items.append((case, failing[0], impl))
    written, more_notes, more_errors = export_tests(folder, items)
    return written, notes + more_notes, errors + more_errors
