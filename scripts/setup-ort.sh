#!/usr/bin/env bash
# Puts ONNX Runtime's shared library into .ort/lib/ (ignored by git), taken from the PyPI
# `onnxruntime` wheel: no download outside the package registries. Idempotent: does nothing when
# a library of an accepted version is already there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.ort/lib"
spec="${FLYWHEEL_ORT_SPEC:-onnxruntime>=1.31,<1.40}"

if compgen -G "$dest/libonnxruntime.so.1.*" > /dev/null; then
  echo "ONNX Runtime already in $dest: $(cd "$dest" && ls libonnxruntime.so.1.*)"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching the $spec wheel from PyPI"
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$spec"
wheel="$(ls "$tmp"/onnxruntime-*.whl)"
python3 - "$wheel" "$tmp/out" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime.so.")]
    if not names:
        sys.exit(f"{wheel} has no onnxruntime/capi/libonnxruntime.so.*")
    for n in names:
        z.extract(n, out)
PY
mkdir -p "$dest"
# Copy under a temporary name, then rename: an interrupted run never leaves a torn library.
for lib in "$tmp"/out/onnxruntime/capi/libonnxruntime.so.*; do
  cp "$lib" "$dest/.$(basename "$lib").tmp"
  mv "$dest/.$(basename "$lib").tmp" "$dest/$(basename "$lib")"
done
echo "ONNX Runtime ready: $(ls "$dest"/libonnxruntime.so.1.*)"
