"""Re-run one stored case of a report and show outputs and oracle values bit for bit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from harness import oracle
from harness.calling.caller import DEFAULT_COMPILE_TIMEOUT, DEFAULT_MEMORY_LIMIT_MIB, DEFAULT_TIMEOUT
from harness.calling.loading import load_implementation
from harness.campaign.settings import SandboxSettings
from harness.formats import bit_pattern
from harness.runner import run_case
from reports.store import load_cases, load_manifest, load_records, load_reproducers

__all__ = ["replay_case"]


def _show(value: float, dtype: torch.dtype) -> str:
    return f"{value!r} ({bit_pattern(torch.tensor(value, dtype=torch.float64).to(dtype))})"


def replay_case(report: Path, case_id: str, impl_specs: Sequence[str] | None = None) -> str:
    """Text showing the case, each implementation's fresh and recorded output, and the oracle."""
    manifest = load_manifest(report)
    stored = load_cases(report)
    if case_id not in stored:
        raise KeyError(f"case {case_id} is not stored in {report}")
    case = stored[case_id]
    specs = impl_specs or [impl["name"] if impl["source"] == "built-in" else impl["source"]
                           for impl in manifest["implementations"]]  # fmt: skip
    saved = manifest.get("settings") or manifest
    sandbox = SandboxSettings(
        float(saved.get("timeout", DEFAULT_TIMEOUT)),
        float(saved.get("compile_timeout", DEFAULT_COMPILE_TIMEOUT)),
        float(saved.get("memory_limit_mib", DEFAULT_MEMORY_LIMIT_MIB)),
        str(saved.get("framework", "auto")),
        bool(saved.get("triton_interpret", False)),
        str(saved.get("device", "cpu")),
    ).validated()  # as the report was made
    implementations = [load_implementation(spec, sandbox.worker_options) for spec in specs]
    records = load_records(report)
    recorded = records[records["case_id"] == case_id].set_index("impl")
    reproducers = load_reproducers(report)
    if recorded.empty and reproducers is not None:  # a shrunk reproducer: its implementation's output is kept
        recorded = reproducers[reproducers["reproducer"] == case_id].set_index("impl")
    with sandbox.caller() as caller:
        fresh = run_case(case, implementations, caller=caller)
    dtype = case.dtype
    lines = [
        f"case {case_id}  regime {case.regime}  dtype {case.format.name}  shape {tuple(case.logits.shape)}",
        f"targets {case.targets.tolist()}",
    ]
    if case.logits.numel() <= 64:
        lines.append(f"logits {case.logits.to(torch.float64).tolist()}")
    per_sample = oracle.evaluate(case.row_logits, case.row_targets)
    lines.append(
        "oracle " + ", ".join(_show(v.value, dtype) + ("" if v.certified else " UNCERTIFIED") for v in per_sample)
    )
    for record in fresh:
        line = (
            f"{record['impl']}: sample {record['sample']} output {record['output']!r} ({record['output_bits']}) "
            f"oracle {_show(record['oracle'], dtype)} ulps {record['ulps']:g} outcome {record['outcome']}"
        )
        if record["impl"] in recorded.index:
            before = str(recorded.loc[record["impl"], "output_bits"])
            same = before == record["output_bits"]
            line += "  [same bits as recorded]" if same else f"  [DIFFERS from recorded {before}]"
        lines.append(line)
    return "\n".join(lines)
