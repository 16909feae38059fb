#!/usr/bin/env bash
# Everything only a GPU can show, for one session on a CUDA machine (no network needed):
#   bash scripts/gpu_suite.sh [build|test|bench|all]      (default: all; OUT=folder for the results)
# build: the C++/CUDA extension against the machine's torch (--no-build-isolation --no-deps);
# test:  every test file on CUDA (the parity tests pick up the "cuda" device and the native/triton
#        backends by themselves; tests marked gpu run);
# bench: the GPU-sized benchmark suite (PreActResNet-18 / WRN-34-10, batch 128/512, fp32/bf16),
#        its Markdown table, and the attack time-vs-executed-BP ratios at batch 512.
# Each stage logs to $OUT; split the stages over several calls if one call has a time limit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
PY=${PY:-python3}
stage=${1:-all}

$PY - <<'PY' | tee "$OUT/versions.txt"
import platform, torch
try:
    import triton; tv = triton.__version__
except ImportError:
    tv = None
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {tv}, python {platform.python_version()}")
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")
PY

if [[ $stage == build || $stage == all ]]; then
  $PY -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -20 | tee "$OUT/build.log"
  $PY -c "import fastadv.ops as o, fastadv.ops.native as n; print(n.build_info()); print('cuda backends:', o.available_backends('cuda'))" 2>&1 | tee -a "$OUT/build.log"
fi
if [[ $stage == test || $stage == all ]]; then
  $PY -m pytest -q -ra --benchmark-disable tests 2>&1 | tee "$OUT/tests.log" | tail -15
fi
if [[ $stage == bench || $stage == all ]]; then
  $PY -m pytest benchmarks --benchmark-only --fastadv-size=gpu -q \
      --benchmark-json="$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench.log" | tail -15
  $PY -m benchmarks.report "$OUT/bench_gpu.json" --out "$OUT/bench_gpu.md" 2>&1 | tail -3
  $PY -m benchmarks.attack_speed --size gpu --out "$OUT/attack_speed_gpu.json" 2>&1 | tee "$OUT/attack_speed.log" | tail -20
fi
