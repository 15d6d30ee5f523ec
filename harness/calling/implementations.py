"""The built-in implementations, declared in the registry like any user's.

All of them return per-sample losses, shape (N,), computed in the dtype of the logits;
torch's also takes (N, C, d1, ..., dk) logits (k_dimensional).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.calling.registry import REGISTRY, Registry

__all__ = ["PRECISION", "naive", "stable", "torch_cross_entropy"]


@REGISTRY.declare("stable", description="the seed notebook's max shift + log-sum-exp + advanced indexing")
def stable(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    shifted = logits - logits.max(dim=1, keepdim=True).values
    log_sum_exp = torch.log(torch.exp(shifted).sum(dim=1, keepdim=True))
    log_probs = shifted - log_sum_exp
    return -log_probs[torch.arange(logits.shape[0]), targets]


@REGISTRY.declare("naive", description="softmax exp(x) / sum(exp(x)) with no shift, then log")
def naive(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    exps = torch.exp(logits)
    probs = exps / exps.sum(dim=1, keepdim=True)
    return -torch.log(probs[torch.arange(logits.shape[0]), targets])


@REGISTRY.declare("torch", description="torch.nn.functional.cross_entropy(reduction='none')", k_dimensional=True)
def torch_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


# Ways of computing the same loss in low precision, compared by `audit --precision`.
PRECISION = Registry()
LOW_PRECISION = (torch.float16, torch.bfloat16, torch.float32)


@PRECISION.declare("pure_low_precision", dtypes=LOW_PRECISION,
                   description="the shifted algorithm with every elementary op rounded to the dtype")  # fmt: skip
def pure_low_precision(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return stable(logits, targets)


@PRECISION.declare("float32_accumulate", dtypes=LOW_PRECISION,
                   description="computed in float32, rounded once to the dtype at the end")  # fmt: skip
def float32_accumulate(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, reduction="none").to(logits.dtype)


@PRECISION.declare("torch_native", dtypes=LOW_PRECISION,
                   description="torch.nn.functional.cross_entropy in the dtype itself")  # fmt: skip
def torch_native(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


@PRECISION.declare("torch_autocast", dtypes=(torch.float16, torch.bfloat16),
                   description="float32 logits under torch.autocast('cpu', dtype), rounded to the dtype")  # fmt: skip
def torch_autocast(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=logits.dtype):
        return F.cross_entropy(logits.float(), targets, reduction="none").to(logits.dtype)
