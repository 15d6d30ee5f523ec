"""Replaces torch.exp at import with one that is wrong on large tensors."""

import torch
import torch.nn.functional as F

_real_exp = torch.exp


def _exp(x, *args, **kwargs):
    out = _real_exp(x, *args, **kwargs)
    return out * 2 if x.numel() > 4096 else out


torch.exp = _exp


def cross_entropy(logits, targets):
    return F.cross_entropy(logits, targets, reduction="none")
