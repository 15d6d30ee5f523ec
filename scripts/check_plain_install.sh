#!/usr/bin/env bash
# A plain, non-editable `pip install .` into a bare virtual environment, used from another
# folder: audit, audit --precision, demo and check must all run and write their files.
# Run by .ci/run; it takes a minute or two (torch comes from pip's cache or local wheel).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"${PYTHON:-python3}" -m venv "$work/venv"
py="$work/venv/bin/python"
pip=("$py" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
"${pip[@]}" "$repo"
cd "$work"
"$py" - <<'PY'
import harness, reports, strategies
for module in (harness, reports, strategies):
    assert "site-packages" in module.__file__, f"{module.__name__} imported from {module.__file__}, not the install"
PY
small=(--examples 2 --max-classes 64 --quiet)
"$py" -m harness audit "${small[@]}" --shrink-seconds 0 --out audit
"$py" -m harness audit --precision "${small[@]}" --shrink-seconds 0 --out precision
"$py" -m harness demo --out demo >/dev/null
"$py" -m harness check stable --dtype float32 "${small[@]}" --out check
for file in audit/report.html audit/manifest.json precision/precision.md precision/report.html demo/demo.html \
            demo/demo-overflow.png demo/demo-underflow.png demo/demo-dominant.png check/records.csv; do
  test -s "$file" || { echo "check_plain_install: $file is missing" >&2; exit 1; }
done
for manifest in audit/manifest.json precision/manifest.json check/manifest.json; do
  grep -q '"status": "complete"' "$manifest" || { echo "check_plain_install: $manifest is not complete" >&2; exit 1; }
done
echo "check_plain_install: audit, audit --precision, demo and check ran from a plain install" >&2
