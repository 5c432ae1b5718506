#!/usr/bin/env bash
# Installs the real Triton clients the compatibility tests drive, from package registries only:
# - .venv/: Python with the current tritonclient[http,grpc] (grpcio), numpy, pytest, onnxruntime, and pyarrow
#   and DuckDB to read the sample files back, moto's S3-compatible server for the fleet
#   tests, Ray for bring-your-own training on a cluster, websocket-client to drive a browser
#   over the DevTools protocol (PyPI);
# - haproxy (Debian) in front of a fleet of gateways; promtool (Debian's prometheus) for the
#   alert rules; headless Chromium (Debian) for the dashboard test;
# - .tools/perf_analyzer/: the perf_analyzer binary shipped inside the tritonclient==2.35.0
#   manylinux wheel (the current `perf-analyzer` PyPI package is an empty placeholder), with
#   libcudart.so.12 from PyPI's nvidia-cuda-runtime-cu12 (no GPU is used for HTTP) and Debian's
#   libb64-0d (its gRPC client is in the same binary). Idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
tools="$root/.tools/perf_analyzer"

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import tritonclient.http, tritonclient.grpc, numpy, pytest, onnxruntime, pyarrow, duckdb, sklearn, skl2onnx, onnx, moto.server, flask, ray, shap, websocket" 2>/dev/null \
  || [ ! -x "$venv/bin/moto_server" ] || [ ! -x "$venv/bin/ray" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "tritonclient[http,grpc]" numpy pytest "onnxruntime>=1.31" pyarrow duckdb scikit-learn skl2onnx onnx "moto[server]" ray shap websocket-client
fi

# promtool (Debian's prometheus package; no service is started) checks the alert rules.
if ! command -v promtool >/dev/null && command -v apt-get >/dev/null; then
  (apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1) \
    || (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null)
fi

# Chromium (Debian) for the dashboard test in a real browser (headless).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
  (apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1) \
    || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null)
fi
command -v chromium >/dev/null || { echo "chromium is missing and could not be installed (apt-get install chromium)"; exit 1; }

# HAProxy (Debian) for the fleet-behind-a-load-balancer test.
if ! command -v haproxy >/dev/null; then
  if command -v apt-get >/dev/null; then
    (apt-get install -y -qq haproxy >/dev/null 2>&1) || (apt-get update -qq && apt-get install -y -qq haproxy >/dev/null)
  fi
fi
command -v haproxy >/dev/null || { echo "haproxy is missing and could not be installed (apt-get install haproxy)"; exit 1; }

if ! ldconfig -p | grep -q libb64.so.0d; then
  if command -v apt-get >/dev/null; then
    (apt-get install -y -qq libb64-0d >/dev/null 2>&1) || (apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null)
  fi
fi

if [ ! -x "$tools/perf_analyzer" ] || [ ! -e "$tools/lib/libcudart.so.12" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tools/lib"
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux1_x86_64 --python-version 3.11 -d "$tmp" "tritonclient==2.35.0"
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$tmp" "nvidia-cuda-runtime-cu12==12.4.*"
  "$venv/bin/python" - "$tmp" "$tools" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, tools = sys.argv[1], sys.argv[2]
def take(wheel_glob, suffix, dest):
    wheel = glob.glob(os.path.join(tmp, wheel_glob))[0]
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(suffix))
        with z.open(name) as src, open(dest + ".tmp", "wb") as out:
            shutil.copyfileobj(src, out)
    os.chmod(dest + ".tmp", 0o755)
    os.replace(dest + ".tmp", dest)
take("tritonclient-2.35.0-*.whl", "/bin/perf_analyzer", os.path.join(tools, "perf_analyzer"))
take("nvidia_cuda_runtime_cu12-*.whl", "/lib/libcudart.so.12", os.path.join(tools, "lib", "libcudart.so.12"))
PY
fi
missing="$(LD_LIBRARY_PATH="$tools/lib" ldd "$tools/perf_analyzer" | grep "not found" || true)"
if [ -n "$missing" ]; then
  echo "perf_analyzer cannot start; missing libraries:"; echo "$missing"; exit 1
fi
echo "test tools ready: $venv, $tools/perf_analyzer"
