#!/usr/bin/env bash
# Set up ce-harness in a virtual environment; afterwards .venv/bin/python runs it.
#
#   bash scripts/setup.sh          # the harness itself
#   bash scripts/setup.sh dev      # plus what the tests and CI need (extras, comma-separated)
#
# With no virtual environment active it creates .venv in the repository (git-ignored),
# so it works where the system Python refuses `pip install` (PEP 668). With one active
# ($VIRTUAL_ENV), it installs there and links .venv to it, so the same commands work.
# torch goes first where it is missing, pinned (TORCH_SPEC, default torch==2.13.0): an
# unpinned torch pulls a multi-GB CUDA build. This project's machines serve the CPU build
# of that pin from a local wheel; elsewhere set TORCH_INDEX_URL, for instance to
# https://download.pytorch.org/whl/cpu. PYTHON chooses the interpreter that creates .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}

if [ -n "${VIRTUAL_ENV:-}" ] && [ "$(cd "$VIRTUAL_ENV" && pwd -P)" != "$(pwd -P)/.venv" ]; then
  venv=$VIRTUAL_ENV
  if [ -e .venv ] && [ ! -L .venv ]; then
    echo "setup.sh: a virtual environment is active ($venv) but ./.venv is another one; deactivate or remove ./.venv" >&2
    exit 2
  fi
  ln -sfn "$venv" .venv
else
  venv=.venv
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv || {
      echo "setup.sh: could not create .venv with ${PYTHON:-python3} -m venv (on Debian/Ubuntu: apt-get install python3-venv)" >&2
      exit 2
    }
  fi
fi
python="$venv/bin/python"
pip=("$python" -m pip install --quiet --disable-pip-version-check)

if ! "$python" -c "import torch" >/dev/null 2>&1; then
  "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
"${pip[@]}" -e ".${extras:+[$extras]}"
echo "setup.sh: ce-harness installed in $venv (run it with .venv/bin/python -m harness)" >&2
