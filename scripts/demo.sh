#!/usr/bin/env bash
# The README's first command: the whole loop on an embedded default. Sets up ONNX Runtime,
# builds the gateway and the trainer, then `trainer demo`: a first champion trained on
# synthetic history, the gateway (configs/demo.toml) and `trainer watch` (configs/trainer.toml),
# traffic with labels arriving later, drift injected part-way, retraining, the gate, shadow and
# canary, promotion — printed as a timeline. It ends by itself (about a minute of traffic) and
# leaves the registry, Parquet samples, audit and run logs in var/demo.
# Extra arguments go to `trainer demo` (e.g. --label-noise 1.0 --expect rejected; --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-toolchain.sh
scripts/setup-ort.sh
features=()
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  # A GPU: build the trainer's CUDA backend too (it falls back to CPU if the driver or NVRTC is
  # unusable). CUDARC_CUDA_VERSION defaults to 13.0; set it to your driver's CUDA version.
  export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
  features=(--features flywheel-trainer/cuda)
fi
cargo build --release --locked --bin gateway --bin trainer "${features[@]}"
# Where cargo put them: a CARGO_TARGET_DIR set in the user's environment moves the binaries.
exec "${CARGO_TARGET_DIR:-target}/release/trainer" demo "$@"
