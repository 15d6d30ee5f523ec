"""The built-in implementations, declared in the registry like any user's.

Cross entropy: stable, naive and torch return per-sample losses, shape (N,), computed in
the dtype of the logits; torch's also takes (N, C, d1, ..., dk) logits (k_dimensional).
The softmax family (issue 14): torch's and a naive (unshifted) version of each of
log_softmax, softmax and logsumexp over the last dimension, side by side in the default
audit. ``REFERENCES`` holds what ``check`` compares an implementation with when its
contract is wider than plain cross entropy: torch's cross entropy with every option it
takes and probability targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.calling.registry import REGISTRY, Registry

__all__ = ["PRECISION", "REFERENCES", "naive", "reference_for", "stable", "torch_cross_entropy"]


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


@REGISTRY.declare("torch.log_softmax", op="log_softmax", description="torch.log_softmax(x, dim=-1)")
def torch_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1)


@REGISTRY.declare("naive.log_softmax", op="log_softmax", description="log(exp(x) / sum(exp(x))), no shift")
def naive_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    exps = torch.exp(logits)
    return torch.log(exps / exps.sum(dim=-1, keepdim=True))


@REGISTRY.declare("torch.softmax", op="softmax", description="torch.softmax(x, dim=-1)")
def torch_softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=-1)


@REGISTRY.declare("naive.softmax", op="softmax", description="exp(x) / sum(exp(x)), no shift")
def naive_softmax(logits: torch.Tensor) -> torch.Tensor:
    exps = torch.exp(logits)
    return exps / exps.sum(dim=-1, keepdim=True)


@REGISTRY.declare("torch.logsumexp", op="logsumexp", description="torch.logsumexp(x, dim=-1)")
def torch_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits, dim=-1)


@REGISTRY.declare("naive.logsumexp", op="logsumexp", description="log(sum(exp(x))), no shift")
def naive_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.exp(logits).sum(dim=-1))


# What `check` compares an implementation with, when its op or options are not plain cross entropy.
REFERENCES = Registry()


@REFERENCES.declare("torch (options)", k_dimensional=True, soft_targets=True,
                    description="torch.nn.functional.cross_entropy with weight, ignore_index, reduction, "
                                "label_smoothing and probability targets")  # fmt: skip
def torch_cross_entropy_options(logits, targets, weight=None, ignore_index=-100, reduction="none", label_smoothing=0.0):
    return F.cross_entropy(logits, targets, weight=weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)  # fmt: skip


def reference_for(op: str, options: frozenset[str] = frozenset(), soft_targets: bool = False):
    """The built-in that ``check`` runs beside an implementation of ``op`` taking ``options``."""
    if op != "cross_entropy":
        return REGISTRY.get(f"torch.{op}")
    if options or soft_targets:
        return REFERENCES.get("torch (options)")
    return REGISTRY.get("torch")


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
