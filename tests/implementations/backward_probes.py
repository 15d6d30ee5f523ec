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


class _Custom(torch.autograd.Function):
    """A right forward whose backward is ``ctx.rule(logits, targets, grad_output)``."""

    @staticmethod
    def forward(ctx, logits, targets, rule):
        ctx.save_for_backward(logits, targets)
        ctx.rule = rule
        return upcast(logits.detach(), targets)

    @staticmethod
    def backward(ctx, grad_output):
        logits, targets = ctx.saved_tensors
        return ctx.rule(logits, targets, grad_output), None, None


def _right(logits, targets, grad_output):
    w = logits.double() if logits.dtype == torch.float64 else logits.float()
    p = torch.softmax(w, dim=1)
    p[torch.arange(len(targets)), targets] -= 1
    return (p * grad_output.to(w.dtype).unsqueeze(1)).to(logits.dtype)


def returns_none(logits, targets):
    """A backward that returns no gradient for the logits (the outputs of backward swapped)."""
    return _Custom.apply(logits, targets, lambda x, t, g: None)


def sparse_gradient(logits, targets):
    """The right gradient, as a sparse COO tensor."""
    return _Custom.apply(logits, targets, lambda x, t, g: _right(x, t, g).to_sparse())


def writes_grad_output(logits, targets):
    """The right gradient, after scaling grad_output in place (the caller's buffer)."""

    def rule(x, t, g):
        out = _right(x, t, g)
        g.mul_(2)
        return out

    return _Custom.apply(logits, targets, rule)


def doubles_non_targets(logits, targets):
    """2·p at every non-target class: wrong by 100% wherever p is not negligible."""

    def rule(x, t, g):
        out = _right(x, t, g)
        mask = torch.ones_like(out, dtype=torch.bool)
        mask[torch.arange(len(t)), t] = False
        return torch.where(mask, 2 * out, out)

    return _Custom.apply(logits, targets, rule)
