"""What an implementation's output should be on a case: oracle values and allowances, per quantity.

``Expectations(case)`` computes, once per case and on first use, what each kind of output
is graded against: the per-sample losses or their reduction (sum, mean) under the options
an implementation was called with, or the softmax family per element; each certified and
correctly rounded to the output's dtype, with the stability allowance of a computation
carried out at least at the precision of the wider of the logits' and the output's
dtypes and rounded once (harness.grading.allowance; issue 14).

Plain cross entropy in the logits' own dtype keeps the original allowance
(harness.grading.verdicts.allowance), so records of plain runs do not change.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from harness import oracle
from harness.formats import FORMATS, Format
from harness.grading.allowance import family_allowance, gradient_allowance, loss_allowance, reduction_allowance
from harness.grading.verdicts import allowance
from harness.oracle.family import OracleArray, family
from harness.oracle.gradient import gradient
from harness.oracle.losses import loss_values, reduced_value
from harness.oracle.options import LossOptions
from strategies import Case
from strategies.contract import Contract

__all__ = ["Expectations", "Expected"]


@dataclass(frozen=True)
class Expected:
    """What one output is graded against, element by element (flattened, row-major).

    ``values``: OracleValues or an OracleArray; ``allowed``: allowance per element (in the
    output's units: nats for losses); ``special``: elements whose input holds +inf or NaN
    (no finite answer is owed there); ``accept_nonfinite``: elements where an overflow to
    inf is acceptable (a reduction whose exact terms overflow the dtype); ``reduction``:
    none, sum or mean; ``elements``: columns per row (C for the family's (N, C) outputs, else 1).
    """

    values: object
    allowed: np.ndarray
    special: np.ndarray
    accept_nonfinite: np.ndarray | None
    reduction: str
    elements: int = 1


def _special_rows(rows: torch.Tensor, softcap: float | None) -> np.ndarray:
    """Rows holding NaN (or +inf, unless soft-capping maps it to the cap): no finite answer exists there."""
    bad = torch.isnan(rows)
    if softcap is None:
        bad |= torch.isposinf(rows)
    return bad.any(dim=1).numpy()


class Expectations:
    """Oracle values and allowances for one case, computed lazily and cached by (contract, reduction, dtype)."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.seconds = 0.0
        self._cache: dict[tuple, Expected] = {}
        self._samples: dict[tuple, list] = {}

    def _timed(self, compute):
        start = time.perf_counter()
        try:
            return compute()
        finally:
            self.seconds += time.perf_counter() - start

    # -- inputs of the oracle -------------------------------------------------------------

    def _row_targets(self, contract: Contract | None) -> torch.Tensor | None:
        if contract is not None and contract.probs is not None:
            return None
        targets = self.case.row_targets
        return contract.targets_for(targets) if contract is not None else targets

    def _per_sample(self, contract: Contract | None, fmt: Format) -> list[oracle.OracleValue]:
        key = (_key(contract), fmt.name)
        if key not in self._samples:
            options = _per_sample_options(contract)
            probs = contract.probs if contract is not None else None
            rows, targets = self.case.row_logits, self._row_targets(contract)
            self._samples[key] = self._timed(lambda: loss_values(rows, targets, probs, options, fmt))
        return self._samples[key]

    # -- what an output is graded against -------------------------------------------------

    def loss(self, contract: Contract | None, reduction: str, fmt_out: Format) -> Expected:
        """Cross entropy under ``contract`` (None: plain), reduced by ``reduction``, in ``fmt_out``."""
        key = ("loss", _key(contract), reduction, fmt_out.name)
        if key not in self._cache:
            self._cache[key] = self._loss(contract, reduction, fmt_out)
        return self._cache[key]

    def family(self, op: str, fmt_out: Format) -> Expected:
        """log_softmax, softmax (per element) or logsumexp (per row) of the case's (N, C) logits."""
        key = ("family", op, fmt_out.name)
        if key not in self._cache:
            rows = self.case.logits
            values: OracleArray = self._timed(lambda: family(op, rows, fmt_out))
            allowed = family_allowance(op, rows, self.case.format, fmt_out)
            special = _special_rows(rows, None)
            columns = 1 if op == "logsumexp" else rows.shape[1]
            special = np.repeat(special, columns)
            self._cache[key] = Expected(values, allowed.reshape(-1), special, None, "none", columns)
        return self._cache[key]

    def gradient(self, contract: Contract | None, reduction: str, upstream: torch.Tensor, fmt_out: Format) -> Expected:
        """The gradient of the back-propagated loss with respect to the logits, per element, in ``fmt_out``.

        ``upstream``: the upstream gradients the output was back-propagated with, as the
        implementation received them (float64): per sample (the targets' shape) for
        reduction "none", one value for "sum" and "mean". Rows are those of
        ``Case.row_logits`` (N·d1·…·dk rows of C for K-dimensional cases); elements are
        numbered row-major. The allowance is harness.grading.allowance.gradient_allowance.
        """
        up = upstream.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        key = ("grad", _key(contract), reduction, up.numpy().tobytes(), fmt_out.name)
        if key not in self._cache:
            self._cache[key] = self._gradient(contract, reduction, up, fmt_out)
        return self._cache[key]

    def _gradient(self, contract: Contract | None, reduction: str, up: torch.Tensor, fmt_out: Format) -> Expected:
        rows, targets = self.case.row_logits, self._row_targets(contract)
        probs = contract.probs if contract is not None else None
        options = LossOptions(**{**_fields(_per_sample_options(contract)), "reduction": reduction})
        n_rows, n = rows.shape
        upstream = up if reduction == "none" else up[0]
        values: OracleArray = self._timed(lambda: gradient(rows, targets, probs, options, upstream, fmt_out))
        live = np.ones(n_rows, dtype=bool) if targets is None else (targets != options.ignore_index).numpy()
        if reduction == "none":
            factors = up.numpy().copy()
        elif reduction == "sum":
            factors = np.full(n_rows, float(up[0]))
        else:
            if probs is not None:
                denominator = float(n_rows)
            else:
                weights = options.class_weights(n)
                denominator = math.fsum(weights[t] for t in targets[torch.from_numpy(live)].tolist())
            # a mean over no weight is 0/0: the oracle's rows are 0 (no row contributes), NaN accepted
            factors = np.full(n_rows, float(up[0]) / denominator if denominator else 0.0)
        no_weight = reduction == "mean" and probs is None and not denominator
        factors = np.where(live, factors, 0.0)
        with np.errstate(invalid="ignore", over="ignore"):
            allowed = gradient_allowance(rows, targets, probs, options, factors, self.case.format, fmt_out)
        special_rows = _special_rows(rows, options.softcap)
        if options.softcap is None:  # only −inf: the forward is NaN too (−inf − (−inf))
            special_rows |= torch.isneginf(rows).all(dim=1).numpy()
        special_rows &= live
        # a zero upstream times a NaN row: the oracle's 0 or the NaN of 0 · NaN (the forward is NaN there)
        zero_times_nan = special_rows & (factors == 0)
        special = np.repeat(special_rows & ~zero_times_nan, n)
        overflow = _gradient_overflow(rows, targets, probs, options, factors, self.case.format) & live
        accept_rows = zero_times_nan | overflow | no_weight
        accept = np.repeat(accept_rows, n) if accept_rows.any() else None
        return Expected(values, np.nan_to_num(allowed, nan=math.inf).reshape(-1), special, accept, reduction, n)

    def _loss(self, contract: Contract | None, reduction: str, fmt_out: Format) -> Expected:
        case, fmt_in = self.case, self.case.format
        values = self._per_sample(contract, fmt_out)
        exact = np.array([v.exact for v in values])
        rows, targets = case.row_logits, self._row_targets(contract)
        probs = contract.probs if contract is not None else None
        options = _per_sample_options(contract)
        live = np.ones(len(values), dtype=bool)
        if targets is not None:
            live = (targets != options.ignore_index).numpy()
        special = _special_rows(rows, options.softcap) & live
        plain = contract is None or (options.plain and probs is None and not contract.ignored)
        if plain and fmt_out.name == fmt_in.name:
            per_sample = allowance(exact, case.n_classes, fmt_in)
        else:
            per_sample = loss_allowance(rows, targets, probs, options, exact, fmt_in, fmt_out)
        overflows = _intermediate_overflow(rows, options, fmt_in, fmt_out) & live
        if reduction == "none":
            return Expected(values, per_sample, special, overflows if overflows.any() else None, "none")
        if plain and reduction == "mean" and fmt_out.name == fmt_in.name:
            return self._plain_mean(values, exact, special, fmt_out)
        reduced_options = LossOptions(**{**_fields(options), "reduction": reduction})
        value = self._timed(lambda: reduced_value(rows, targets, probs, reduced_options, fmt_out))
        denominator = None
        if reduction == "mean":
            if probs is not None:
                denominator = float(len(values))
            else:
                weights = options.class_weights(case.n_classes)
                denominator = float(sum(weights[t] for t in targets[torch.from_numpy(live)].tolist()))
        allowed = reduction_allowance(per_sample, exact, value.exact, denominator, fmt_in, fmt_out)
        with np.errstate(over="ignore"):
            total = float(np.abs(exact).sum())
        overflow = any(math.isinf(v.value) for v in values) or total > fmt_out.max_finite or bool(overflows.any())
        return Expected([value], np.array([allowed]), special.any(keepdims=True), np.array([overflow]), reduction)

    def _plain_mean(self, values, exact: np.ndarray, special: np.ndarray, fmt: Format) -> Expected:
        """The mean of plain per-sample losses, graded as it always was (README "Verdicts")."""
        case = self.case
        mean = self._timed(lambda: oracle.mean_loss(case.row_logits, case.row_targets))
        n = len(values)
        with np.errstate(over="ignore"):
            per_row = allowance(exact, case.n_classes, fmt).mean()
            allowed = per_row + fmt.unit_roundoff * math.log2(max(n, 1) * 2) * np.abs(exact).mean()
            total = float(np.abs(exact).sum())
        overflow = any(math.isinf(v.value) for v in values) or total > fmt.max_finite
        return Expected([mean], np.array([allowed]), special.any(keepdims=True), np.array([overflow]), "mean")


def _intermediate_overflow(rows: torch.Tensor, options: LossOptions, fmt_in: Format, fmt_out: Format) -> np.ndarray:
    """Samples where a term every usual formula computes overflows the working precision, so inf is acceptable.

    The working precision is float32 for 16/32-bit dtypes, float64 for float64. The terms:
    label smoothing's Σ_j w_j A_j (torch sums it before scaling by ε / C) and z-loss's lse².
    """
    working = FORMATS["float64" if max(fmt_in.precision, fmt_out.precision) > 24 else "float32"]
    n_rows = rows.shape[0]
    if options.label_smoothing == 0.0 and options.z_loss == 0.0:
        return np.zeros(n_rows, dtype=bool)
    x = rows.detach().to(device="cpu", dtype=torch.float64)
    if options.softcap is not None:
        x = options.softcap * torch.tanh(x / options.softcap)
    with np.errstate(over="ignore", invalid="ignore"):
        lse = torch.logsumexp(x, dim=1)
        a = lse.unsqueeze(1) - x
        a = torch.where(torch.isfinite(a), a, 0.0)
        big = torch.zeros(n_rows, dtype=torch.bool)
        if options.label_smoothing:
            w = torch.tensor(options.class_weights(rows.shape[1]), dtype=torch.float64)
            big |= (w * a).sum(dim=1) > working.max_finite
        if options.z_loss:
            big |= (lse * lse) > working.max_finite  # inf counts (nan_to_num would make it the largest float)
    return big.numpy()


def _gradient_overflow(rows, targets, probs, options: LossOptions, factors: np.ndarray, fmt_in: Format) -> np.ndarray:
    """Rows where g' (K + 2 z |lse|), or z-loss's lse², 2 lse or g' lse, overflows the working precision.

    There inf and NaN are acceptable.

    Every usual backward scales a row by the upstream factor times a coefficient before the
    softmax term (torch's nll_loss backward forms −w_t g, then inf − inf is NaN; fused
    kernels form g w_t / W): a product beyond float32's range (float64's for float64
    logits) is inf there even where the exact gradient is finite. K = Σ_j coef_j.
    """
    working = FORMATS["float64" if fmt_in.precision > 24 else "float32"]
    n = rows.shape[1]
    w = np.asarray(options.class_weights(n), dtype=np.float64)
    eps = options.label_smoothing
    with np.errstate(over="ignore", invalid="ignore"):
        if probs is None:
            t = targets.to(torch.int64).numpy()
            safe_t = np.where(t == options.ignore_index, 0, t)
            k = (1 - eps) * w[safe_t] + eps / n * w.sum()
        else:
            y = probs.detach().to(device="cpu", dtype=torch.float64).numpy()
            k = (w * ((1 - eps) * y + eps / n)).sum(axis=1)
        up = np.abs(np.asarray(factors, dtype=np.float64))
        big = np.zeros(len(k), dtype=bool)
        if options.z_loss:
            x = rows.detach().to(device="cpu", dtype=torch.float64)
            if options.softcap is not None:
                x = options.softcap * torch.tanh(x / options.softcap)
            lse = np.abs(np.nan_to_num(torch.logsumexp(x, dim=1).numpy(), nan=0.0, posinf=0.0, neginf=0.0))
            k = k + 2 * options.z_loss * lse
            # autograd of z · lse² forms lse², 2 lse or g lse: inf past the working range
            big |= np.maximum(lse * lse, np.maximum(2.0, up) * lse) > working.max_finite  # NaN compares False
        scale = up * np.abs(k)
    return big | (scale > working.max_finite)


def _fields(options: LossOptions) -> dict:
    return {name: getattr(options, name) for name in options.__dataclass_fields__}


def _per_sample_options(contract: Contract | None) -> LossOptions:
    if contract is None:
        return LossOptions()
    return LossOptions(**{**_fields(contract.options), "reduction": "none"})


def _key(contract: Contract | None) -> tuple:
    return () if contract is None else (tuple(sorted(contract.names)), contract.options, contract.ignored)
