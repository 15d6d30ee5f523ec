"""Triton cross-entropy kernels, one program per row, checked on the CPU with --triton-interpret.

``cross_entropy`` is the online (one-pass) softmax: a running maximum and a sum rescaled
whenever the maximum grows, accumulated in float32 (float64 for float64 inputs).
``no_max_shift`` is the same kernel with a known bug class: it sums exp(x) without
subtracting the maximum, so it overflows where exp does (float16 beyond 11.09, float32
beyond 88.7). Both return per-sample losses (N,) in the logits' dtype.
"""

import torch
import triton
import triton.language as tl

BLOCK = 256


@triton.jit
def _online_softmax_ce(x_ptr, t_ptr, out_ptr, n_cols, stride_row, BLOCK: tl.constexpr, ACC: tl.constexpr,
                       SHIFT: tl.constexpr):  # fmt: skip
    row = tl.program_id(0)
    base = x_ptr + row * stride_row
    m = tl.full((), float("-inf"), ACC)
    s = tl.zeros((), ACC)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(base + cols, mask=cols < n_cols, other=float("-inf")).to(ACC)
        if SHIFT:
            new_m = tl.maximum(m, tl.max(x, 0))
            # a row of -inf so far keeps s = 0 (exp(-inf - -inf) would be NaN)
            scale = tl.where(new_m == float("-inf"), 0.0, tl.exp(m - new_m))
            terms = tl.where(x == float("-inf"), 0.0, tl.exp(x - new_m))
            s = s * scale + tl.sum(terms, 0)
            m = new_m
        else:
            s = s + tl.sum(tl.exp(x), 0)
    target = tl.load(t_ptr + row)
    xt = tl.load(base + target).to(ACC)
    loss = (m - xt) + tl.log(s) if SHIFT else tl.log(s) - xt
    tl.store(out_ptr + row, loss.to(out_ptr.dtype.element_ty))


def _launch(logits: torch.Tensor, targets: torch.Tensor, shift: bool) -> torch.Tensor:
    logits = logits.contiguous()
    n, c = logits.shape
    out = torch.empty(n, dtype=logits.dtype, device=logits.device)
    acc = tl.float64 if logits.dtype == torch.float64 else tl.float32
    _online_softmax_ce[(n,)](logits, targets, out, c, logits.stride(0), BLOCK=BLOCK, ACC=acc, SHIFT=shift)
    return out


def cross_entropy(logits, targets):
    """Online-softmax cross entropy in one pass (max shift, float32 accumulator)."""
    return _launch(logits, targets, shift=True)


def no_max_shift(logits, targets):
    """The same kernel without the max shift: overflows where exp does."""
    return _launch(logits, targets, shift=False)
