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

from harness.formats import FORMATS, Format
from strategies.floats import as_format
from strategies.regimes import LARGE_VOCABULARIES, REGIMES, row_strategy

if TYPE_CHECKING:
    from strategies.contract import Contract

__all__ = ["Case", "batch_shapes", "cases", "class_counts"]

SMALL_CLASS_LIMIT = 64
LAYOUT_MAX_EXTENT = 3  # each extra dimension of a layout case
LAYOUT_CLASS_LIMIT = 16
MID_VOCABULARIES = (1_024, 4_096)


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

    def _bit_bytes(self) -> bytes:
        return self.logits.contiguous().view(self.format.int_dtype).numpy().tobytes()

    @cached_property
    def case_id(self) -> str:
        """Content hash: the same bits, dtype, shape and targets always give the same id."""
        digest = hashlib.sha256()
        digest.update(f"{self.format.name}{tuple(self.logits.shape)}".encode())
        digest.update(self._bit_bytes())
        digest.update(self.targets.numpy().tobytes())
        if self.contract is not None:
            digest.update(self.contract.digest())
        return digest.hexdigest()[:12]

    def to_json(self) -> dict:
        """Exact, JSON-safe encoding: the logits' bit patterns (little-endian, base64)."""
        return {
            "case_id": self.case_id,
            "regime": self.regime,
            "dtype": self.format.name,
            "shape": list(self.logits.shape),
            "bits": base64.b64encode(self._bit_bytes()).decode("ascii"),
            "targets": self.targets.tolist(),
            **({"contract": self.contract.to_json()} if self.contract is not None else {}),
        }

    @classmethod
    def from_json(cls, data: dict) -> Case:
        fmt = as_format(data["dtype"])
        raw = bytearray(base64.b64decode(data["bits"]))
        bits = torch.frombuffer(raw, dtype=fmt.int_dtype).reshape(data["shape"])
        contract = None
        if data.get("contract") is not None:
            from strategies.contract import Contract

            contract = Contract.from_json(data["contract"], fmt.dtype)
        case = cls(bits.view(fmt.dtype).clone(), torch.tensor(data["targets"], dtype=torch.int64), data["regime"],
                   contract)  # fmt: skip
        if "case_id" in data and case.case_id != data["case_id"]:
            raise ValueError(f"stored case {data['case_id']} does not match its bits")
        return case


def class_counts(regime: str, max_classes: int) -> st.SearchStrategy[int]:
    """Class counts a regime is drawn at: small for most (at most 16 for layout), vocabulary sizes for large_vocab."""
    if regime == "large_vocab":
        mid = [c for c in MID_VOCABULARIES if c <= max_classes]
        big = [c for c in LARGE_VOCABULARIES if c <= max_classes]
        if not mid:
            raise InvalidArgument(f"large_vocab needs max_classes >= {MID_VOCABULARIES[0]}, got {max_classes}")
        if not big:
            return st.sampled_from(mid)
        # real vocabulary sizes one time in four: they dominate the oracle's cost
        return st.integers(0, 3).flatmap(lambda pick: st.sampled_from(big if pick == 3 else mid))
    if regime == "layout":  # the layout is the point; every position's row is drawn value by value
        return st.integers(2, min(LAYOUT_CLASS_LIMIT, max_classes))
    return st.integers(2, min(SMALL_CLASS_LIMIT, max_classes))


def batch_shapes(regime: str, max_samples: int) -> st.SearchStrategy[tuple[int, ...]]:
    """The shape of a case's targets: (N,), or (N, d1, ..., dk) with k = 1 or 2 for layout."""
    if regime == "large_vocab":
        return st.just((1,))
    samples = st.integers(1, max_samples)
    if regime != "layout":
        return samples.map(lambda n: (n,))
    extra = st.lists(st.integers(1, LAYOUT_MAX_EXTENT), min_size=1, max_size=2)
    return st.tuples(samples, extra).map(lambda pair: (pair[0], *pair[1]))


@st.composite
def _case(draw, formats: list[Format], regimes: list[str], max_classes: int, max_samples: int) -> Case:
    fmt = draw(st.sampled_from(formats))
    regime = draw(st.sampled_from(regimes))
    n_classes = draw(class_counts(regime, max_classes))
    shape = draw(batch_shapes(regime, max_samples))
    rows = [draw(row_strategy(regime, fmt, n_classes)) for _ in range(math.prod(shape))]
    logits = torch.tensor([values for values, _ in rows], dtype=torch.float64).to(fmt.dtype)
    targets = torch.tensor([target for _, target in rows], dtype=torch.int64).reshape(shape)
    if len(shape) > 1:  # rows fill (N, d1, ..., C); the class dimension then moves second
        logits = logits.reshape(*shape, n_classes).movedim(-1, 1).contiguous()
    return Case(logits, targets, regime)


def cases(
    dtype: torch.dtype | str | Iterable[torch.dtype | str] | None = None,
    regimes: Iterable[str] | None = None,
    max_classes: int = 32_768,
    max_samples: int = 3,
) -> st.SearchStrategy[Case]:
    """Cases of extreme logits for cross entropy.

    ``dtype``: one dtype or several (default: float16, bfloat16, float32, float64).
    ``regimes``: names from strategies.REGIMES (default: all that fit ``max_classes``,
    except ``layout``, whose (N, C, d1, ..., dk) logits only some losses accept).
    ``max_classes``: the largest class count drawn (large_vocab needs at least 1024).
    ``max_samples``: the most rows per case, N (large_vocab rows come one per case;
    layout cases are (N, C, d1, ..., dk), so up to N * 9 rows).

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
    if not isinstance(max_classes, int) or max_classes < 2:
        raise InvalidArgument(f"max_classes must be an integer >= 2, got {max_classes!r}")
    if not isinstance(max_samples, int) or max_samples < 1:
        raise InvalidArgument(f"max_samples must be an integer >= 1, got {max_samples!r}")
    if regimes is None:
        # layout changes the shape contract, so it is drawn only when named
        chosen = [r for r in REGIMES if r != "layout" and (r != "large_vocab" or max_classes >= MID_VOCABULARIES[0])]
    else:
        chosen = list(regimes)
        unknown = [r for r in chosen if r not in REGIMES]
        if unknown:
            raise InvalidArgument(f"unknown regime {unknown[0]!r}; expected one of {', '.join(REGIMES)}")
        if not chosen:
            raise InvalidArgument("regimes must name at least one regime")
        class_counts("large_vocab", max_classes) if "large_vocab" in chosen else None
    return _case(formats, chosen, max_classes, max_samples)


def anchor_cases(dtype: torch.dtype | str | Format, regime: str, max_classes: int) -> list[Case]:
    """Fixed cases every search of a (dtype, regime) cell runs first, whatever the seed.

    For large_vocab: a flat row at the largest real vocabulary size that fits, where the
    exponential sum equals the class count, the size past which float16 sums overflow
    and bfloat16 running sums stall.
    """
    fmt = as_format(dtype)
    if regime != "large_vocab":
        return []
    sizes = [c for c in LARGE_VOCABULARIES if c <= max_classes]
    if not sizes:
        return []
    return [Case(torch.zeros(1, sizes[-1], dtype=fmt.dtype), torch.tensor([0]), "large_vocab")]
