#!/usr/bin/env bash
# Training speed, CPU against CUDA, on a lent GPU machine (see docs/TRAINER.md). Takes a trainer
# built here with the CUDA backend:
#   CUDARC_CUDA_VERSION=13000 cargo build --release -p flywheel-trainer --features cuda
#   mkdir -p .gpu && cp target/release/trainer .gpu/ && strip .gpu/trainer
# and runs `trainer fit` on the same synthetic rows on each device. With ONNX Runtime carried as
# .gpu/libonnxruntime.so.<version>.xz (xz -c .ort/lib/libonnxruntime.so.* > ...; the unpacked
# library and the trainer together exceed the device tool's 64 MiB), every fit also checks its
# export through ONNX Runtime. Writes to ${OUT:-.}/gpu.log.
set -uo pipefail
trainer="${1:-.gpu/trainer}"
out="${OUT:-.}/gpu.log"
exec > >(tee "$out") 2>&1
nvidia-smi -L || true
nvrtc="$(find / -name 'libnvrtc.so*' -not -path '*/proc/*' 2>/dev/null | grep -v builtins | head -1)"
echo "nvrtc: ${nvrtc:-none found}"
[ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$(dirname "$nvrtc"):${LD_LIBRARY_PATH:-}"
[ -e "$(dirname "$nvrtc")/libnvrtc.so" ] || ln -sf "$nvrtc" "$(dirname "$nvrtc")/libnvrtc.so" 2>/dev/null || true
nproc
verify=()
for packed in .gpu/libonnxruntime.so.*.xz; do
  [ -e "$packed" ] || continue
  mkdir -p .ort/lib
  python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
    "$packed" ".ort/lib/$(basename "$packed" .xz)"
  verify=(--verify-export)
done
fit() { echo "--- fit $*"; timeout 170 "$trainer" fit --out /tmp/m.onnx "${verify[@]}" "$@"; echo "rc=$?"; }
fit --rows 2000 --epochs 2 --device auto                      # the probe's choice, and kernel compile
fit --rows 250000 --hidden 64,64 --epochs 30 --device cuda    # full batch, 200k training rows
fit --rows 250000 --hidden 64,64 --epochs 30 --device cpu
fit --rows 250000 --hidden 64,64 --epochs 3 --batch-size 4096 --device cuda   # mini-batches
fit --rows 250000 --hidden 64,64 --epochs 3 --batch-size 4096 --device cpu
