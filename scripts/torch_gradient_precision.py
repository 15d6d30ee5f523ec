"""How precise torch's own backward of cross entropy is, per dtype, against the certified gradient oracle.

    python scripts/torch_gradient_precision.py [--rows 200] [--seed 0]

Runs torch's autograd of plain ``F.cross_entropy(x, t, reduction="none")`` in each dtype
(torch's native op, no upcast) on seeded random rows (2 to 1,000 classes, scales 0.5 to
40 nats, a third made confident with a margin of 6 to 25 nats), once with all upstream
gradients 1 and once with drawn ones (1, 0.5, 0, −2, 1e-3, 1e3 in turn), and prints per
dtype: the share of gradient elements correctly rounded (equal to the oracle's value),
the worst distance in ULPs and whether it sits at a target entry, the worst ratio
error / allowance (harness.grading.allowance.gradient_allowance), the share of elements
over the allowance, and the worst relative error of the target entries p_t − 1 where
1 − p_t lies in [1e-4, 1e-2] (a confident prediction's gradient, issue 15: inaccurate,
not unstable).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.formats import FORMATS, ulp_distance
from harness.grading.allowance import gradient_allowance
from harness.oracle.gradient import gradient
from harness.oracle.options import LossOptions

UPSTREAM = (1.0, 0.5, 0.0, -2.0, 1e-3, 1e3)
CLASS_COUNTS = (2, 10, 100, 1000)


def batches(n_rows: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    per = max(n_rows // len(CLASS_COUNTS), 1)
    for n_classes in CLASS_COUNTS:
        rows = rng.standard_normal((per, n_classes)) * rng.choice([0.5, 5.0, 40.0], size=(per, 1))
        targets = rng.integers(0, n_classes, size=per)
        for i in range(0, per, 3):
            rows[i, targets[i]] = rows[i].max() + rng.uniform(6.0, 25.0)
        out.append((rows, targets))
    return out


def measure(dtype: str, n_rows: int, seed: int, drawn: bool) -> dict:
    fmt = FORMATS[dtype]
    correct = total = over = 0
    worst_ulps = worst_ratio = worst_target_rel = 0.0
    worst_at = ""
    for rows, targets in batches(n_rows, seed):
        x = torch.tensor(rows).to(fmt.dtype)
        t = torch.tensor(targets)
        g = torch.tensor([UPSTREAM[i % len(UPSTREAM)] if drawn else 1.0 for i in range(len(t))]).to(fmt.dtype)
        xg = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(F.cross_entropy(xg, t, reduction="none"), xg, grad_outputs=g)
        x64, g64 = x.to(torch.float64), g.to(torch.float64)
        oracle = gradient(x64, t, None, LossOptions(), g64, fmt)
        allowance = gradient_allowance(x64, t, None, LossOptions(), g64.numpy(), fmt, fmt)
        got = grad.to(torch.float64).numpy()
        reference = torch.from_numpy(oracle.value).to(fmt.dtype)
        ulps = ulp_distance(grad, reference)
        error = np.abs(got - oracle.exact)
        correct += int((ulps == 0).sum())
        total += got.size
        over += int((error > allowance).sum())
        if ulps.max() > worst_ulps:
            i, j = np.unravel_index(int(np.argmax(ulps)), ulps.shape)
            worst_ulps, worst_at = float(ulps.max()), "target" if j == targets[i] else "off-target"
        worst_ratio = max(worst_ratio, float((error / allowance).max()))
        idx = (np.arange(len(t)), targets)
        p_t = torch.softmax(x64, dim=1)[idx].numpy()
        live = (oracle.exact[idx] != 0) & (1 - p_t >= 1e-4) & (1 - p_t <= 1e-2)
        if live.any():
            rel = np.abs(got[idx] - oracle.exact[idx])[live] / np.abs(oracle.exact[idx])[live]
            worst_target_rel = max(worst_target_rel, float(rel.max()))
    return {
        "dtype": dtype,
        "upstream": "drawn" if drawn else "ones",
        "correctly_rounded": correct / total,
        "worst_ulps": worst_ulps,
        "at": worst_at,
        "worst_error/allowance": worst_ratio,
        "over_allowance": over / total,
        "p_t-1_rel_error": worst_target_rel,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = pd.DataFrame([measure(dtype, args.rows, args.seed, drawn) for drawn in (False, True) for dtype in FORMATS])
    with pd.option_context("display.width", 200, "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
