"""Implementations of the whole cross-entropy contract: a sound one, and one mutant per bug class.

Each takes torch's keywords plus ``z_loss`` and ``softcap`` (harness.oracle.options gives the
semantics) and computes in float32 or wider, rounding once to the logits' dtype, except
where its bug says otherwise. ``BUG_CLASSES`` maps each mutant to the dtypes where its bug
bites on the default budget.
"""

from __future__ import annotations

import torch

HALF = (torch.float16, torch.bfloat16)


def _work(logits: torch.Tensor) -> torch.Tensor:
    return logits.float() if logits.dtype in HALF else logits


def _per_sample(x, targets, weight, ignore_index, label_smoothing, z_loss, softcap, *, smooth_over_c_minus_1=False,
                smooth_from_softmax=False, shifted_z=True, cap_with_exp=False, leak_z=False):  # fmt: skip
    """Per-sample losses in x's dtype and the weight of each sample's target (for the mean)."""
    n = x.shape[1]
    if softcap is not None:
        if cap_with_exp:  # tanh written as (e^{2u} − 1) / (e^{2u} + 1): inf / inf = NaN for large u
            e = torch.exp(2 * x / softcap)
            x = softcap * (e - 1) / (e + 1)
        else:
            x = softcap * torch.tanh(x / softcap)
    # the shifted form: x − lse would round lse first and lose the bits of x − m (pytorch#11752)
    m = x.max(dim=1, keepdim=True).values
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all −inf, or +inf: the specials decide
    shifted = x - m
    log_s = torch.log(torch.exp(shifted).sum(dim=1, keepdim=True))
    logp = shifted - log_s
    lse = (m + log_s).squeeze(1)
    w = torch.ones(n, dtype=x.dtype) if weight is None else weight.to(x.dtype)
    if targets.is_floating_point():
        y = targets.to(x.dtype)
        y = (1 - label_smoothing) * y + label_smoothing / n
        coef = w * y
        loss = -torch.where(coef == 0, 0.0, coef * logp).sum(dim=1)
        sample_weight = torch.ones(len(x), dtype=x.dtype)
        ignored = torch.zeros(len(x), dtype=torch.bool)
    else:
        ignored = targets == ignore_index
        t = torch.where(ignored, 0, targets)
        rows = torch.arange(len(x))
        nll = -logp[rows, t] * w[t]
        if label_smoothing:
            # the bug: log(softmax) underflows to −inf where the shifted form stays finite
            logp_smooth = torch.log(torch.softmax(x, dim=1)) if smooth_from_softmax else logp
            terms = torch.where(w == 0, 0.0, -w * logp_smooth)
            share = label_smoothing / (n - 1 if smooth_over_c_minus_1 else n)
            smooth = terms.sum(dim=1) * share
            loss = (1 - label_smoothing) * nll + smooth
        else:
            loss = nll
        sample_weight = w[t]
    if z_loss or leak_z:
        z = z_loss if z_loss else 1e-4
        z_lse = lse if shifted_z else torch.log(torch.exp(x).sum(dim=1))  # the bug: overflows for large logits
        loss = loss + z * z_lse * z_lse
    loss = torch.where(ignored, 0.0, loss)
    sample_weight = torch.where(ignored, 0.0, sample_weight)
    return loss, sample_weight


def _reduce(loss, sample_weight, reduction, *, mean_by_rows=False, ignored_in_mean=False):
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if mean_by_rows:
        return total / len(loss)
    if ignored_in_mean:
        return total / (sample_weight.sum() + (sample_weight == 0).sum())
    weight = sample_weight.sum()
    # torch's mean over zero weight is NaN (its nll term is 0 / 0), whatever smoothing or z-loss add
    return total / weight if weight != 0 else torch.full((), float("nan"), dtype=total.dtype)


def _running_sum(loss, sample_weight, reduction):
    """A running sum in the loss's own dtype, one element at a time (stalls or overflows in 16 bits)."""
    total = torch.zeros((), dtype=loss.dtype)
    for value in loss:
        total = total + value
    return total if reduction == "sum" else total / sample_weight.sum()


