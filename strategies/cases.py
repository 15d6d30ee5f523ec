"""The Case noun and the top-level ``cases`` strategy."""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from harness.calling.layout import copy_like, describe_layout, storage_extent
from harness.formats import FORMATS, Format
from strategies.bulk import BULK_KINDS, bulk_rows
from strategies.floats import as_format
from strategies.layouts import layouts
from strategies.regimes import REGIMES, SMALL_REGIMES, large_vocab, row_strategy
from strategies.sizes import SMALL_CLASS_LIMIT, VOCABULARIES, row_counts, size_bands
from strategies.tiles import MIN_TILED_CLASSES, tiled_class_counts

if TYPE_CHECKING:
    from strategies.contract import Contract

__all__ = ["Case", "anchor_cases", "batch_shapes", "cases", "class_counts", "regime_fits"]

LAYOUT_CLASS_LIMIT = 16
LAYOUT_MAX_POSITIONS = 64  # d1 * ... * dk of a layout case (pytorch#158310 needs 16 or more)
BATCH_MAX_ELEMENTS = 2**15  # rows * classes of a batch case: the float64 oracle's cost
STRIDED_MAX_ROWS = 8
BATCH_MIN_ROWS = 4  # fewer rows are every row regime's cases already
MIN_CLASSES = {"large_vocab": SMALL_CLASS_LIMIT + 1, "tiled": MIN_TILED_CLASSES}
CASE_REGIMES = ("batch", "strided", "layout")  # built whole, not row by row
DEFAULT_MAX_ROWS = 1_024
_SEEDS = st.integers(0, 2**32 - 1)


def regime_fits(regime: str, max_classes: int) -> bool:
    """Whether a regime can draw any case with at most ``max_classes`` classes."""
    return max_classes >= MIN_CLASSES.get(regime, 2)


