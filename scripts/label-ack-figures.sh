#!/usr/bin/env bash
# /feedback with labels acknowledged from the store vs from the local disk, side by side: one
# S3-compatible server (moto) on loopback, two gateways over one registry in it (label_ack
# "store" and "disk"), wrk posting 10 labels per request at each concurrency.
#   scripts/label-ack-figures.sh <bin dir with gateway, registry, make-model-repo> [seconds]
set -euo pipefail
bin=${1:?folder with release binaries}
secs=${2:-10}
root="$(cd "$(dirname "$0")/.." && pwd)"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
export FLYWHEEL_ORT_LIBRARY="$root/.ort/lib" FLYWHEEL_LOG=warn
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 AWS_ALLOW_HTTP=true
s3_port=19700
"$root/.venv/bin/moto_server" -H 127.0.0.1 -p $s3_port >/dev/null 2>&1 & pids+=($!)
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port
until curl -s -X PUT "$AWS_ENDPOINT_URL/flywheel" >/dev/null 2>&1; do sleep 0.2; done
url=s3://flywheel/acks
"$bin/make-model-repo" "$work/local" >/dev/null
"$bin/registry" --root $url publish tiny "$work/local/tiny/1/model.onnx" --alias champion >/dev/null
cat >"$work/labels.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  local parts = {}
  for i = 1, 10 do parts[i] = string.format('{"id":"%d-%d-%d","label":%d}', math.random(1e9), counter, i, i % 2) end
  return wrk.format("POST", nil, {["content-type"] = "application/json"}, '{"labels":[' .. table.concat(parts, ",") .. ']}')
end
LUA
port=19801
for mode in store disk; do
  cat >"$work/$mode.toml" <<EOT
[models.tiny.rollout]
champion = "champion"
[registry]
cache_dir = "$work/copy-$mode"
[fleet]
replica = "$mode"
[sampling]
dir = "$work/samples-$mode"
label_ack = "$mode"
EOT
  "$bin/gateway" --config "$work/$mode.toml" --model-repository $url --listen 127.0.0.1:$port >"$work/$mode.out" 2>"$work/$mode.err" &
  pids+=($!)
  until grep -q listening "$work/$mode.out" 2>/dev/null; do sleep 0.1; done
  eval "port_$mode=$port"
  port=$((port + 1))
done
echo "mode c req/s labels/s p50 p99"
for c in 1 8 64; do
  for mode in store disk; do
    p=$(eval echo \$port_$mode)
    out=$(wrk -t$(( c < 2 ? 1 : 2 )) -c$c -d${secs}s --latency -s "$work/labels.lua" "http://127.0.0.1:$p/v2/models/tiny/feedback")
    rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
    p50=$(awk '$1=="50%"{print $2}' <<<"$out")
    p99=$(awk '$1=="99%"{print $2}' <<<"$out")
    errs=$(awk '/Non-2xx/{print $5}' <<<"$out")
    echo "$mode $c $rps $(awk -v r="$rps" 'BEGIN{printf "%.0f", r*10}') $p50 $p99 ${errs:+non-2xx=$errs}"
  done
done
