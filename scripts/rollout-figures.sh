#!/usr/bin/env bash
# Runs the closed-loop demo `runs` times with the given binaries and prints, per run, the time
# from drift onset to the rollout decision and the labelled rows each controller decision
# used (from the audit log). Used for the rollout figures in docs/benchmarks/.
#
#   scripts/rollout-figures.sh <trainer binary> <gateway binary> [runs] [gateway config]
set -euo pipefail
trainer=${1:?trainer binary}
gateway=${2:?gateway binary}
runs=${3:-1}
config=${4:-configs/demo.toml}
before_s=10
for run in $(seq 1 "$runs"); do
  dir=$(mktemp -d)/demo
  "$trainer" demo --dir "$dir" --gateway "$gateway" --gateway-config "$config" --seed "$run" \
    --rate 200 --before-s "$before_s" --after-s 6 --max-s 150 --bootstrap-rows 8000 >"$dir.log" 2>&1 || true
  # The traffic line's time is when traffic began; the drift starts before_s later.
  start=$(grep -m1 'traffic  │' "$dir.log" | sed -E 's/^\[ *([0-9.]+) s\].*/\1/')
  jq -r --argjson onset "$(echo "$start + $before_s" | bc)" '
    .milestones as $m
    | def since(t): if t == null then "-" else "\((t - $onset) * 10 | round / 10) s" end;
      "run '"$run"': from drift onset: detected \(since($m.drift_detected)), registered \(since($m.registered)), "
      + "first canary step \(since($m.first_canary_step)), promoted \(since($m.promoted)), rolled back \(since($m.rolled_back))"' \
    "$dir/summary.json"
  jq -r 'select(.actor == "controller" and (.action == "advance" or .action == "promote" or .action == "roll_back"))
    | "  \(.action): candidate labelled rows \(.evidence.quality.candidate_rows // 0), champion \(.evidence.quality.champion_rows // 0); \(.reason[0:160])"' \
    "$dir/models/audit.jsonl"
done
