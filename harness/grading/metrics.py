"""Error metrics and outcome categories for one implementation's output against the oracle."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from harness.formats import bit_pattern, format_of, ulp_distance
from harness.grading.verdicts import VERDICTS, Policy, judge
from harness.oracle import OracleValue

__all__ = ["ACCEPTED_OUTCOMES", "FAILURE_OUTCOMES", "OUTCOMES", "OUTCOME_MEANINGS", "accept_outcomes", "measure"]

# Outcome categories, from best to worst, each with what it means (reports show these
# words). Numeric outcomes compare a returned value with the oracle; the accepted ones
# are non-finite answers the verdicts accept (issue 17: an ok verdict never carries a
# failure's name); the last ones say the implementation gave no value to compare.
OUTCOME_MEANINGS: dict[str, str] = {
    "exact": "equal to the correctly rounded loss (NaN for NaN, inf for inf)",
    "accepted_nan": "NaN where the exact limit is +inf (a +inf logit), or a mean whose rows overflow: accepted",
    "accepted_inf": "inf where a +inf or NaN logit makes the loss NaN, or a mean whose rows overflow: accepted",
    "finite_error": "finite, and off by at least one ULP",
    "uncertified": "the oracle could not decide the rounding within its cap: not graded",
    "missing_nonfinite": "the oracle is inf or NaN, the output is finite",
    "spurious_inf": "the output is infinite where the oracle is not",
    "spurious_nan": "the output is NaN where the oracle is not",
    "nondeterministic": "a second call on the same input answered differently",
    "mutated_input": "it wrote into one of its inputs (the message names which)",
    "bad_output": "not a tensor, or the wrong shape, dtype or device",
    "timeout": "no answer within the per-call timeout (the sandbox was killed)",
    "killed_memory": "the sandbox's resident memory passed the limit (it was killed)",
    "crashed": "the sandbox died: a signal, a hard exit, sys.exit (the message says which)",
    "raised": "the implementation raised an exception (message kept)",
}
OUTCOMES: tuple[str, ...] = tuple(OUTCOME_MEANINGS)
ACCEPTED_OUTCOMES = frozenset({"accepted_nan", "accepted_inf"})
# every outcome after "uncertified" is a failure, including any added later at the end
FAILURE_OUTCOMES = frozenset(OUTCOMES[OUTCOMES.index("uncertified") + 1 :])
_SEVERITY = {name: rank for rank, name in enumerate(OUTCOMES)}
# a non-finite answer the verdict accepts is renamed; it is no spurious result
_ACCEPTED_AS = {"spurious_nan": "accepted_nan", "spurious_inf": "accepted_inf"}


def accept_outcomes(outcomes: np.ndarray, verdicts: np.ndarray) -> np.ndarray:
    """Outcomes with each spurious inf/NaN that the verdict accepts (``ok``) renamed accepted_inf/accepted_nan."""
    renamed = np.asarray(outcomes, dtype=object).copy()
    for failure, accepted in _ACCEPTED_AS.items():
        renamed[(renamed == failure) & (np.asarray(verdicts) == "ok")] = accepted
    return renamed.astype(str)


def _outcomes(out: np.ndarray, ref: np.ndarray, ulps: np.ndarray, certified: np.ndarray) -> np.ndarray:
    out_nan, ref_nan = np.isnan(out), np.isnan(ref)
    out_inf, ref_inf = np.isinf(out), np.isinf(ref)
    return np.select(
        [
            ~certified,
            ulps == 0,
            out_nan,
            out_inf,
            ref_nan | ref_inf,
        ],
        ["uncertified", "exact", "spurious_nan", "spurious_inf", "missing_nonfinite"],
        default="finite_error",
    )


def _oracle_arrays(oracle) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, exact values, certified) of a sequence of OracleValue, or of an OracleArray (flattened)."""
    if hasattr(oracle, "certified") and isinstance(oracle.certified, np.ndarray):
        return (np.asarray(oracle.value, dtype=np.float64).reshape(-1),
                np.asarray(oracle.exact, dtype=np.float64).reshape(-1), oracle.certified.reshape(-1))  # fmt: skip
    return (np.array([v.value for v in oracle], dtype=np.float64),
            np.array([v.exact for v in oracle], dtype=np.float64),
            np.array([v.certified for v in oracle], dtype=bool))  # fmt: skip


def measure(
    output: torch.Tensor,
    oracle: Sequence[OracleValue],
    dtype: torch.dtype,
    *,
    allowed: np.ndarray | None = None,
    special_input: np.ndarray | None = None,
    accept_nonfinite: np.ndarray | None = None,
    policy: Policy = Policy(),
) -> dict:
    """Metrics and verdict of the worst element of ``output`` (any shape, flattened) against ``oracle``.

    ``oracle``: a sequence of OracleValue, or an OracleArray of the same number of
    elements. ``dtype`` is the dtype the output is graded in; ULPs are counted there. ``allowed`` is the stability
    allowance per sample (default: infinite) and ``special_input`` flags rows holding
    +inf or NaN. Returns a flat dict: output, output_bits, oracle, exact, abs_error,
    rel_error, ulps, bits, outcome, verdict, allowance, allowance_ratio, sample.
    """
    fmt = format_of(dtype)
    computed = output.detach().cpu().reshape(-1).to(fmt.dtype)
    values, exact, certified = _oracle_arrays(oracle)
    reference = torch.from_numpy(values).to(fmt.dtype)
    ulps = ulp_distance(computed, reference)
    out = computed.to(torch.float64).numpy()
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        same_special = (np.isnan(out) & np.isnan(exact)) | (np.isinf(out) & (out == exact))
        abs_error = np.where(same_special, 0.0, np.abs(out - exact))
        abs_error = np.where(np.isnan(abs_error), math.inf, abs_error)
        rel_error = np.where(abs_error == 0, 0.0, abs_error / np.abs(exact))
        rel_error = np.where(np.isnan(rel_error), math.inf, rel_error)
    outcomes = _outcomes(out, reference.to(torch.float64).numpy(), ulps, certified)
    allowed = np.full(len(out), math.inf) if allowed is None else np.broadcast_to(np.ravel(allowed), out.shape)
    special_input = np.zeros(len(out), dtype=bool) if special_input is None else np.ravel(special_input)
    accept_nonfinite = None if accept_nonfinite is None else np.broadcast_to(np.ravel(accept_nonfinite), out.shape)
    verdicts, ratio = judge(outcomes, ulps, abs_error, allowed, out, special_input, policy, accept_nonfinite)
    outcomes = accept_outcomes(outcomes, verdicts)
    severity = np.array([_SEVERITY[o] for o in outcomes])
    verdict_rank = np.array([VERDICTS.index(v) for v in verdicts])
    worst = int(np.lexsort((ulps, np.nan_to_num(ratio, posinf=1e300), severity, verdict_rank))[-1])
    return {
        "sample": worst,
        "output_bits": bit_pattern(computed[worst]),
        "output": float(out[worst]),
        "oracle": float(reference[worst]),
        "exact": float(exact[worst]),
        "abs_error": float(abs_error[worst]),
        "rel_error": float(rel_error[worst]),
        "ulps": float(ulps[worst]),
        "bits": float(np.log2(1.0 + ulps[worst])),
        "outcome": str(outcomes[worst]),
        "verdict": str(verdicts[worst]),
        "allowance": float(allowed[worst]),
        "allowance_ratio": float(ratio[worst]),
    }
