#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with every optional part.
# torch is installed first, pinned, so that the project's dependencies never pull another build of it.
# Which build: pip's index decides (PyPI's Linux wheel is the CUDA one); a CPU-only machine asks for the
# CPU build with MP4SR_TORCH_INDEX=https://download.pytorch.org/whl/cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MP4SR_VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.mp4sr-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet ${MP4SR_TORCH_INDEX:+--index-url "$MP4SR_TORCH_INDEX"} "torch==2.13.0"
  "$VENV/bin/pip" install --quiet -e ".[all]"
  echo "$want" > "$stamp"
fi
