#!/usr/bin/env bash
# CI's second leg: fastadv against the CUDA build of torch, on a machine without a GPU.
#
#   bash scripts/ci_cuda_leg.sh            (TORCH_CUDA_SPEC=torch==2.14.1, VENV=.venv-cuda by default)
#
# 1. a virtualenv with the CUDA torch (about 5.5 GB with its nvidia packages; kept for the next run);
# 2. a copy of the working tree (so the CPU leg's build in the checkout stays as it is), built with
#    the CUDA kernels for sm_80 and sm_90 + PTX (TORCH_CUDA_ARCH_LIST unset; no GPU is visible);
#    any compiler warning from csrc/ fails, and so does any register spill or stack frame that
#    ptxas reports for our kernels;
# 3. the library imports and every kernel op has a CPU and a CUDA kernel registered;
# 4. every Triton kernel compiled ahead of time for sm_90 (scripts/triton_aot_check.py);
# 5. the op tests under that torch.
# Reports land in $OUT (default: a temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv-cuda}
TORCH_CUDA_SPEC=${TORCH_CUDA_SPEC:-torch==2.14.1}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: the build runs in a copy of the tree
export PIP_DISABLE_PIP_VERSION_CHECK=1
stage() { echo "== cuda leg: $* ($(date +%T))"; }

stage "virtualenv with $TORCH_CUDA_SPEC"
want=${TORCH_CUDA_SPEC#torch==}
if ! "$VENV/bin/python" -c "import sys, torch; sys.exit(not (torch.__version__.split('+')[0] == '$want' and torch.version.cuda))" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "$TORCH_CUDA_SPEC" setuptools wheel ninja numpy tqdm pytest pytest-benchmark
fi
PY=$VENV/bin/python
$PY -c "import torch, triton; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'triton', triton.__version__)"

stage "copy of the working tree"
WORK=$(mktemp -d)/fastadv
mkdir -p "$WORK"
trap 'rm -rf "$(dirname "$WORK")"' EXIT
git ls-files -co --exclude-standard -z | tar --null -cf - -T - | tar -xf - -C "$WORK"
cd "$WORK"

stage "build with the CUDA kernels"
unset TORCH_CUDA_ARCH_LIST
if ! FASTADV_PTXAS_VERBOSE=1 MAX_JOBS=2 $PY -m pip install -v --no-build-isolation --no-deps -e . >"$OUT/cuda_build.log" 2>&1; then
  tail -60 "$OUT/cuda_build.log"; echo "cuda leg: the CUDA build failed"; exit 1
fi
grep -E "fastadv: (CUDA|CPU)" "$OUT/cuda_build.log" | sort -u || true
if grep -nE "csrc/[^ ]*(:[0-9]+:[0-9]+: |\([0-9]+\): )warning" "$OUT/cuda_build.log"; then
  echo "cuda leg: compiler warnings in csrc/ (above)"; exit 1
fi
$PY - "$OUT/cuda_build.log" <<'PY'
# ptxas -v: "Compiling entry function 'NAME' for 'sm_XX'" ... "N bytes stack frame, S bytes spill stores, L bytes spill loads"
import re, sys
log = open(sys.argv[1]).read()
entries = re.findall(r"Compiling entry function '(\S+)' for '(sm_\d+)'(.*?)(?=Compiling entry function|\Z)", log, re.S)
bad, archs = [], set()
for name, arch, body in entries:
    archs.add(arch)
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", body)
    if m and any(int(v) for v in m.groups()):
        bad.append(f"{arch} {name}: {m.group(0)}")
print(f"ptxas: {len(entries)} kernel compilations for {sorted(archs)}, {len(bad)} with spills or stack frames")
for line in bad:
    print("  " + line)
if not entries or not {"sm_80", "sm_90"} <= archs:
    sys.exit("cuda leg: no ptxas report for sm_80 and sm_90 in the build log")
sys.exit(1 if bad else 0)
PY

stage "import and kernel registrations"
$PY - <<'PY'
import torch
import fastadv.ops as ops
from fastadv.ops import native
info = native.build_info()
print(info)
assert info["loaded"] and info["source"] == "installed" and info["cuda"], info
missing = [f"fastadv::{k} {key}" for k in native._KERNELS.values() for key in ("CPU", "CUDA")
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fastadv::{k}", key)]
assert not missing, missing
print(f"{len(native._KERNELS)} kernel ops, each with a CPU and a CUDA kernel")
PY
# The library holds machine code for sm_80 and sm_90 and PTX (for newer GPUs).
CUOBJDUMP="$($PY -c "from fastadv import _build; print(_build.find_cuda_home()[0])")/bin/cuobjdump"
[ -x "$CUOBJDUMP" ] || CUOBJDUMP="$($PY -c "import os, triton.backends.nvidia as nv; print(os.path.dirname(nv.__file__))")/bin/cuobjdump"
targets=$("$CUOBJDUMP" --list-elf --list-ptx fastadv/_C*.so | grep -oE '(sm_[0-9]+)\.(cubin|ptx)' | sort -u | tr '\n' ' ') \
  || { echo "cuda leg: cuobjdump ($CUOBJDUMP) could not list the device code"; exit 1; }
echo "device code in fastadv/_C: $targets"
for t in sm_80.cubin sm_90.cubin sm_90.ptx; do
  [[ " $targets " == *" $t "* ]] || { echo "cuda leg: no $t in the library"; exit 1; }
done

stage "Triton kernels compiled for sm_90"
$PY scripts/triton_aot_check.py --json "$OUT/triton_aot.json" | tail -25

stage "op tests under $($PY -c 'import torch; print(torch.__version__)')"
CI=1 $PY -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_ops_safety.py tests/test_native_build.py \
  tests/test_triton_backend.py
stage "done"
