"""Cross-entropy implementations whose backward pass is unusual, for tests of how gradients are taken."""

import numpy as np
import torch
import torch.nn.functional as F


def upcast(logits, targets):
    """torch autograd of an upcasting forward: float32 (float64 stays), rounded once to the logits' dtype."""
    wide = logits.double() if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(wide, targets, reduction="none").to(logits.dtype)


def upcast_mean(logits, targets):
    """The mean of ``upcast``: a scalar, back-propagated with one upstream value."""
    wide = logits.double() if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(wide, targets).to(logits.dtype)


def detached(logits, targets):
    """A correct forward that is cut from autograd: not differentiable."""
    return upcast(logits, targets).detach()


def through_numpy(logits, targets):
    """A correct forward through NumPy (``.numpy()`` refuses a tensor that requires grad)."""
    x = logits.to(torch.float64).numpy()
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    out = lse - x[np.arange(len(x)), targets.numpy()]
    return torch.from_numpy(out).to(logits.dtype)


class _RaisingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets):
        return upcast(logits, targets)

    @staticmethod
    def backward(ctx, grad_output):
        raise RuntimeError("this backward is not implemented")


def raising_backward(logits, targets):
    """A correct forward whose custom backward raises."""
    return _RaisingBackward.apply(logits, targets)
