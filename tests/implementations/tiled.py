"""Online-softmax cross entropy over tiles of T classes, as fused GPU kernels compute it.

One pass over the class dimension, a tile at a time, keeping a running maximum ``m`` and
a running sum ``s`` of exp(x - m) per row (Milakov & Gimelshein 2018, "Online normalizer
calculation for softmax"). Accumulation is in float32 for float16, bfloat16 and float32
logits (float64 for float64 logits); the loss, (m - x_t) + log(s), is rounded once to the
logits' dtype. Three variants, each at several tile sizes:

- ``sound``: s is rescaled by exp(m_old - m_new) whenever a tile raises the maximum, and
  a row whose maximum is still -inf (every tile so far fully masked) is shifted by 0;
- ``no_rescale``: forgets to rescale s when a later tile raises the maximum, so earlier
  tiles' mass is counted at the old scale (off by about a nat on a random 20k-class row);
- ``no_inf_guard``: no guard for a fully masked leading tile, whose update computes
  exp(-inf - (-inf)) = NaN (flash-attention#1930).

``KERNELS`` names every (variant, tile) function of this module, e.g. ``no_rescale_4096``.
"""

from __future__ import annotations

import torch

__all__ = ["KERNELS", "TILE_SIZES", "VARIANTS", "online_softmax_cross_entropy"]

TILE_SIZES = (1024, 2048, 4096, 8192)
VARIANTS = ("sound", "no_rescale", "no_inf_guard")


def online_softmax_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, *, tile: int, rescale: bool = True, inf_guard: bool = True
) -> torch.Tensor:
    """Per-sample losses (N,) of (N, C) logits over tiles of ``tile`` classes.

    ``rescale=False`` and ``inf_guard=False`` inject the two bugs described above.
    """
    accumulate = torch.float64 if logits.dtype == torch.float64 else torch.float32
    n = logits.shape[0]
    running_max = torch.full((n,), float("-inf"), dtype=accumulate)
    running_sum = torch.zeros(n, dtype=accumulate)
    for block in logits.split(tile, dim=1):
        block = block.to(accumulate)
        new_max = torch.maximum(running_max, block.max(dim=1).values)
        shift = torch.where(torch.isneginf(new_max), 0.0, new_max) if inf_guard else new_max
        block_sum = torch.exp(block - shift.unsqueeze(1)).sum(dim=1)
        scale = torch.exp(running_max - shift) if rescale else 1.0  # rescale: m_old -> m_new
        running_sum = running_sum * scale + block_sum
        running_max = new_max
    target_logit = logits[torch.arange(n), targets].to(accumulate)
    # (m - x_t) first: adding log(s) to a large m before subtracting rounds away the loss (pytorch#11752)
    return ((running_max - target_logit) + torch.log(running_sum)).to(logits.dtype)


def _kernel(variant: str, tile: int):
    options = {"sound": {}, "no_rescale": {"rescale": False}, "no_inf_guard": {"inf_guard": False}}[variant]

    def kernel(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return online_softmax_cross_entropy(logits, targets, tile=tile, **options)

    kernel.__name__ = kernel.__qualname__ = f"{variant}_{tile}"
    kernel.__doc__ = f"Online-softmax cross entropy over tiles of {tile} classes ({variant})."
    return kernel


KERNELS: dict[str, object] = {}
for _variant in VARIANTS:
    for _tile in (128, 512, *TILE_SIZES):
        KERNELS[f"{_variant}_{_tile}"] = globals()[f"{_variant}_{_tile}"] = _kernel(_variant, _tile)
