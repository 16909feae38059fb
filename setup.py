"""Build of ``fastadv._C``, the native kernels (csrc/), with torch.utils.cpp_extension.

Install with ``pip install --no-build-isolation -e .`` so the extension is built against the torch that
is already installed (an isolated build would download another torch). The CUDA kernels are built
when this torch is a CUDA build and the CUDA toolkit is found (``torch.version.cuda and CUDA_HOME``),
whether or not a GPU is visible; otherwise the CPU kernels alone. ``FASTADV_NO_EXT=1`` skips the
extension (the package then builds the kernels just in time, or falls back to the reference).

Environment: ``FASTADV_CPU_ARCH`` sets the CPU target of -march (default ``native``: the library is
built on the machine that runs it); ``TORCH_CUDA_ARCH_LIST`` the GPU targets (default 9.0 when no
GPU is visible).
"""
import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithSources(build_py):
    """Ship csrc/ inside the package as fastadv/_csrc, for the just-in-time build of fastadv.ops.native
    (an editable install finds csrc/ in the checkout instead)."""

    def run(self):
        super().run()
        for src in sorted((ROOT / "csrc").rglob("*")):
            if src.is_file() and src.suffix in (".h", ".cuh", ".cpp", ".cu"):
                dst = Path(self.build_lib) / "fastadv" / "_csrc" / src.relative_to(ROOT / "csrc")
                dst.parent.mkdir(parents=True, exist_ok=True)
                self.copy_file(str(src), str(dst))


def cpu_flags():
    arch = os.environ.get("FASTADV_CPU_ARCH", "native")
    # -ffp-contract=off: no fused multiply-add, so each operation rounds like the reference.
    return ["-O3", "-std=c++17", "-ffp-contract=off", "-fopenmp", f"-march={arch}"]


def extensions():
    if os.environ.get("FASTADV_NO_EXT") == "1":
        return [], {"build_py": BuildPyWithSources}
    import torch
    from torch.utils import cpp_extension as ce

    sources = ["csrc/ops.cpp", "csrc/cpu/ops_cpu.cpp"]
    with_cuda = bool(torch.version.cuda) and ce.CUDA_HOME is not None
    cxx = cpu_flags()
    define = []
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"  # arch detection needs a visible GPU
        sources += ["csrc/cuda/kernels.cu", "csrc/cuda/ops_cuda.cpp"]
        define = [("FASTADV_WITH_CUDA", None)]
        ext = ce.CUDAExtension(
            "fastadv._C", sources, define_macros=define,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17", "--fmad=false"]},
            extra_link_args=["-fopenmp"])
    else:
        ext = ce.CppExtension("fastadv._C", sources, extra_compile_args=cxx, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": ce.BuildExtension.with_options(use_ninja=True), "build_py": BuildPyWithSources}


ext_modules, cmdclass = extensions()
setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
