"""The built-in implementations, declared in the registry like any user's.

All of them return per-sample losses, shape (N,), computed in the dtype of the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.registry import REGISTRY

__all__ = ["naive", "stable", "torch_cross_entropy"]


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


@REGISTRY.declare("torch", description="torch.nn.functional.cross_entropy(reduction='none')")
def torch_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction="none")