@dataclass(frozen=True, eq=False)
class Case:
    """Logits in the case's dtype, int64 targets, and the regime that made them.

    Logits are (N, C) with targets (N,), or, for the layout regime, (N, C, d1, ..., dk)
    with targets (N, d1, ..., dk): torch's convention, the class dimension second.
    ``row_logits``/``row_targets`` are the same samples as (M, C) rows and (M,) targets,
    in the row-major order of the targets, which is what the oracle evaluates.
    """

    logits: torch.Tensor
    targets: torch.Tensor
    regime: str
    # drawn options, ignored samples and probability targets (strategies.contract); None: plain
    contract: Contract | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.logits.dtype

    @property
    def format(self) -> Format:
        return as_format(self.logits.dtype)

    @property
    def n_classes(self) -> int:
        return int(self.logits.shape[1])

    @property
    def row_logits(self) -> torch.Tensor:
        if self.logits.ndim == 2:
            return self.logits
        return self.logits.movedim(1, -1).reshape(-1, self.n_classes)

    @property
    def row_targets(self) -> torch.Tensor:
        return self.targets.reshape(-1)

    @property
    def n_samples(self) -> int:
        """Losses per call with reduction='none': N, or N * d1 * ... * dk."""
        return self.targets.numel()

    @property
    def layout(self) -> str:
        """'contiguous', or the logits' strides and storage offset, e.g. 'strides (1, 4), offset 0'."""
        return describe_layout(self.logits)

    @property
    def contiguous(self) -> bool:
        """Whether the logits are contiguous with no storage offset (what contiguous-only kernels take)."""
        return self.logits.is_contiguous() and self.logits.storage_offset() == 0

    def _bit_bytes(self) -> bytes:
        return self.logits.contiguous().view(self.format.int_dtype).numpy().tobytes()

    def _storage_bytes(self) -> bytes:
        """The storage the logits view reaches, as ``copy_like`` lays it out (unreached positions zero)."""
        storage = copy_like(self.logits)
        flat = storage.as_strided((storage_extent(storage),), (1,), 0)
        return flat.view(self.format.int_dtype).numpy().tobytes()

    @cached_property
    def case_id(self) -> str:
        """Content hash: the same bits, dtype, shape, layout and targets always give the same id.

        Contiguous logits hash as they always have; a strided view adds its strides and
        storage offset, so the same values in another layout are another case.
        """
        digest = hashlib.sha256()
        if self.contiguous:
            digest.update(f"{self.format.name}{tuple(self.logits.shape)}".encode())
            digest.update(self._bit_bytes())
        else:
            layout = (tuple(self.logits.shape), tuple(self.logits.stride()), self.logits.storage_offset())
            digest.update(f"{self.format.name}{layout}".encode())
            digest.update(self._storage_bytes())
        digest.update(self.targets.contiguous().numpy().tobytes())
        if self.contract is not None:
            digest.update(self.contract.digest())
        return digest.hexdigest()[:12]

    def to_json(self) -> dict:
        """Exact, JSON-safe encoding: the logits' bit patterns (little-endian, base64).

        A non-contiguous case also stores its strides and storage offset, and ``bits``
        then holds the storage the view reaches, so ``from_json`` rebuilds the same view.
        """
        data = {
            "case_id": self.case_id,
            "regime": self.regime,
            "dtype": self.format.name,
            "shape": list(self.logits.shape),
            "bits": base64.b64encode(self._bit_bytes() if self.contiguous else self._storage_bytes()).decode("ascii"),
            "targets": self.targets.tolist(),
            **({"contract": self.contract.to_json()} if self.contract is not None else {}),
        }
        if not self.contiguous:
            data.update(strides=list(self.logits.stride()), storage_offset=self.logits.storage_offset())
        return data

    @classmethod
    def from_json(cls, data: dict) -> Case:
        fmt = as_format(data["dtype"])
        raw = bytearray(base64.b64decode(data["bits"]))
        values = torch.empty(0, dtype=fmt.dtype)
        if raw:
            values = torch.frombuffer(raw, dtype=fmt.int_dtype).view(fmt.dtype).clone()
        if "strides" in data:
            shape, strides, offset = data["shape"], data["strides"], data["storage_offset"]
            reach = offset + 1 + sum((n - 1) * s for n, s in zip(shape, strides)) if all(shape) else 0
            if min(strides, default=0) < 0 or offset < 0 or reach > values.numel():
                raise ValueError("stored case's layout reaches past its storage")
            logits = values.as_strided(shape, strides, offset)
        else:
            logits = values.reshape(data["shape"])
        contract = None
        if data.get("contract") is not None:
            from strategies.contract import Contract

            contract = Contract.from_json(data["contract"], fmt.dtype)
        case = cls(logits, torch.tensor(data["targets"], dtype=torch.int64), data["regime"], contract)
        if "case_id" in data and case.case_id != data["case_id"]:
            raise ValueError(f"stored case {data['case_id']} does not match its bits")
        return case


def class_counts(regime: str, max_classes: int) -> st.SearchStrategy[int]:
    """Class counts a regime is drawn at, by structure (strategies.sizes).

    Row regimes: 2 to 64. ``large_vocab``: 65 to 1,023, multiples of a tile size +-1,
    1,024 to 32,767, and vocabulary sizes, evenly. ``tiled``: at least two tiles.
    ``batch`` and ``strided``: 2 to 64 three times in four, else 65 to 1,023. ``layout``: 2 to 16.
    """
    if not regime_fits(regime, max_classes):
        raise InvalidArgument(f"{regime} needs max_classes >= {MIN_CLASSES[regime]}, got {max_classes}")
    if regime == "large_vocab":
        return size_bands(max_classes, {"mid": 1, "tiles": 1, "wide": 1, "vocabulary": 1})
    if regime == "tiled":
        return tiled_class_counts(max_classes)
    if regime == "layout":  # the layout is the point
        return st.integers(2, min(LAYOUT_CLASS_LIMIT, max_classes))
    if regime in ("batch", "strided"):
        return size_bands(max_classes, {"small": 3, "mid": 1})
    return st.integers(2, min(SMALL_CLASS_LIMIT, max_classes))


def batch_shapes(regime: str, max_samples: int) -> st.SearchStrategy[tuple[int, ...]]:
    """The targets' shape of a row regime's case: (N,) with N up to ``max_samples``; one row for wide rows."""
    if regime in ("large_vocab", "tiled"):
        return st.just((1,))
    return st.integers(1, max_samples).map(lambda n: (n,))


