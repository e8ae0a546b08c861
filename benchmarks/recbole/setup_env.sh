#!/usr/bin/env bash
# Create (or reuse) a virtualenv holding RecBole 1.2.1 for the SASRec benchmark.
#
#   benchmarks/recbole/setup_env.sh [VENV_DIR]
#
# VENV_DIR defaults to ${MP4SR_CACHE_DIR:-$HOME/.cache/mp4sr}/recbole-venv.
# torch==2.13.0 (CPU) is installed FIRST, so that nothing later pulls a CUDA build.
# Idempotent: if the venv already imports recbole 1.2.1 / SASRec with the pinned
# requirements (stamp = sha256 of requirements.txt), it does nothing.
# Needs CPython 3.11 (ray 2.6.3, a recbole 1.2.1 requirement, has no wheels for 3.12+);
# set PYTHON=/path/to/python3.11 to choose the interpreter.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REQ="$HERE/requirements.txt"
VENV="${1:-${MP4SR_CACHE_DIR:-$HOME/.cache/mp4sr}/recbole-venv}"
TORCH_SPEC="torch==2.13.0"
STAMP="$VENV/.mp4sr-recbole-stamp"
want_stamp="$(cat "$REQ" | sha256sum | cut -d' ' -f1) $TORCH_SPEC"

check() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - <<'PY' >/dev/null 2>&1 || return 1
import warnings; warnings.simplefilter("ignore")
import numpy, torch, recbole
assert recbole.__version__ == "1.2.1", recbole.__version__
assert int(numpy.__version__.split(".")[0]) < 2
assert torch.__version__.startswith("2.13.0")
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer
from recbole.quick_start import run_recbole
PY
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ] && check; then
    echo "recbole venv OK: $VENV"
    exit 0
fi

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$pyver" != "3.11" ]; then
    echo "warning: $PYTHON is Python $pyver; the pins were tested on 3.11 (ray 2.6.3 has no wheels for 3.12+)" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating venv $VENV with $PYTHON"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# 1) torch first, alone (the CPU wheel), 2) the pinned RecBole stack.
"${PIP[@]}" install "$TORCH_SPEC"
"${PIP[@]}" install -r "$REQ"
"${PIP[@]}" check || echo "warning: pip check reported conflicts (see above)" >&2

if ! check; then
    echo "error: recbole venv at $VENV does not import recbole 1.2.1 / SASRec" >&2
    "$VENV/bin/python" -c "import recbole.quick_start" || true
    exit 1
fi
echo "$want_stamp" > "$STAMP"
echo "recbole venv ready: $VENV ($("$VENV/bin/python" -c 'import recbole, torch, numpy; print("recbole", recbole.__version__, "torch", torch.__version__, "numpy", numpy.__version__)' 2>/dev/null))"
