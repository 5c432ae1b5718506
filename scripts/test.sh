#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need from package registries,
# then runs format and lint checks, the Rust unit and end-to-end tests, and the compatibility
# tests with the real tritonclient and perf_analyzer.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-toolchain.sh
scripts/setup-ort.sh
scripts/setup-test-tools.sh

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --locked
cargo test --workspace --locked
.venv/bin/python -m pytest -q tests/python
