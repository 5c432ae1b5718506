#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need from package registries,
# then runs format and lint checks, the Rust unit and end-to-end tests (the closed loop of
# gateway + trainer included), and the Python tests: the real tritonclient and perf_analyzer,
# Parquet read-back with pyarrow and DuckDB, bring-your-own training with scikit-learn.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-toolchain.sh
scripts/setup-ort.sh
scripts/setup-test-tools.sh
# Binaries may live outside the clone (CARGO_TARGET_DIR): point them at this clone's library.
export FLYWHEEL_ORT_LIBRARY="$PWD/.ort/lib"

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --locked
cargo test --workspace --locked
.venv/bin/python -m pytest -q tests/python
