#!/usr/bin/env bash
# Coverage-guided fuzzing of the gateway's decoders and file readers (outside CI; CI replays the
# corpus and past crashes through `cargo test`). Needs the nightly toolchain and cargo-fuzz
# (`cargo +stable install cargo-fuzz`). Each target runs for SECONDS (default 60) on a working
# copy of the committed seeds under var/fuzz/, so what libFuzzer finds never lands in the repo.
# A crash stops that target and leaves its input in gateway/fuzz/artifacts/<target>/: fix the
# bug, then commit the input under gateway/fuzz/regressions/<target>/ so the replay keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
scripts/setup-ort.sh >/dev/null
export FLYWHEEL_ORT_LIBRARY="$PWD/.ort/lib"
work="$PWD/var/fuzz"
mkdir -p "$work"
# Seeds for the ONNX reader are our own models (no binary is committed).
cargo build -q -p flywheel-onnx --bin make-model-repo
mkdir -p "$work/corpus/onnx"
target/debug/make-model-repo "$work/seed-models" >/dev/null
find "$work/seed-models" -name model.onnx | while read -r f; do cp "$f" "$work/corpus/onnx/$(echo "$f" | md5sum | cut -c1-12)"; done
cd gateway/fuzz
for target in request config registry_file onnx; do
  mkdir -p "$work/corpus/$target"
  [ -d "corpus/$target" ] && cp -n corpus/$target/* "$work/corpus/$target/" 2>/dev/null || true
  echo "== $target: ${seconds}s"
  cargo +nightly fuzz run "$target" "$work/corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 \
    | tee "$work/$target.log" | grep -E "^#[0-9]+ *(DONE|pulse)|ERROR|SUMMARY|Done " || true
done
