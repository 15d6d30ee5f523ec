"""Cross entropy with the whole contract (weights, ignore_index, reductions, label smoothing,
z-loss, soft-capping), differentiated by torch autograd: two sound kernels and two whose
gradient alone is wrong (issue 15).

Each takes (N, C) logits in any float dtype and int64 targets (N,), computes in float32
(float64 for float64 logits) and returns its output in the logits' dtype. The forwards are
right; only the gradient with respect to the logits differs:

- ``autograd_tanh_cap``: soft-capping by torch.tanh, whose backward is 1 − tanh², and
  z-loss by torch.logsumexp, whose backward forms exp(x − lse) from the rounded lse. Both
  are the usual formulas; both lose relative accuracy (1 − tanh² is 0 once tanh rounds to 1;
  exp(x − lse) errs by u |lse|) and the gradient allowance must still pass them.
- ``accurate_sech2_cap``: sech² as 1 / cosh², a shifted log-sum-exp for z-loss.
- ``cap_gradient_forgets_sech2``: the capping's backward passes the gradient through
  unchanged (the identity instead of sech²(x / c)).
- ``z_loss_detached``: z-loss adds to the loss but its lse is detached, so the
  gradient misses 2 z lse p_j.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _shifted_lse(x: torch.Tensor) -> torch.Tensor:
    m = x.max(dim=1, keepdim=True).values.detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return (m + torch.log(torch.exp(x - m).sum(dim=1, keepdim=True))).squeeze(1)


class _AccurateCap(torch.autograd.Function):
    """c · tanh(x / c) with sech²(x / c) computed as 1 / cosh² (relatively accurate)."""

    @staticmethod
    def forward(ctx, x, cap):
        ctx.save_for_backward(x)
        ctx.cap = cap
        return cap * torch.tanh(x / cap)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.where(torch.isinf(x), torch.zeros_like(x), 1.0 / torch.cosh(x / ctx.cap) ** 2)
        return grad * s, None


class _IdentityCap(torch.autograd.Function):
    """c · tanh(x / c) whose backward forgets sech²: the bug."""

    @staticmethod
    def forward(ctx, x, cap):
        return cap * torch.tanh(x / cap)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _tanh_cap(x, cap):
    return cap * torch.tanh(x / cap)  # autograd's backward: 1 − tanh²


def _cross_entropy(logits, targets, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, cap_fn,
                   lse_fn):  # fmt: skip
    """The loss in float32 (float64): capped by ``cap_fn``, z-loss through ``lse_fn``, reduced, in the logits' dtype."""
    x = _wide(logits)
    if softcap is not None:
        x = cap_fn(x, softcap)
    w = None if weight is None else weight.to(x.dtype)
    ce = F.cross_entropy(x, targets, weight=w, ignore_index=ignore_index, reduction="none",
                         label_smoothing=label_smoothing)  # fmt: skip
    live = targets != ignore_index
    if z_loss:
        lse = lse_fn(x)
        ce = ce + torch.where(live, z_loss * lse * lse, torch.zeros_like(lse))
    if reduction == "none":
        out = ce
    elif reduction == "sum":
        out = ce.sum()
    else:
        safe = torch.where(live, targets, 0)
        per = torch.ones_like(ce) if w is None else w[safe]
        out = ce.sum() / (per * live).sum()
    return out.to(logits.dtype)


def autograd_tanh_cap(logits, targets, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                      z_loss=0.0, softcap=None):  # fmt: skip
    return _cross_entropy(logits, targets, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
                          _tanh_cap, lambda v: torch.logsumexp(v, dim=1))  # fmt: skip


def accurate_sech2_cap(logits, targets, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                       z_loss=0.0, softcap=None):  # fmt: skip
    return _cross_entropy(logits, targets, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
                          _AccurateCap.apply, _shifted_lse)  # fmt: skip


def cap_gradient_forgets_sech2(logits, targets, weight=None, ignore_index=-100, reduction="mean",
                               label_smoothing=0.0, z_loss=0.0, softcap=None):  # fmt: skip
    return _cross_entropy(logits, targets, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
                          _IdentityCap.apply, _shifted_lse)  # fmt: skip


def z_loss_detached(logits, targets, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                    z_loss=0.0, softcap=None):  # fmt: skip
    return _cross_entropy(logits, targets, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
                          _tanh_cap, lambda v: _shifted_lse(v).detach())  # fmt: skip


SOUND = ("autograd_tanh_cap", "accurate_sech2_cap")
BUGS = ("cap_gradient_forgets_sech2", "z_loss_detached")
