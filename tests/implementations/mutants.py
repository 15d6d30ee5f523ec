"""One deliberately buggy implementation per bug class `check` must flag.

Each returns per-sample losses in the input dtype, as a plausible hand-written kernel would.
"""

import torch
import torch.nn.functional as F


def _pick(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -log_probs[torch.arange(log_probs.shape[0]), targets]


def no_max_shift(logits, targets):
    probs = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    return -torch.log(probs[torch.arange(logits.shape[0]), targets])


def shift_by_mean(logits, targets):
    shifted = logits - logits.mean(dim=1, keepdim=True)
    return _pick(shifted - torch.log(torch.exp(shifted).sum(dim=1, keepdim=True)), targets)


def shift_by_target(logits, targets):
    shifted = logits - logits[torch.arange(logits.shape[0]), targets].unsqueeze(1)
    return torch.log(torch.exp(shifted).sum(dim=1))


def clamp_probability(logits, targets):
    probs = torch.softmax(logits, dim=1).clamp(min=1e-7)
    return -torch.log(probs[torch.arange(logits.shape[0]), targets])


def epsilon_in_log(logits, targets):
    probs = torch.softmax(logits, dim=1)
    return -torch.log(probs[torch.arange(logits.shape[0]), targets] + 1e-8)


def one_hot_product(logits, targets):
    one_hot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    return -(one_hot * torch.log_softmax(logits, dim=1)).sum(dim=1)


def low_precision_running_sum(logits, targets):
    """Exponentials accumulated one class at a time in the input dtype."""
    shifted = logits - logits.max(dim=1, keepdim=True).values
    exps = torch.exp(shifted)
    total = torch.zeros(logits.shape[0], dtype=logits.dtype)
    for start in range(0, logits.shape[1], 8):  # 8-wide vector lanes, summed in order
        for lane in exps[:, start : start + 8].unbind(dim=1):
            total = total + lane
    return torch.log(total) - shifted[torch.arange(logits.shape[0]), targets]


def low_precision_tile_sums(logits, targets):
    """Online softmax over tiles of 256 classes with the running max and sum in the input dtype."""
    n = logits.shape[0]
    running_max = torch.full((n,), float("-inf"), dtype=logits.dtype)
    running_sum = torch.zeros(n, dtype=logits.dtype)
    for tile in logits.split(256, dim=1):
        new_max = torch.maximum(running_max, tile.max(dim=1).values)
        scale = torch.exp(running_max - new_max).nan_to_num(0.0)
        running_sum = running_sum * scale + torch.exp(tile - new_max.unsqueeze(1)).sum(dim=1)
        running_max = new_max
    return running_max + torch.log(running_sum) - logits[torch.arange(n), targets]


def ties_dropped(logits, targets):
    """log1p form that leaves out every entry tied with the maximum, not just one."""
    top = logits.max(dim=1, keepdim=True).values
    rest = torch.where(logits == top, torch.zeros_like(logits), torch.exp(logits - top))
    lse = top.squeeze(1) + torch.log1p(rest.sum(dim=1))
    return lse - logits[torch.arange(logits.shape[0]), targets]


def silent_bfloat16(logits, targets):
    return F.cross_entropy(logits.to(torch.bfloat16), targets, reduction="none").to(logits.dtype)


def finite_mask_sentinel(logits, targets):
    cleaned = logits.masked_fill(torch.isneginf(logits), -1e4)
    return F.cross_entropy(cleaned, targets, reduction="none")


def rounded_lse_then_subtract(logits, targets):
    """pytorch#11752: log-sum-exp rounded to the input dtype before the target logit is subtracted."""
    top = logits.max(dim=1).values
    lse = top + torch.log(torch.exp(logits - top.unsqueeze(1)).sum(dim=1))
    return lse - logits[torch.arange(logits.shape[0]), targets]


def flatten_ignoring_layout(logits, targets):
    """(N, C, d1, ...) reshaped straight to (-1, C), mixing classes with positions (right for 2-D only)."""
    rows = logits.reshape(-1, logits.shape[1])  # the class dimension must be moved last first
    return F.cross_entropy(rows, targets.reshape(-1), reduction="none").reshape(targets.shape)


flatten_ignoring_layout.k_dimensional = True


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32 for 16-bit and float32 inputs, float64 for float64: a sound kernel's accumulator."""
    return x.double() if x.dtype == torch.float64 else x.float()


def low_precision_batch_mean(logits, targets):
    """Sound per-row losses, averaged by a running sum over rows in the input dtype.

    Right at 3 rows; at thousands the float16 sum stalls or overflows and a bfloat16 one
    stalls (256 + 1 = 256), so only many-row batches show it.
    """
    losses = F.cross_entropy(_wide(logits), targets, reduction="none").to(logits.dtype)
    total = torch.zeros((), dtype=logits.dtype)
    for loss in losses:
        total = total + loss
    return total / losses.numel()


def blocked_positions(logits, targets):
    """(N, C, d1, ...) logits: a vectorized path for 16 or more positions whose 16th lane of
    every block reads the 15th lane's normalizer (cf. pytorch#158310: wrong only from 16 positions)."""
    x = _wide(logits)
    top = x.max(dim=1).values  # (N, d1, ...)
    log_sum = torch.log(torch.exp(x - top.unsqueeze(1)).sum(dim=1))
    picked = x.gather(1, targets.unsqueeze(1)).squeeze(1)
    loss = (top - picked).reshape(logits.shape[0], -1)
    norm = log_sum.reshape(logits.shape[0], -1)
    if norm.shape[1] >= 16:
        lanes = norm[:, 15::16].shape[1]
        norm, loss = norm.clone(), loss.clone()
        loss[:, 15::16] += top.reshape(loss.shape)[:, 14::16][:, :lanes] - top.reshape(loss.shape)[:, 15::16]
        norm[:, 15::16] = norm[:, 14::16][:, :lanes]
    return (loss + norm).reshape(targets.shape).to(logits.dtype)


blocked_positions.k_dimensional = True


def drops_last_class_odd_wide(logits, targets):
    """A row-per-warp kernel whose strided loop skips the last class of odd widths above 512
    (cf. pytorch#147284: wrong only for odd widths between 513 and 1023)."""
    width = logits.shape[1]
    x = _wide(logits)
    top = x.max(dim=1, keepdim=True).values
    summed = x[:, : width - 1] if width > 512 and width % 2 else x
    log_sum = torch.log(torch.exp(summed - top).sum(dim=1))
    return ((top.squeeze(1) - x[torch.arange(x.shape[0]), targets]) + log_sum).to(logits.dtype)


def ignores_strides(logits, targets):
    """Reads the logits' storage as if rows were contiguous (a kernel handed data_ptr() alone)."""
    n, c = logits.shape
    raw = logits.as_strided((n, c), (c, 1), logits.storage_offset())
    return F.cross_entropy(_wide(raw), targets, reduction="none").to(logits.dtype)


# name → the dtypes where the bug bites (check must flag it there)
BUG_CLASSES = {
    "no_max_shift": ("float16", "bfloat16", "float32", "float64"),
    "shift_by_mean": ("float16", "bfloat16", "float32", "float64"),
    "shift_by_target": ("float16", "bfloat16", "float32", "float64"),
    "clamp_probability": ("float16", "bfloat16", "float32", "float64"),
    "epsilon_in_log": ("bfloat16", "float32", "float64"),
    "one_hot_product": ("float16", "bfloat16", "float32", "float64"),
    "low_precision_running_sum": ("float16", "bfloat16"),
    "low_precision_tile_sums": ("float16", "bfloat16"),
    "ties_dropped": ("float16", "bfloat16", "float32", "float64"),
    "silent_bfloat16": ("float16", "float32", "float64"),
    "finite_mask_sentinel": ("float16", "bfloat16", "float32", "float64"),
    "rounded_lse_then_subtract": ("float16", "bfloat16", "float32", "float64"),
    "flatten_ignoring_layout": ("float16", "bfloat16", "float32", "float64"),  # layout regime only
    "low_precision_batch_mean": ("float16", "bfloat16"),  # batches of thousands of rows
    "blocked_positions": ("float16", "bfloat16", "float32", "float64"),  # layout, 16 positions or more
    "drops_last_class_odd_wide": ("float32", "float64"),  # odd widths 513-1023
    "ignores_strides": ("float16", "bfloat16", "float32", "float64"),  # non-contiguous logits
}
