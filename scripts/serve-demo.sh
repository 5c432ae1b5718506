#!/usr/bin/env bash
# The README's first command: set up ONNX Runtime, build, write the demo model repository,
# start the gateway with configs/serving.toml and send it a few requests. The gateway keeps
# serving until Ctrl-C (set FLYWHEEL_DEMO_EXIT=1 to stop after the requests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-toolchain.sh
scripts/setup-ort.sh
cargo build --release --locked --bin gateway --bin make-model-repo --bin registry
# Where cargo put them: a CARGO_TARGET_DIR set in the user's environment moves the binaries.
bin="${CARGO_TARGET_DIR:-target}/release"
rm -rf var/models   # the demo starts from a fresh repository each run
"$bin"/make-model-repo var/models --heavy

port="${FLYWHEEL_DEMO_PORT:-8000}"
"$bin"/gateway --config configs/serving.toml --listen "127.0.0.1:$port" &
gateway=$!
trap 'kill -TERM $gateway 2>/dev/null; wait $gateway 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null && break
  sleep 0.1
done

show() { echo; echo "\$ $*"; "$@"; echo; }
show curl -s "http://127.0.0.1:$port/v2"
show curl -s "http://127.0.0.1:$port/v2/models/tiny"
show curl -s -i -X POST "http://127.0.0.1:$port/v2/models/tiny/infer" -H 'content-type: application/json' \
  -d '{"id":"demo-1","inputs":[{"name":"input","shape":[2,16],"datatype":"FP32","data":[[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6],[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]]}]}'
show curl -s -X POST "http://127.0.0.1:$port/v2/models/tiny/versions/1/infer" \
  -d '{"inputs":[{"name":"input","shape":[1,16],"datatype":"FP32","data":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}]}'
show curl -s -X POST "http://127.0.0.1:$port/v2/models/tiny/infer" \
  -d '{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}'
show curl -s "http://127.0.0.1:$port/v2/models/tiny/stats"

echo "--- hot swap: publish a new version of tiny into the registry; the gateway loads, checks and"
echo "--- warms it, then routes to it (tiny has no rollout in the config, so the highest version serves)"
show "$bin"/registry --root var/models publish tiny var/models/tiny/1/model.onnx --description "demo re-publish"
for _ in $(seq 50); do
  curl -s "http://127.0.0.1:$port/v2/models/tiny" | grep -q "\"$("$bin"/registry --root var/models list tiny | tail -1 | cut -f1)\"" && break
  sleep 0.1
done
show curl -s -i -X POST "http://127.0.0.1:$port/v2/models/tiny/infer" \
  -d '{"inputs":[{"name":"input","shape":[1,16],"datatype":"FP32","data":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}]}'
show curl -s "http://127.0.0.1:$port/admin/routing"

if [ "${FLYWHEEL_DEMO_EXIT:-0}" = "1" ]; then
  exit 0
fi
echo "gateway serving on http://127.0.0.1:$port (models: tiny, tiny_fixed, multi_io, heavy); Ctrl-C stops it"
wait $gateway
