#!/usr/bin/env bash
# Fleet figures on one machine: an S3-compatible server (moto), N gateways over one registry in
# it, HAProxy in front (configs/haproxy.cfg, ports rewritten), wrk as the client.
#   - publish-to-all-replicas time over 20 publishes (alias moved -> every replica answers with
#     the new version);
#   - throughput through HAProxy with 1, 2 and 3 replicas, and one gateway without a balancer;
#   - controller lease failover time (kill -9 of the holder -> another holds it);
#   - object-store requests per replica at rest.
#
#   scripts/fleet-figures.sh <bin dir with gateway, registry, make-model-repo> [poll_ms] [ttl_ms]
set -euo pipefail
bin=${1:?folder with release binaries}
poll_ms=${2:-2000}
ttl_ms=${3:-10000}
root="$(cd "$(dirname "$0")/.." && pwd)"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
export FLYWHEEL_ORT_LIBRARY="$root/.ort/lib" FLYWHEEL_LOG=warn
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 AWS_ALLOW_HTTP=true
s3_port=19500
"$root/.venv/bin/moto_server" -H 127.0.0.1 -p $s3_port >/dev/null 2>&1 & pids+=($!)
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port
until curl -s -X PUT "$AWS_ENDPOINT_URL/flywheel" >/dev/null 2>&1; do sleep 0.2; done
url=s3://flywheel/figures
"$bin/make-model-repo" "$work/local" >/dev/null
"$bin/registry" --root $url publish tiny "$work/local/tiny/1/model.onnx" --alias champion >/dev/null
cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"inputs":[{"name":"input","shape":[1,16],"datatype":"FP32","data":[[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6]]}]}'
LUA
body='{"inputs":[{"name":"input","shape":[1,16],"datatype":"FP32","data":[[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]]}]}'

start_gateway() { # index port extra-config
  local i=$1 port=$2
  cat >"$work/gw$i.toml" <<EOF
controller_interval_ms = 1000
[models.tiny.rollout]
champion = "champion"
$3
[server]
drain_delay_ms = 1000
[registry]
cache_dir = "$work/copy$i"
poll_interval_ms = $poll_ms
[fleet]
replica = "r$i"
lease_ttl_ms = $ttl_ms
EOF
  "$bin/gateway" --config "$work/gw$i.toml" --model-repository $url --listen 127.0.0.1:$port >"$work/gw$i.out" 2>"$work/gw$i.err" &
  pids+=($!)
  eval "gw_pid_$i=$!"
  until grep -q listening "$work/gw$i.out" 2>/dev/null; do sleep 0.1; done
}
version_at() { curl -s -D - -o /dev/null -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$1/v2/models/tiny/infer" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-model-version"{print $2}'; }
now_ms() { date +%s%3N; }

for i in 0 1 2; do start_gateway $i $((19601 + i)) ""; done

echo "== publish to all 3 replicas (poll_interval_ms = $poll_ms), 20 publishes"
times=()
for n in $(seq 1 20); do
  # A random moment within the poll interval: publishes are not in step with the polls.
  sleep "$(awk -v p="$poll_ms" -v r="$RANDOM" 'BEGIN {printf "%.3f", p * r / 32768 / 1000}')"
  v=$("$bin/registry" --root $url publish tiny "$work/local/tiny/1/model.onnx" | awk '{print $4}')
  t0=$(now_ms)
  "$bin/registry" --root $url alias set tiny champion "$v" >/dev/null
  for port in 19601 19602 19603; do until [ "$(version_at $port)" = "$v" ]; do sleep 0.02; done; done
  times+=($(( $(now_ms) - t0 )))
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "median %d ms, max %d ms (n=%d)\n", a[int((NR+1)/2)], a[NR], NR}'

echo "== object-store requests per replica at rest (60 s)"
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk '$1=="flywheel_registry_store_requests_total"{print $2}'; }
a=$(metric 19601); sleep 60; b=$(metric 19601)
echo "$(echo "($b - $a) / 60" | bc -l | xargs printf '%.2f') requests/s (one model, no rollout)"

echo "== throughput (wrk -t2 -c64 -d10s, 1-row JSON, everything on this machine's 2 cores)"
wrk_rps() { wrk -t2 -c64 -d10s -s "$work/post.lua" "$1" | awk '/Requests\/sec/{print $2}'; }
echo "one gateway, no balancer: $(wrk_rps http://127.0.0.1:19601/v2/models/tiny/infer) req/s"
for n in 1 2 3; do
  sed -e '/^    server /d' -e "s/^    bind .*/    bind 127.0.0.1:19600/" "$root/configs/haproxy.cfg" >"$work/haproxy$n.cfg"
  for i in $(seq 0 $((n - 1))); do echo "    server gateway$i 127.0.0.1:$((19601 + i)) check" >>"$work/haproxy$n.cfg"; done
  haproxy -db -f "$work/haproxy$n.cfg" >/dev/null 2>&1 & hp=$!; pids+=($hp)
  sleep 2
  echo "HAProxy + $n replica(s): $(wrk_rps http://127.0.0.1:19600/v2/models/tiny/infer) req/s"
  kill $hp; wait $hp 2>/dev/null || true
done

echo "== lease failover (lease_ttl_ms = $ttl_ms)"
for i in 0 1 2; do kill "$(eval echo \$gw_pid_$i)"; done
# Each copy is locked by its gateway until it exits (after its drain).
for i in 0 1 2; do wait "$(eval echo \$gw_pid_$i)" 2>/dev/null || true; done
"$bin/registry" --root $url publish tiny "$work/local/tiny/1/model.onnx" --alias challenger >/dev/null
canary='canary = { version = "challenger", weight = 10 }
[models.tiny.rollout.policy]
steps = [10, 50, 100]
min_dwell_ms = 600000'
for i in 0 1 2; do start_gateway $i $((19601 + i)) "$canary"; done
lease() { "$root/.venv/bin/python" - "$AWS_ENDPOINT_URL" <<'PY'
import json, sys
import boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
try:
    print(json.load(s3.get_object(Bucket="flywheel", Key="figures/tiny/controller-lease.json")["Body"])["holder"])
except Exception:
    print("")
PY
}
until [ -n "$(lease)" ]; do sleep 0.1; done
holder=$(lease)
t0=$(now_ms)
kill -9 "$(eval echo \$gw_pid_${holder#r})"
until [ -n "$(lease)" ] && [ "$(lease)" != "$holder" ]; do sleep 0.05; done
echo "killed $holder; $(lease) holds the lease after $(( $(now_ms) - t0 )) ms"
