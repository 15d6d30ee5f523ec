"""Cross entropy with hand-written backward passes: two sound ones and one per gradient bug class (issue 15).

Each takes (N, C) logits (float16, bfloat16, float32 or float64) and int64 targets (N,)
and returns the per-sample loss (N,) in the logits' dtype. Every forward here is right
(float32 accumulation, float64 for float64 logits, the max shift, rounded once), so only
the gradient with respect to the logits can be wrong. Most use a custom
``torch.autograd.Function`` whose backward returns that gradient in the logits' dtype.

``SOUND`` and ``BUG_CLASSES`` map names to one-line descriptions; ``BITES`` gives, per bug
class, the dtypes where it must be flagged (on inputs of the kind its docstring names).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Rule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32 for 16-bit and float32 logits, float64 for float64: a sound kernel's working precision."""
    return x.double() if x.dtype == torch.float64 else x.float()


def _rows(x: torch.Tensor) -> torch.Tensor:
    return torch.arange(x.shape[0], device=x.device)


def _losses(w: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample lse − x_t of wide logits, max-shifted (NaN for all −inf rows, +inf at a masked target)."""
    m = w.max(dim=1, keepdim=True).values
    # (m − x_t) + log Σ exp(x − m): the shifted form (lse − x_t loses the bits of m − x_t, pytorch#11752)
    return (m.squeeze(1) - w[_rows(w), targets]) + torch.log(torch.exp(w - m).sum(dim=1))


def _softmax(w: torch.Tensor) -> torch.Tensor:
    m = w.max(dim=1, keepdim=True).values
    e = torch.exp(w - m)
    return e / e.sum(dim=1, keepdim=True)


def _one_hot(like: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.one_hot(targets, like.shape[1]).to(like.dtype)


class _CrossEntropy(torch.autograd.Function):
    """Right per-sample forward; the backward is ``rule(logits, targets, grad_output)``."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, rule: Rule) -> torch.Tensor:
        ctx.save_for_backward(logits, targets)
        ctx.rule = rule
        return _losses(_wide(logits), targets).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        logits, targets = ctx.saved_tensors
        return ctx.rule(logits, targets, grad_output), None, None


# --- sound -------------------------------------------------------------------------------


def autograd_upcast(logits, targets):
    """torch's autograd of cross entropy computed in float32 (float64 stays float64), rounded once."""
    if logits.dtype == torch.float64:
        return F.cross_entropy(logits, targets, reduction="none")
    return F.cross_entropy(logits.float(), targets, reduction="none").to(logits.dtype)


def _sound_rule(logits, targets, grad_output):
    w = _wide(logits)
    grad = (_softmax(w) - _one_hot(w, targets)) * grad_output.to(w.dtype).unsqueeze(1)
    return grad.to(logits.dtype)


def custom_float32_backward(logits, targets):
    """Custom backward: (softmax − one-hot) · grad_output in float32 (float64), max-shifted, rounded once."""
    return _CrossEntropy.apply(logits, targets, _sound_rule)


# --- bug classes --------------------------------------------------------------------------


def _pt_rounded_rule(logits, targets, grad_output):
    w = _wide(logits)
    g = grad_output.to(w.dtype).unsqueeze(1)
    buffer = (_softmax(w) * g).to(logits.dtype)  # g p_j stored in the logits' dtype, then the target patched
    rows = _rows(w)
    buffer[rows, targets] = (buffer[rows, targets].to(w.dtype) - g.squeeze(1)).to(logits.dtype)
    return buffer


def grad_pt_rounded_to_16_bits(logits, targets):
    """The target entry g (p_t − 1) computed from g p_t already rounded to the logits' dtype.

    A confident prediction's p_t rounds to 1 in 16 bits (p_t = 0.999 in bfloat16), so its
    gradient is 0 instead of −1e-3: Liger-Kernel's Triton cross entropy before PR #1329 (and
    its NPU backend, PR #1341) wrote g p_j into the low-precision gradient buffer and then
    subtracted g at the target. The other entries are rounded once (right). Bites in float16
    and bfloat16 on confident rows; a no-op in float32 and float64.
    """
    return _CrossEntropy.apply(logits, targets, _pt_rounded_rule)


def _low_precision_rule(logits, targets, grad_output):
    m = logits.max(dim=1, keepdim=True).values
    e = torch.exp(logits - m)
    p = e / e.sum(dim=1, keepdim=True)
    return (p - _one_hot(logits, targets)) * grad_output.unsqueeze(1)


def backward_in_low_precision(logits, targets):
    """The whole backward computed in the logits' dtype: shift, exp, sum, division, p − 1 and the product.

    Besides p_t rounding to 1 on confident rows (as grad_pt_rounded_to_16_bits), the shift
    x − m rounds in 16 bits, so exp(x − m) errs by |x − m| u on spread-out rows, and each
    step rounds again (cf. TransformerEngine PR #3193: the gradient kept in the input's
    buffer lost precision). Bites in float16 and bfloat16; sound in float32 and float64.
    """
    return _CrossEntropy.apply(logits, targets, _low_precision_rule)


class _GradientInForward(torch.autograd.Function):
    """The gradient computed in the forward pass and stored, as memory-saving fused kernels do."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        w = _wide(logits)
        ctx.save_for_backward((_softmax(w) - _one_hot(w, targets)).to(logits.dtype))
        return _losses(w, targets).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad, None  # never scaled by grad_output


def ignores_grad_output(logits, targets):
    """The gradient computed (soundly) in the forward pass and returned unscaled by grad_output.

    Liger-Kernel#678 / PR #680 and #968 (reduction="none" losses whose per-row upstream
    gradient was never applied), ROCm/TransformerEngine PR #336. Right when every upstream
    gradient is 1; bites in every dtype when one is not (0, 0.5, −2, 1e-3, 1e3 ...).
    """
    return _GradientInForward.apply(logits, targets)


def _online_normalizer_rule(logits, targets, grad_output):
    w = _wide(logits)
    running = torch.cummax(w, dim=1).values  # m_j = max(x_1..x_j): the online normalizer's running max
    m = running[:, -1:]
    # d = Σ_j exp(x_j − m_j) exp(m_j − m), without the guard for m_j = −inf: exp(−inf − (−inf)) = NaN
    d = (torch.exp(w - running) * torch.exp(running - m)).sum(dim=1, keepdim=True)
    grad = (torch.exp(w - m) / d - _one_hot(w, targets)) * grad_output.to(w.dtype).unsqueeze(1)
    return grad.to(logits.dtype)


def nan_at_masked_logits(logits, targets):
    """NaN gradients at masked logits while the forward is right (pytorch#31829, #49724).

    The backward recomputes the softmax normalizer in one pass with a running maximum (the
    online normalizer, Milakov & Gimelshein, arXiv 1805.02867) and no guard for a running
    maximum of −inf: a leading −inf logit gives exp(−inf − (−inf)) = NaN, and the whole
    row's gradient is NaN (the same (−inf) − (−inf) as pytorch#31829's logsumexp backward).
    Bites in every dtype on rows whose first class is −inf (left padding, a masked leading
    block) with some finite logit; the oracle's gradient there is finite, 0 at −inf logits.
    """
    return _CrossEntropy.apply(logits, targets, _online_normalizer_rule)


def _unshifted_rule(logits, targets, grad_output):
    w = _wide(logits)
    e = torch.exp(w)
    grad = (e / e.sum(dim=1, keepdim=True) - _one_hot(w, targets)) * grad_output.to(w.dtype).unsqueeze(1)
    return grad.to(logits.dtype)


def unshifted_softmax_backward(logits, targets):
    """The backward's softmax exp(x) / Σ exp(x) without the max shift (in float32 / float64).

    exp overflows for a logit above about 88.7 (float32 working precision: every input
    dtype but float64) or 709.8 (float64): inf / inf = NaN. Rows whose logits all lie below
    about −87 (−708) underflow to subnormals or 0: imprecise, or 0 / 0 = NaN. −inf logits
    alone are harmless (exp(−inf) = 0). Bites in every dtype on such rows (1e4 logits).
    """
    return _CrossEntropy.apply(logits, targets, _unshifted_rule)


def _forgets_rule(logits, targets, grad_output):
    w = _wide(logits)
    return (_softmax(w) * grad_output.to(w.dtype).unsqueeze(1)).to(logits.dtype)


def forgets_one_hot(logits, targets):
    """The backward returns g · softmax, without subtracting the one-hot target (issue 15's list).

    Bites in every dtype on every row with a nonzero upstream gradient.
    """
    return _CrossEntropy.apply(logits, targets, _forgets_rule)


def _doubled_rule(logits, targets, grad_output):
    w = _wide(logits)
    grad = (_softmax(w) - 2 * _one_hot(w, targets)) * grad_output.to(w.dtype).unsqueeze(1)
    return grad.to(logits.dtype)


def doubled_one_hot(logits, targets):
    """The one-hot target subtracted twice, g (p − 2 e_t): a smoothing term and the target term both
    subtracting it (issue 15's list). Bites in every dtype on every row with a nonzero upstream gradient.
    """
    return _CrossEntropy.apply(logits, targets, _doubled_rule)


class _MeanOverRows(torch.autograd.Function):
    """Right forward with ignore_index and a reduction; the mean's backward divides by N."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index: int, reduction: str):
        w = _wide(logits)
        ignored = targets == ignore_index
        safe = torch.where(ignored, 0, targets)
        losses = torch.where(ignored, 0.0, _losses(w, safe))
        ctx.save_for_backward(logits, safe, ignored)
        ctx.reduction = reduction
        if reduction == "none":
            return losses.to(logits.dtype)
        total = losses.sum()
        if reduction == "mean":
            total = total / (~ignored).sum()  # right: the number of non-ignored targets (0/0 = NaN)
        return total.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        logits, safe, ignored = ctx.saved_tensors
        w = _wide(logits)
        g = grad_output.to(w.dtype)
        if ctx.reduction == "none":
            g = g.unsqueeze(1)
        elif ctx.reduction == "mean":
            g = g / logits.shape[0]  # the bug: N rows, ignored ones included
        grad = (_softmax(w) - _one_hot(w, safe)) * g
        return torch.where(ignored.unsqueeze(1), 0.0, grad).to(logits.dtype), None, None, None


def mean_over_ignored_rows(logits, targets, ignore_index=-100, reduction="mean"):
    """Mean reduction with ignore_index whose backward divides by N instead of the non-ignored count.

    The forward divides right, so only the gradient is too small, by the share of ignored
    rows (TransformerEngine PR #2476, ROCm/TransformerEngine PR #336: the loss and gradient
    over all tokens rather than the valid ones). reduction "none" and "sum" are right.
    Bites in every dtype under reduction="mean" when some target equals ignore_index.
    """
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be none, sum or mean, got {reduction!r}")
    return _MeanOverRows.apply(logits, targets, ignore_index, reduction)


SOUND = {
    "autograd_upcast": "torch autograd of F.cross_entropy on float32 (float64) logits, rounded once",
    "custom_float32_backward": "custom backward: (softmax − one-hot) · grad_output in float32, rounded once",
}

BUG_CLASSES = {
    "grad_pt_rounded_to_16_bits": "p_t rounded to 16 bits before p_t − 1: 0 gradient on confident rows",
    "backward_in_low_precision": "the whole backward in float16/bfloat16 (shift, exp, sum, p − 1, product)",
    "ignores_grad_output": "gradient computed in the forward and never scaled by grad_output",
    "nan_at_masked_logits": "online normalizer without a −inf guard: NaN rows after a leading −inf logit",
    "unshifted_softmax_backward": "backward softmax without the max shift: NaN on logits beyond ~88.7",
    "forgets_one_hot": "backward returns softmax, without subtracting the one-hot target",
    "doubled_one_hot": "backward subtracts the one-hot target twice",
    "mean_over_ignored_rows": "mean with ignore_index whose backward divides by N, not the non-ignored count",
}

ALL_DTYPES = ("float16", "bfloat16", "float32", "float64")
# bug class → the dtypes where it bites (on inputs of the kind its docstring names)
BITES = {
    "grad_pt_rounded_to_16_bits": ("float16", "bfloat16"),
    "backward_in_low_precision": ("float16", "bfloat16"),
    "ignores_grad_output": ALL_DTYPES,
    "nan_at_masked_logits": ALL_DTYPES,
    "unshifted_softmax_backward": ALL_DTYPES,
    "forgets_one_hot": ALL_DTYPES,
    "doubled_one_hot": ALL_DTYPES,
    "mean_over_ignored_rows": ALL_DTYPES,
}
# implementations that take options beyond (logits, targets), with the ones they are graded under
OPTIONS = {"mean_over_ignored_rows": {"reduction": "mean"}}
