#!/usr/bin/env bash
# Installs the Python peer's environment (.venv-peer/) from PyPI: FastAPI, uvicorn with its
# usual speedups (uvloop, httptools), onnxruntime, numpy. Idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-peer"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import fastapi, uvicorn, uvloop, httptools, onnxruntime, numpy" 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check fastapi "uvicorn[standard]" "onnxruntime>=1.31" numpy
fi
echo "python peer ready: $venv (run: PEER_MODEL_REPOSITORY=DIR $venv/bin/uvicorn --app-dir scripts/python-peer app:app)"
