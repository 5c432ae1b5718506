#!/usr/bin/env bash
# gRPC vs HTTP binary, side by side in one run: one release gateway with both ports, the same
# client for both (perf_analyzer from the tritonclient wheel: -i http sends binary tensors,
# -i grpc raw_input_contents), tiny (1 row per request) and heavy (8 rows) at c=1 and c=64.
# Besides the client's view, the gateway's own CPU time per request over each whole run
# (client and server share the machine's cores, so this is the server-side cost alone).
#   scripts/grpc-figures.sh <bin dir with gateway and make-model-repo> [window_ms]
# PIN=1 puts the gateway on core 1 and perf_analyzer on core 0 (a client that costs more per
# request then does not take CPU from the server).
set -euo pipefail
bin=${1:?folder with release binaries}
window=${2:-3000}
root="$(cd "$(dirname "$0")/.." && pwd)"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
export FLYWHEEL_ORT_LIBRARY="$root/.ort/lib" FLYWHEEL_LOG=warn
"$bin/make-model-repo" "$work/models" --heavy >/dev/null
printf 'max_in_flight = 0\n[batching]\nmax_queue_delay_us = 200\n' >"$work/gw.toml"
server_pin=(); client_pin=()
if [ "${PIN:-0}" = 1 ]; then server_pin=(taskset -c 1); client_pin=(taskset -c 0); fi
"${server_pin[@]}" "$bin/gateway" --config "$work/gw.toml" --model-repository "$work/models" \
  --listen 127.0.0.1:19901 --grpc-listen 127.0.0.1:19902 >"$work/out" 2>"$work/err" &
gw=$!
until grep -q grpc "$work/out" 2>/dev/null; do sleep 0.1; done
pa="$root/.tools/perf_analyzer/perf_analyzer"
export LD_LIBRARY_PATH="$root/.tools/perf_analyzer/lib"
cpu_ticks() { awk '{print $14 + $15}' /proc/$gw/stat; }
successes() { curl -s "http://127.0.0.1:19901/v2/models/$1/stats" | python3 -c 'import json,sys; print(sum(s["inference_stats"]["success"]["count"] for s in json.load(sys.stdin)["model_stats"]))'; }
tick_us=$((1000000 / $(getconf CLK_TCK)))
echo "model rows protocol c req/s rows/s p50_us p99_us server_cpu_us/req"
for spec in "tiny 1" "heavy 8"; do
  set -- $spec
  model=$1 rows=$2
  for c in 1 64; do
    for proto in http grpc; do
      port=19901; [ $proto = grpc ] && port=19902
      t0=$(cpu_ticks) n0=$(successes "$model")
      out=$("${client_pin[@]}" "$pa" -m "$model" -b "$rows" -u 127.0.0.1:$port -i $proto --concurrency-range $c \
        -p "$window" -s 100 -r 4 2>&1) || { echo "$model $rows $proto $c failed: $(tail -2 <<<"$out")"; continue; }
      t1=$(cpu_ticks) n1=$(successes "$model")
      cpu=$(( (t1 - t0) * tick_us / (n1 - n0 > 0 ? n1 - n0 : 1) ))
      ips=$(awk '/Throughput:/{print $2; exit}' <<<"$out")
      p50=$(awk '/p50 latency:/{print $3; exit}' <<<"$out")
      p99=$(awk '/p99 latency:/{print $3; exit}' <<<"$out")
      awk -v m="$model" -v r="$rows" -v p=$proto -v c=$c -v i="$ips" -v a="$p50" -v b="$p99" -v u="$cpu" \
        'BEGIN{printf "%s %d %s %d %.0f %.0f %s %s %s\n", m, r, p, c, i/r, i, a, b, u}'
    done
  done
done