def _plant(draw, fmt: Format, values: torch.Tensor, targets: torch.Tensor) -> None:
    """Overwrite up to three rows of a bulk case with rows Hypothesis draws (and can shrink and target)."""
    n_rows, n_classes = values.shape
    for _ in range(draw(st.integers(0, min(3, n_rows)))):
        index = draw(st.integers(0, n_rows - 1))
        if n_classes <= SMALL_CLASS_LIMIT:
            row, target = draw(SMALL_REGIMES[draw(st.sampled_from(list(SMALL_REGIMES)))](fmt, n_classes))
        else:
            row, target = draw(large_vocab(fmt, n_classes))
        values[index] = torch.as_tensor(row, dtype=torch.float64)
        targets[index] = target


def _bulk(draw, fmt: Format, n_rows: int, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded rows of a main kind and up to three others (a drawn share of the rows), then planted rows."""
    main = draw(st.sampled_from(BULK_KINDS))
    others = draw(st.lists(st.sampled_from([k for k in BULK_KINDS if k != main]), max_size=3, unique=True))
    share = draw(st.sampled_from((0.01, 0.1, 0.5))) if others else 0.0
    weights = [1.0 - share] + [share / max(len(others), 1)] * len(others)
    top = draw(st.sampled_from((0.0, 2.0, 4.0)))  # ordinary magnitudes up to 1, 4 or 16
    values, targets = bulk_rows(fmt, [main, *others], n_rows, n_classes, draw(_SEEDS), weights, top)
    _plant(draw, fmt, values, targets)
    return values, targets


@st.composite
def _batch_case(draw, fmt: Format, max_classes: int, max_rows: int) -> Case:
    n_rows = draw(row_counts(max_rows, min_rows=min(BATCH_MIN_ROWS, max_rows)))
    limit = max(2, min(max_classes, BATCH_MAX_ELEMENTS // n_rows))
    values, targets = _bulk(draw, fmt, n_rows, draw(class_counts("batch", limit)))
    return Case(values.to(fmt.dtype), targets, "batch")


@st.composite
def _strided_case(draw, fmt: Format, max_classes: int) -> Case:
    n_rows = draw(st.integers(2, STRIDED_MAX_ROWS))  # one row would be contiguous transposed or expanded
    n_classes = draw(class_counts("strided", max_classes))
    values, targets = _bulk(draw, fmt, n_rows, n_classes)
    logits = draw(layouts(values.to(fmt.dtype)))
    return Case(logits, targets, "strided")


@st.composite
def _extents(draw, max_positions: int) -> list[int]:
    """d1, ..., dk (k = 1 to 3) with at most ``max_positions`` positions; 16 and more often."""
    structured = [e for e in (16, 15, 17, 32, 31, 33, 64, 63) if e <= max_positions] or [1]
    first = draw(st.one_of(st.integers(1, min(4, max_positions)), st.sampled_from(structured),
                           st.integers(1, max_positions)))  # fmt: skip
    extents, left = [first], max_positions // first
    for _ in range(draw(st.integers(0, 2))):
        extents.append(draw(st.integers(1, max(1, left))))
        left = max(1, left // extents[-1])
    return extents


@st.composite
def _layout_case(draw, fmt: Format, max_classes: int, max_samples: int, max_positions: int) -> Case:
    n = draw(st.integers(1, max_samples))
    extents = draw(_extents(max_positions))
    n_classes = draw(class_counts("layout", max_classes))
    values, targets = _bulk(draw, fmt, n * math.prod(extents), n_classes)
    grid = values.to(fmt.dtype).reshape(n, *extents, n_classes).movedim(-1, 1)
    # the class dimension second: moved there from last without a copy (as a model's (N, d, C)
    # output is permuted for cross_entropy), or made contiguous
    logits = grid if draw(st.booleans()) else grid.contiguous()
    return Case(logits, targets.reshape(n, *extents), "layout")


@st.composite
def _row_case(draw, fmt: Format, regime: str, max_classes: int, max_samples: int) -> Case:
    n_classes = draw(class_counts(regime, max_classes))
    shape = draw(batch_shapes(regime, max_samples))
    rows = [draw(row_strategy(regime, fmt, n_classes)) for _ in range(math.prod(shape))]
    logits = torch.stack([torch.as_tensor(values, dtype=torch.float64) for values, _ in rows]).to(fmt.dtype)
    targets = torch.tensor([target for _, target in rows], dtype=torch.int64).reshape(shape)
    return Case(logits, targets, regime)


@st.composite
def _case(draw, formats: list[Format], regimes: list[str], max_classes: int, max_samples: int, max_rows: int,
          max_positions: int) -> Case:  # fmt: skip
    fmt = draw(st.sampled_from(formats))
    regime = draw(st.sampled_from(regimes))
    if regime == "batch":
        return draw(_batch_case(fmt, max_classes, max_rows))
    if regime == "strided":
        return draw(_strided_case(fmt, max_classes))
    if regime == "layout":
        return draw(_layout_case(fmt, max_classes, max_samples, max_positions))
    return draw(_row_case(fmt, regime, max_classes, max_samples))


def cases(
    dtype: torch.dtype | str | Iterable[torch.dtype | str] | None = None,
    regimes: Iterable[str] | None = None,
    max_classes: int = 32_768,
    max_samples: int = 3,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_positions: int = LAYOUT_MAX_POSITIONS,
) -> st.SearchStrategy[Case]:
    """Cases of extreme logits for cross entropy.

    ``dtype``: one dtype or several (default: float16, bfloat16, float32, float64).
    ``regimes``: names from strategies.REGIMES (default: all that fit ``max_classes``,
    except ``layout``, whose (N, C, d1, ..., dk) logits only some losses accept).
    ``max_classes``: the largest class count drawn (large_vocab needs at least 65,
    tiled at least 257). ``max_samples``: the most rows N of a row regime's case
    (large_vocab and tiled rows come one per case) and of a layout case. ``max_rows``:
    the most rows of a ``batch`` case. ``max_positions``: the most positions
    d1 * ... * dk of a ``layout`` case. ``strided`` cases have non-contiguous logits
    (see strategies.layouts); every other regime's are contiguous, except layout cases,
    which may be the permuted view of (N, d1, ..., dk, C) logits.

    >>> from hypothesis import given
    >>> @given(cases(dtype="bfloat16", regimes=["huge", "ties"]))
    ... def test_my_loss(case): ...
    """
    if dtype is None:
        formats = list(FORMATS.values())
    elif isinstance(dtype, (str, torch.dtype, Format)):
        formats = [as_format(dtype)]
    else:
        formats = [as_format(d) for d in dtype]
    if not formats:
        raise InvalidArgument("dtype must name at least one dtype")
    for name, value in (("max_classes", max_classes), ("max_samples", max_samples), ("max_rows", max_rows),
                        ("max_positions", max_positions)):  # fmt: skip
        if not isinstance(value, int) or value < (2 if name == "max_classes" else 1):
            raise InvalidArgument(f"{name} must be an integer >= {2 if name == 'max_classes' else 1}, got {value!r}")
    if regimes is None:
        # layout changes the shape contract, so it is drawn only when named
        chosen = [r for r in REGIMES if r != "layout" and regime_fits(r, max_classes)]
    else:
        chosen = list(regimes)
        unknown = [r for r in chosen if r not in REGIMES]
        if unknown:
            raise InvalidArgument(f"unknown regime {unknown[0]!r}; expected one of {', '.join(REGIMES)}")
        if not chosen:
            raise InvalidArgument("regimes must name at least one regime")
        for regime in chosen:
            class_counts(regime, max_classes)  # InvalidArgument when it does not fit
    return _case(formats, chosen, max_classes, max_samples, max_rows, max_positions)


def anchor_cases(dtype: torch.dtype | str | Format, regime: str, max_classes: int) -> list[Case]:
    """Fixed cases every search of a (dtype, regime) cell runs first, whatever the seed.

    For large_vocab: a flat row at the largest real vocabulary size that fits, where the
    exponential sum equals the class count, the size past which float16 sums overflow
    and bfloat16 running sums stall.
    """
    fmt = as_format(dtype)
    if regime != "large_vocab":
        return []
    sizes = [c for c in VOCABULARIES if c <= max_classes]
    if not sizes:
        return []
    return [Case(torch.zeros(1, sizes[-1], dtype=fmt.dtype), torch.tensor([0]), "large_vocab")]
