#!/usr/bin/env bash
# Compile every torch-free CUDA kernel file (csrc/cuda/*.cu) for sm_90 with nvcc, as CI does: it needs
# no GPU and no CUDA build of torch. Fails on any compile error (or warning-as-error in the host code).
# Usage: scripts/compile_cuda.sh [extra nvcc flags...]   (NVCC=/path/to/nvcc to pick a compiler)
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
command -v "$NVCC" >/dev/null || { echo "compile_cuda.sh: $NVCC not found" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
n=0
for cu in csrc/cuda/*.cu; do
  # Files that include torch headers are the ATen glue: built by setup.py with a CUDA torch only.
  if grep -qE '#include *[<"](torch|ATen|c10)/' "$cu"; then
    echo "skip (includes torch headers): $cu"
    continue
  fi
  echo "nvcc $cu"
  "$NVCC" -c -std=c++17 -O3 --fmad=false -gencode=arch=compute_90,code=sm_90 \
    -Xcompiler -Wall,-Werror -Werror all-warnings "$@" "$cu" -o "$out/$(basename "$cu").o"
  n=$((n + 1))
done
[ "$n" -gt 0 ] || { echo "compile_cuda.sh: no torch-free .cu files found" >&2; exit 1; }
echo "compiled $n CUDA file(s) for sm_90"
