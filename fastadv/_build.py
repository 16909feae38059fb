"""How the native library (``fastadv._C``, from csrc/) is compiled: one place for ``setup.py`` and the
just-in-time build of ``fastadv.ops.native``.

- C++ standard: torch's choice (C++17 up to torch 2.13, C++20 from 2.14, whose headers refuse
  less); no ``-std`` flag of ours ever overrides it.
- CPU target: portable x86-64 by default, so a wheel built on one machine runs on any other;
  ``FASTADV_CPU_ARCH=native`` (or any ``-march`` value) tunes for the building machine.
- CUDA toolkit: ``CUDA_HOME``/``CUDA_PATH``, else where ``nvcc`` really lives (it may be a wrapper
  script), else ``/usr/local/cuda``; one line says which was used.
- GPU targets: ``TORCH_CUDA_ARCH_LIST`` if set; else the visible GPUs' (torch's detection); with no
  visible GPU, sm_80 and sm_90 plus PTX (A100, H100/H200, and newer GPUs through the PTX).

This module imports only the standard library at import time (``setup.py`` loads it by path).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

# GPU targets when no GPU is visible: Ampere (sm_80) and Hopper (sm_90), plus PTX for newer GPUs.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"

# -ffp-contract=off: no fused multiply-add, so each operation rounds as the reference does.
# -fno-trapping-math: the kernels' selects (min/max with NaN, sign) may be if-converted into vector
# blends; without it GCC vectorises the L∞ loop only with AVX-512's masked compares, and the portable
# build ran it scalar, 17x slower (2.2 ms vs 0.13 ms at 128x3x32x32 fp32). Rounding is unchanged
# (the parity tests are bit-exact); only floating-point exception flags could differ.
_CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fopenmp", "-Wall", "-Wextra",
              "-Wno-unused-parameter"]
# --fmad=false: the same for device code (fastadv_math.h also uses explicitly rounded intrinsics).
_NVCC_FLAGS = ["-O3", "--fmad=false", "-Xcompiler", "-Wall"]


def cpu_arch_flags() -> list[str]:
    """``-march`` only when asked for (``FASTADV_CPU_ARCH``): the default binary runs on any x86-64
    (its vector loops are cloned for AVX2 and AVX-512 and picked at load time, csrc/cpu/ops_cpu.cpp).
    ``FASTADV_CPU_CLONES=0`` builds one version of them (to test a given ISA's code path)."""
    arch = os.environ.get("FASTADV_CPU_ARCH", "").strip()
    clones = [] if os.environ.get("FASTADV_CPU_CLONES", "1") != "0" else ["-DFASTADV_NO_CLONES"]
    return ([f"-march={arch}"] if arch else []) + clones


def cxx_flags(with_cuda: bool) -> list[str]:
    return _CXX_FLAGS + cpu_arch_flags() + (["-DFASTADV_WITH_CUDA"] if with_cuda else [])


def nvcc_flags() -> list[str]:
    """``FASTADV_PTXAS_VERBOSE=1`` adds ptxas' per-kernel report (registers, spills, stack frame),
    which CI's CUDA leg reads."""
    verbose = ["-Xptxas", "-v"] if os.environ.get("FASTADV_PTXAS_VERBOSE") == "1" else []
    return list(_NVCC_FLAGS) + verbose


def _toolkit_of_nvcc(nvcc: str) -> Optional[Path]:
    """The toolkit an ``nvcc`` on PATH belongs to, also when it is a wrapper script: nvcc's own
    dry run names the folder it really runs from (``_HERE_``)."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True,
                             timeout=30)
        here = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, re.M)
    except (OSError, subprocess.SubprocessError):
        here = None
    for bin_dir in ([Path(here.group(1).strip())] if here else []) + [Path(nvcc).resolve().parent]:
        if (bin_dir.parent / "include" / "cuda_runtime.h").is_file():
            return bin_dir.parent
    return None


def find_cuda_home() -> tuple[Optional[Path], str]:
    """(the CUDA toolkit's folder or None, how it was found)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return Path(os.environ[var]), f"${var}"
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = _toolkit_of_nvcc(nvcc)
        if home is not None:
            return home, f"nvcc on PATH ({nvcc})"
    if (Path("/usr/local/cuda") / "include" / "cuda_runtime.h").is_file():
        return Path("/usr/local/cuda"), "/usr/local/cuda"
    return None, "no CUDA toolkit found (set CUDA_HOME)"


def use_cuda_home(cpp_extension) -> Optional[Path]:
    """Point torch's extension builder at the toolkit of :func:`find_cuda_home` (torch guesses
    ``dirname(dirname(which nvcc))``, wrong for a wrapper in /usr/local/bin) and say which one."""
    home, how = find_cuda_home()
    if home is not None:
        os.environ["CUDA_HOME"] = str(home)
        cpp_extension.CUDA_HOME = str(home)
        print(f"fastadv: CUDA toolkit {home} (from {how})")
    return home


def set_cuda_arch_list(torch) -> str:
    """TORCH_CUDA_ARCH_LIST for this build: the user's, else torch's detection of the visible GPUs,
    else :data:`DEFAULT_CUDA_ARCHS`."""
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    return os.environ.get("TORCH_CUDA_ARCH_LIST", "(the visible GPUs)")


def sources(src_dir: Path, with_cuda: bool) -> list[Path]:
    files = [src_dir / "ops.cpp", src_dir / "cpu" / "ops_cpu.cpp"]
    if with_cuda:
        files += [src_dir / "cuda" / "ops_cuda.cu"]
    return files


def source_hash(src_dir: Path) -> str:
    """A hash of every source file of the library (headers too) and the build flags."""
    h = hashlib.sha256()
    for f in sorted(p for p in src_dir.rglob("*") if p.suffix in (".h", ".cuh", ".cpp", ".cu")):
        h.update(f.relative_to(src_dir).as_posix().encode())
        h.update(f.read_bytes())
    h.update(repr((_CXX_FLAGS, _NVCC_FLAGS, cpu_arch_flags(), os.environ.get("TORCH_CUDA_ARCH_LIST"))).encode())
    return h.hexdigest()[:16]
