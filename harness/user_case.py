"""A user's own input as a Case: a torch.save'd dict, tensors, or a case stored in a report.

``check IMPL --case FILE`` and ``harness.check(fn, case=...)`` grade exactly this input.
Accepted forms:

- a ``Case``;
- a dict ``{"logits": tensor, "targets": tensor}`` (optionally ``"regime"``: a label for
  reports, default ``"user"``), or a ``(logits, targets)`` pair;
- a path to a file holding such a dict, written with ``torch.save`` (read with
  ``weights_only=True``: tensors, not arbitrary objects);
- ``REPORT_DIR:CASE_ID``: a case stored in a report folder (``cases.jsonl``).

Logits are (N, C) or (N, C, d1, ..., dk) in float16, bfloat16, float32 or float64, in
any layout (strides and storage offset are kept); targets are integers of shape (N,) or
(N, d1, ..., dk), each in [0, C).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from harness.calling.layout import copy_like
from harness.formats import FORMATS, format_of
from reports.store import load_cases
from strategies import Case

__all__ = ["CaseError", "load_case"]

USER_REGIME = "user"
KEYS = ("logits", "targets", "regime")
_STORED = re.compile(r"^(?P<folder>.+):(?P<case_id>[0-9a-f]{12})$")


class CaseError(ValueError):
    """An input that cannot be graded; the message is one line (the CLI's exit 2)."""


def _from_tensors(logits: object, targets: object, regime: object = USER_REGIME) -> Case:
    if not isinstance(logits, torch.Tensor):
        raise CaseError(f"logits must be a tensor, got {type(logits).__name__}")
    if not isinstance(targets, torch.Tensor):
        raise CaseError(f"targets must be a tensor, got {type(targets).__name__}")
    try:
        format_of(logits.dtype)
    except ValueError:
        raise CaseError(f"logits must be {', '.join(FORMATS)}, got {logits.dtype}") from None
    if logits.ndim < 2 or 0 in logits.shape:
        raise CaseError(f"logits must be (N, C) or (N, C, d1, ...), none empty, got {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(targets.shape) != expected:
        raise CaseError(f"targets must have shape {expected} for logits {tuple(logits.shape)}, "
                        f"got {tuple(targets.shape)}")  # fmt: skip
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise CaseError(f"targets must be integers, got {targets.dtype}")
    targets = targets.detach().cpu().to(torch.int64).contiguous()
    outside = (targets < 0) | (targets >= logits.shape[1])
    if bool(outside.any()):
        first = int(targets[outside][0])
        raise CaseError(f"target {first} is outside [0, {logits.shape[1]}) (ignore_index is not graded)")
    if not isinstance(regime, str) or not regime:
        raise CaseError(f"regime must be a non-empty string, got {regime!r}")
    return Case(copy_like(logits.detach().cpu()), targets, regime)


def _from_dict(data: dict, where: str) -> Case:
    unknown = sorted(str(k) for k in data if k not in KEYS)
    if unknown:
        raise CaseError(f"{where} has unknown key {unknown[0]!r}; expected {', '.join(KEYS)}")
    missing = [k for k in ("logits", "targets") if k not in data]
    if missing:
        raise CaseError(f"{where} lacks {' and '.join(repr(k) for k in missing)}")
    return _from_tensors(data["logits"], data["targets"], data.get("regime", USER_REGIME))


def _from_report(folder: Path, case_id: str) -> Case:
    try:
        stored = load_cases(folder)
    except (FileNotFoundError, ValueError) as exc:
        raise CaseError(str(exc)) from None
    if case_id not in stored:
        raise CaseError(f"case {case_id} is not stored in {folder}")
    return stored[case_id]


def load_case(spec: object) -> Case:
    """The Case that ``spec`` describes (see the module docstring); CaseError, one line, otherwise."""
    if isinstance(spec, Case):
        return spec
    if isinstance(spec, dict):
        return _from_dict(spec, "the case")
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return _from_tensors(*spec)
    if not isinstance(spec, (str, Path)):
        raise CaseError(f"expected a Case, a dict, (logits, targets), a file or REPORT_DIR:CASE_ID, "
                        f"got {type(spec).__name__}")  # fmt: skip
    text = str(spec)
    stored = _STORED.match(text)
    if stored and Path(stored["folder"]).is_dir():
        return _from_report(Path(stored["folder"]), stored["case_id"])
    path = Path(text)
    if path.is_dir():
        raise CaseError(f"{path} is a folder: name a stored case as {path}:CASE_ID")
    if not path.is_file():
        raise CaseError(f"no case file {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for files it cannot read
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CaseError(f"cannot read {path} with torch.load: {reason}") from None
    if not isinstance(data, dict):
        raise CaseError(f"{path} must hold a dict with 'logits' and 'targets', got {type(data).__name__}")
    return _from_dict(data, str(path))