def _contract(name: str, *, mean_by_rows=False, ignored_in_mean=False, low_precision_sum=False, through_bf16=False,
              float32_out=False, **bug):  # fmt: skip
    def fn(logits, targets, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0,
           softcap=None):  # fmt: skip
        x = _work(logits)
        loss, sample_weight = _per_sample(x, targets, weight, ignore_index, label_smoothing, z_loss, softcap, **bug)
        if low_precision_sum and reduction != "none":  # the batch sum accumulated in the input dtype
            return _running_sum(loss.to(logits.dtype), sample_weight.to(logits.dtype), reduction)
        out = _reduce(loss, sample_weight, reduction, mean_by_rows=mean_by_rows, ignored_in_mean=ignored_in_mean)
        if through_bf16:  # declared float32, but the value passed through bfloat16 on the way (mlx PR #4520)
            return out.to(torch.bfloat16).to(torch.float32)
        return out.to(torch.float32 if float32_out and logits.dtype in HALF else logits.dtype)

    fn.__name__ = fn.__qualname__ = name
    fn.soft_targets = True
    return fn


sound_cross_entropy = _contract("sound_cross_entropy")
sound_float32_out = _contract(
    "sound_float32_out", float32_out=True
)  # float32 loss for 16-bit logits, computed in float32

weighted_mean_by_rows = _contract("weighted_mean_by_rows", mean_by_rows=True)
ignored_rows_in_mean = _contract("ignored_rows_in_mean", ignored_in_mean=True)
smoothing_over_c_minus_1 = _contract("smoothing_over_c_minus_1", smooth_over_c_minus_1=True)
smoothing_from_log_softmax_underflow = _contract("smoothing_from_log_softmax_underflow", smooth_from_softmax=True)
batch_sum_in_input_dtype = _contract("batch_sum_in_input_dtype", low_precision_sum=True)
float32_through_bfloat16 = _contract("float32_through_bfloat16", through_bf16=True)
z_loss_leaks = _contract("z_loss_leaks", leak_z=True)
z_loss_unshifted = _contract("z_loss_unshifted", shifted_z=False)
softcap_with_exp = _contract("softcap_with_exp", cap_with_exp=True)


def sound_log_softmax(logits):
    return torch.log_softmax(_work(logits), dim=1).to(logits.dtype)


def sound_softmax(logits):
    return torch.softmax(_work(logits), dim=1).to(logits.dtype)


def sound_logsumexp(logits):
    return torch.logsumexp(_work(logits), dim=1).to(logits.dtype)


def log_softmax_unshifted(logits):
    x = _work(logits)
    return (x - torch.log(torch.exp(x).sum(dim=1, keepdim=True))).to(logits.dtype)


def softmax_denominator_overflows(logits):
    x = _work(logits)
    shifted = x - x.max(dim=1, keepdim=True).values
    e = torch.exp(shifted).to(logits.dtype)  # the sum kept in the input dtype: overflows past 65504 in float16
    return (e / e.sum(dim=1, keepdim=True)).to(logits.dtype)


for _fn, _op in ((sound_log_softmax, "log_softmax"), (sound_softmax, "softmax"), (sound_logsumexp, "logsumexp"),
                 (log_softmax_unshifted, "log_softmax"), (softmax_denominator_overflows, "softmax")):  # fmt: skip
    _fn.op = _op

ALL = ("float16", "bfloat16", "float32", "float64")
# mutant -> the dtypes where its bug bites on the default budget
BUG_CLASSES = {
    "weighted_mean_by_rows": ALL,
    "ignored_rows_in_mean": ALL,
    "smoothing_over_c_minus_1": ALL,
    "smoothing_from_log_softmax_underflow": ALL,
    "batch_sum_in_input_dtype": ("float16", "bfloat16"),
    "float32_through_bfloat16": ALL,
    "z_loss_leaks": ALL,
    "z_loss_unshifted": ALL,
    "softcap_with_exp": ALL,
    "log_softmax_unshifted": ALL,
    "softmax_denominator_overflows": ("float16",),
}
SOUND = ("sound_cross_entropy", "sound_log_softmax", "sound_softmax", "sound_logsumexp")
