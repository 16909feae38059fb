#!/usr/bin/env bash
# Everything only a GPU can show, in one run of at most 8 minutes on one GPU (an H200 here):
#
#   bash scripts/gpu_check.sh                 (OUT=benchmarks/results/gpu by default)
#
# Stages, each with its own time limit, each writing its results as soon as it ends (a run cut
# short still leaves the figures of the stages before):
#   device    GPU, driver, torch, triton, nvcc versions               -> device.txt
#   build     the extension against this machine's torch (sm_90 only) -> build.log   (limit 120 s)
#   tests     tests/test_gpu.py and the op tests on CUDA               -> tests.log   (limit 110 s)
#   sanitizer compute-sanitizer memcheck over the native CUDA tests       -> sanitizer.log (limit 30 s)
#   kernels   (a) fused step / linf_step_compact GB/s vs copy          -> kernels.json/.md (limit 35 s)
#   backends  (d) native vs Triton per op, batch 128 and 4096          -> backends.json/.md (limit 25 s)
#   attack    (b) PGD-10-τ vs PGD-10, time vs executed-BP ratio        -> attack.json/.md (limit 60 s)
#   epoch     (c) AT / FAT τ=1 / plain PGD-10 loop, images/s           -> epoch.json/.md (limit 80 s)
#   autoattack (issue #12; not in the default list: GPU_CHECK_STAGES=autoattack) PreActResNet-18
#             AT on the CIFAR-10 subset of ../shared/data, then AutoAttack standard on 1,000 test
#             points, per-attack seconds and passes                  -> autoattack_cifar10.json (limit 420 s)
#             With the official code under .official/ (carry it), both run attack by attack; then
#             GPU_CHECK_AA_POINTS=200 keeps the pair within the limit.
#   architectures (issue #14; not in the default list: GPU_CHECK_STAGES=architectures) PGD-10 AT
#             epochs of CIFS-ResNet-18 and DS-Net (small and official) beside PreActResNet-18,
#             images/s                                                -> architectures.json/.md (limit 150 s)
# Then summary.md gathers the tables. GPU_CHECK_STAGES="kernels attack" runs a subset;
# GPU_CHECK_IMAGES sets the images per epoch measurement (default 12800: s/50k is extrapolated).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
STAGES=${GPU_CHECK_STAGES:-"device build tests sanitizer kernels backends attack epoch"}
IMAGES=${GPU_CHECK_IMAGES:-12800}
t_start=$(date +%s)
status() { echo "$1: $2 ($(( $(date +%s) - t_start )) s)" | tee -a "$OUT/stages.txt"; }
: >"$OUT/stages.txt"
want() { [[ " $STAGES " == *" $1 "* ]]; }

# run STAGE LIMIT LOG CMD...: the command under `timeout`, its output to LOG and the console.
run() {
  local stage=$1 limit=$2 log=$3; shift 3
  timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status "$stage" "cut at its ${limit} s limit"
  elif [ "$rc" -ne 0 ]; then status "$stage" "failed (exit $rc)"
  else status "$stage" "ok"; fi
}

if want device; then
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
    $PY -c "import torch, platform; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'python', platform.python_version()); print('device', torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))"
    $PY -c "import triton; print('triton', triton.__version__)" 2>&1
    (command -v nvcc >/dev/null && nvcc --version | tail -2) || echo "nvcc: not on PATH"
    echo "compute-sanitizer: $(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1 || true)"
    nproc
  } 2>&1 | tee "$OUT/device.txt"
  status device ok
fi

if want build; then
  # This GPU's architecture only (the visible GPU is detected): the fastest build.
  run build 120 build.log env MAX_JOBS="$(nproc)" $PY -m pip install -v --no-build-isolation --no-deps -e .
fi
# Never a just-in-time build after this point: a failed or cut build must not restart, untimed,
# inside the tests or benchmarks (they then run on Triton and the reference).
export FASTADV_NO_JIT=1
timeout 30 $PY -c "import fastadv.ops as o, fastadv.ops.native as n; print(n.build_info()); print('cuda backends:', o.available_backends('cuda'))" 2>&1 | tee -a "$OUT/build.log"

if want tests; then
  # test_gpu.py first (the GPU-sized cases), then the parity tests on the cuda device.
  run tests 110 tests.log $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_ops_safety.py \
    tests/test_native_build.py tests/test_ops.py -k "cuda or test_gpu"
fi

# compute-sanitizer: on PATH, else where CUDA toolkits keep it.
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer \
  /usr/local/cuda/compute-sanitizer/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer 2>/dev/null | head -1 || true)
if want sanitizer; then
  if [ -n "$SANITIZER" ]; then
    # The native CUDA kernels, called directly on small inputs (no Triton compiles under memcheck).
    run sanitizer 30 sanitizer.log "$SANITIZER" --tool memcheck --error-exitcode 3 \
      $PY -m pytest -q -x -p no:cacheprovider tests/test_native_build.py -k cuda
  else
    echo "compute-sanitizer not found on this machine" | tee "$OUT/sanitizer.log"
    status sanitizer "skipped: no compute-sanitizer"
  fi
fi

for stage in kernels backends attack epoch architectures; do
  if want $stage; then
    case $stage in
      kernels) limit=35 ;; backends) limit=25 ;; attack) limit=60 ;; epoch) limit=80 ;;
      architectures) limit=150 ;;
    esac
    run $stage $limit $stage.log $PY -m benchmarks.gpu_check $stage --out "$OUT" --images "$IMAGES"
  fi
done

if want autoattack; then
  # The official code, when a session put it under .official/ (git-ignored; carried to the device),
  # runs beside fastadv attack by attack; GPU_CHECK_AA_POINTS sets the test points (default 1000).
  PYTHONPATH="$PWD/.official${PYTHONPATH:+:$PYTHONPATH}" \
  run autoattack 420 autoattack.log $PY -m benchmarks.autoattack_compare --dataset cifar10 --device cuda \
    --points "${GPU_CHECK_AA_POINTS:-1000}" --train 4000 --epochs 5 --no-torchattacks \
    --out "$OUT/autoattack_cifar10"
fi

{
  echo "# GPU check ($(date -u +%Y-%m-%d))"
  echo
  echo '```'
  cat "$OUT/device.txt" 2>/dev/null
  echo '```'
  echo
  echo "Stages:"
  echo
  sed 's/^/- /' "$OUT/stages.txt"
  echo
  for stage in kernels backends attack epoch architectures; do
    [ -f "$OUT/$stage.md" ] && cat "$OUT/$stage.md" && echo
  done
  echo "Test summary: $(grep -E '[0-9]+ (passed|failed)' "$OUT/tests.log" 2>/dev/null | tail -1)"
} >"$OUT/summary.md"
echo "gpu_check: $(( $(date +%s) - t_start )) s; results in $OUT"
