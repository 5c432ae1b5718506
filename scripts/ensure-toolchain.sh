#!/usr/bin/env bash
# rust-toolchain.toml pins 1.95.0. These machines carry one toolchain and can fetch no other:
# when rustup has no toolchain of that name but its stable one is that version, link it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
want="$(sed -n 's/^channel = "\(.*\)"/\1/p' "$root/rust-toolchain.toml")"
command -v rustup >/dev/null || exit 0
if ! rustup toolchain list | grep -q "^$want"; then
  have="$(rustc +stable --version 2>/dev/null | awk '{print $2}')"
  if [ "$have" = "$want" ]; then
    rustup toolchain link "$want" "$(rustc +stable --print sysroot)"
    echo "linked toolchain $want to the installed stable toolchain"
  else
    echo "rust-toolchain.toml wants $want; rustup has: $(rustup toolchain list | tr '\n' ' ')" >&2
    exit 1
  fi
fi
