"""The options of cross entropy the oracle knows, with their exact semantics.

Per sample i with logits x (C classes), the loss is, for class-index targets t_i,

    L_i = (1 − ε) · w[t] · A_t  +  (ε / C) · Σ_j w_j · A_j  +  z · lse²

and for probability targets y_i (float, shape (N, C)), with y'_j = (1 − ε) y_j + ε / C,

    L_i = Σ_j w_j · y'_j · A_j  +  z · lse²

where x' = c · tanh(x / c) with soft-capping c (Gemma 2), else x' = x; lse = log Σ_k exp(x'_k);
A_j = lse − x'_j = −log softmax(x')_j ≥ 0; ε = label_smoothing; w = class weight (all 1 when
absent); z = z_loss (PaLM, arXiv 2204.02311: z · lse² per sample). This is torch's
``cross_entropy`` (torch 2.13, aten/src/ATen/native/LossNLL.cpp) plus z-loss and soft-capping.

Edge cases, following torch where torch defines them:
- ignore_index: such samples give exactly 0, whatever their logits (NaN included);
  reductions skip them. Only class-index targets can be ignored.
- reduction "sum": Σ_i L_i; "mean": Σ_i L_i / W with W = Σ over non-ignored samples of
  w[t_i] (class-index targets; the number of them without weights), or W = N (probability
  targets, as torch). W = 0 gives NaN (0/0: torch's mean over zero non-ignored targets).
- A class with zero coefficient contributes nothing, even at a −inf logit: a zero weight,
  a zero target probability, (1 − ε) = 0. torch computes 0 · (−inf) = NaN there
  (optax#896's bug class); the oracle's value is the limit of the loss, and NaN is graded
  as spurious. A positive coefficient on a −inf logit makes the loss +inf (torch: label
  smoothing with a −inf logit gives +inf).
- Soft-capping maps ±inf logits to ±c: they are finite afterwards, so −inf no longer masks.
- The z-loss term is not weighted; it is added for every non-ignored sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["OPTION_NAMES", "REDUCTIONS", "LossOptions"]

REDUCTIONS = ("none", "sum", "mean")
# Keyword names, as an implementation's signature spells them (torch's, plus z_loss and softcap).
OPTION_NAMES = ("weight", "ignore_index", "reduction", "label_smoothing", "z_loss", "softcap")


@dataclass(frozen=True)
class LossOptions:
    """Options of one cross-entropy call; the defaults are plain per-sample cross entropy.

    ``weight``: per-class weights as exact floats (C values, each >= 0), or None.
    ``ignore_index``: a target value whose samples are ignored (torch's default -100).
    ``reduction``: "none" (per sample), "sum" or "mean".
    ``label_smoothing``: ε in [0, 1]. ``z_loss``: z >= 0. ``softcap``: c > 0, or None.
    Raises ValueError (one line) for values outside these ranges.
    """

    weight: tuple[float, ...] | None = None
    ignore_index: int = -100
    reduction: Literal["none", "sum", "mean"] = "none"
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {self.reduction!r}")
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {self.label_smoothing!r}")
        if not (self.z_loss >= 0.0 and math.isfinite(self.z_loss)):
            raise ValueError(f"z_loss must be finite and >= 0, got {self.z_loss!r}")
        if self.softcap is not None and not (self.softcap > 0.0 and math.isfinite(self.softcap)):
            raise ValueError(f"softcap must be finite and > 0, or None, got {self.softcap!r}")
        if self.weight is not None:
            weight = tuple(float(w) for w in self.weight)
            bad = [w for w in weight if not (w >= 0.0 and math.isfinite(w))]
            if bad:
                raise ValueError(f"class weights must be finite and >= 0, got {bad[0]!r}")
            object.__setattr__(self, "weight", weight)
        if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int):
            raise ValueError(f"ignore_index must be an integer, got {self.ignore_index!r}")

    @property
    def plain(self) -> bool:
        """No option changes the per-sample value: plain cross entropy (ignore_index may still apply)."""
        return self.weight is None and self.label_smoothing == 0.0 and self.z_loss == 0.0 and self.softcap is None

    def class_weights(self, n_classes: int) -> Sequence[float]:
        """The weights, or C ones; ValueError when their number is not C."""
        if self.weight is None:
            return (1.0,) * n_classes
        if len(self.weight) != n_classes:
            raise ValueError(f"weight has {len(self.weight)} values for {n_classes} classes")
        return self.weight

    def to_json(self) -> dict:
        return {
            "weight": None if self.weight is None else list(self.weight),
            "ignore_index": self.ignore_index,
            "reduction": self.reduction,
            "label_smoothing": self.label_smoothing,
            "z_loss": self.z_loss,
            "softcap": self.softcap,
        }

    @classmethod
    def from_json(cls, data: dict | None) -> LossOptions:
        data = dict(data or {})
        if data.get("weight") is not None:
            data["weight"] = tuple(data["weight"])
        return cls(**{k: v for k, v in data.items() if k in OPTION_NAMES})
