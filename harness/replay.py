"""Re-run one stored case of a report and show outputs and oracle values bit for bit.

Works from any working directory: a ``file.py:function`` implementation is stored in the
report with its absolute path (harness.calling.loading), and is re-run under the name the
report recorded, so its fresh output is compared with the recorded one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from harness import oracle
from harness.api import with_contract_settings
from harness.calling.caller import DEFAULT_COMPILE_TIMEOUT, DEFAULT_MEMORY_LIMIT_MIB, DEFAULT_TIMEOUT
from harness.calling.loading import load_implementation
from harness.calling.sandbox import WorkerOptions
from harness.campaign.settings import SandboxSettings
from harness.case_text import case_lines
from harness.formats import bit_pattern
from harness.runner import run_case
from reports.store import load_cases, load_manifest, load_records, load_reproducers

__all__ = ["replay_case"]

ORACLE_SHOWN = 16  # per-sample oracle values listed before "..."


def _show(value: float, dtype: torch.dtype) -> str:
    return f"{value!r} ({bit_pattern(torch.tensor(value, dtype=torch.float64).to(dtype))})"


def _implementations(manifest: dict, impl_specs: Sequence[str] | None, options: WorkerOptions):
    if impl_specs:
        return [load_implementation(spec, options) for spec in impl_specs]
    loaded = []
    for entry in manifest["implementations"]:
        spec = entry["name"] if entry["source"] in ("built-in", "python") else entry["source"]
        if entry["source"] == "python":
            continue  # a Python callable given to the API: nothing to load it from
        impl = dataclasses.replace(load_implementation(spec, options), name=entry["name"])
        if "op" in entry:  # a check's implementation, with the contract it was checked against
            options = ",".join(entry["options"]) or "none"
            impl = with_contract_settings(impl, op=entry["op"], options=options, soft_targets=entry["soft_targets"],
                                          output_dtype=entry["output_dtype"])  # fmt: skip
        loaded.append(impl)
    return loaded


def replay_case(report: Path, case_id: str, impl_specs: Sequence[str] | None = None) -> str:
    """Text showing the case, each implementation's fresh and recorded output, and the oracle.

    Small cases show every logit; large ones the positions that decide each shown
    sample's loss (maximum, target, -inf runs, NaN and +inf positions).
    """
    manifest = load_manifest(report)
    stored = load_cases(report)
    if case_id not in stored:
        raise KeyError(f"case {case_id} is not stored in {report}")
    case = stored[case_id]
    saved = manifest.get("settings") or manifest
    sandbox = SandboxSettings(
        float(saved.get("timeout", DEFAULT_TIMEOUT)),
        float(saved.get("compile_timeout", DEFAULT_COMPILE_TIMEOUT)),
        float(saved.get("memory_limit_mib", DEFAULT_MEMORY_LIMIT_MIB)),
        str(saved.get("framework", "auto")),
        bool(saved.get("triton_interpret", False)),
        str(saved.get("device", "cpu")),
    ).validated()  # as the report was made
    implementations = _implementations(manifest, impl_specs, sandbox.worker_options)
    records = load_records(report)
    mine = records[records["case_id"] == case_id]
    recorded = mine.set_index(["impl", "quantity"])
    reproducers = load_reproducers(report)
    if recorded.empty and reproducers is not None:  # a shrunk reproducer: its implementation's output is kept
        kept = reproducers[reproducers["reproducer"] == case_id]
        recorded = kept.assign(quantity=kept.get("quantity", "loss")).set_index(["impl", "quantity"])
    # the quantities the report graded: a check with gradients re-runs the backward too
    quantities = manifest.get("quantities") or (saved.get("quantities") if isinstance(saved, dict) else None)
    quantities = tuple(quantities or ("loss",))
    with sandbox.caller() as caller:
        fresh = run_case(case, implementations, caller=caller, quantities=quantities)
    dtype = case.dtype
    lines = [
        f"case {case_id}  regime {case.regime}  dtype {case.format.name}  shape {tuple(case.logits.shape)}",
        f"targets {case.targets.tolist() if case.n_samples <= 64 else f'{case.n_samples:,} targets'}",
    ]
    worst = max((int(r["sample"]) for r in fresh if r["reduction"] == "none" or r["quantity"] == "grad"), default=0)
    lines.extend(case_lines(case, max(worst, 0)))
    if case.contract is not None:
        lines.append(f"options {case.contract.describe()}; ignored samples {list(case.contract.ignored)}")
    plain = case.contract is None and all(impl.op == "cross_entropy" for impl in implementations)
    if plain:  # otherwise each line's oracle is that implementation's own quantity (op, options)
        per_sample = oracle.evaluate(case.row_logits, case.row_targets)
        shown = ", ".join(
            _show(v.value, dtype) + ("" if v.certified else " UNCERTIFIED") for v in per_sample[:ORACLE_SHOWN]
        )
        more = f", ... ({len(per_sample):,} samples)" if len(per_sample) > ORACLE_SHOWN else ""
        lines.append(f"oracle {shown}{more}")
    for record in fresh:
        grad = record["quantity"] == "grad"
        where = (f"gradient [{record['sample']}, {record['element']}] (upstream {record['upstream']!r})" if grad
                 else f"sample {record['sample']}")  # fmt: skip
        shown_dtype = torch.float64 if not record["output_dtype"] else getattr(torch, record["output_dtype"])
        line = (
            f"{record['impl']} ({record['op']}, {record['reduction']}"
            f"{', ' + record['options'] if record['options'] else ''}): {where} "
            f"output {record['output']!r} ({record['output_bits']}) "
            f"oracle {_show(record['oracle'], shown_dtype)} ulps {record['ulps']:g} outcome {record['outcome']}"
        )
        key = (record["impl"], record["quantity"])
        if key in recorded.index:
            before = str(recorded.loc[key, "output_bits"])
            same = before == record["output_bits"]
            line += "  [same bits as recorded]" if same else f"  [DIFFERS from recorded {before}]"
        lines.append(line)
    return "\n".join(lines)
