#!/usr/bin/env bash
# Installs the Triton peer's environment (.venv-triton/) from PyPI: nvidia-pytriton 0.7.0, whose
# wheel carries a runnable `tritonserver` 2.51 with the Python backend (the only Triton server
# reachable from the package registries; it has no ONNX Runtime backend), plus onnxruntime and
# numpy for the Python-backend model in scripts/triton-peer/model.py. Idempotent.
# `bench hotpath` measures this Triton beside the gateway when the folder exists.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-triton"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import pytriton, onnxruntime, numpy" 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "nvidia-pytriton==0.7.0" "onnxruntime>=1.31" numpy
fi
server="$("$venv/bin/python" -c 'import pytriton, pathlib; print(pathlib.Path(pytriton.__file__).parent / "tritonserver")')"
test -x "$server/bin/tritonserver"
# The Python backend looks for its stub beside itself; the wheel keeps one per Python version.
version="$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
install -m 755 "$server/python_backend_stubs/$version/triton_python_backend_stub" "$server/backends/python/"
echo "triton peer ready: $server/bin/tritonserver (python backend, $venv)"
