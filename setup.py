"""Build of ``fastadv._C``, the native kernels (csrc/), with torch.utils.cpp_extension.

Install with ``pip install --no-build-isolation -e .`` so the extension is built against the torch that
is already installed (an isolated build would download another torch). The CUDA kernels are built
when this torch is a CUDA build and a CUDA toolkit is found, whether or not a GPU is visible;
otherwise the CPU kernels alone. ``FASTADV_NO_EXT=1`` skips the extension (the package then builds
the kernels just in time, or falls back to the reference).

The flags, the toolkit and the GPU targets come from ``fastadv/_build.py`` (shared with the
just-in-time build): torch's C++ standard, a portable CPU target (``FASTADV_CPU_ARCH=native`` to
tune), ``TORCH_CUDA_ARCH_LIST`` or sm_80 + sm_90 + PTX when no GPU is visible.
"""
import importlib.util
import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _load_build_module():
    """fastadv/_build.py by path (importing the package would import torch and the ops)."""
    spec = importlib.util.spec_from_file_location("fastadv_build", ROOT / "fastadv" / "_build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


def extensions():
    if os.environ.get("FASTADV_NO_EXT") == "1":
        return [], {"build_py": BuildPyWithSources}
    import torch
    from torch.utils import cpp_extension as ce

    build = _load_build_module()
    with_cuda = bool(torch.version.cuda) and build.use_cuda_home(ce) is not None
    sources = [str(p.relative_to(ROOT)) for p in build.sources(ROOT / "csrc", with_cuda)]
    if with_cuda:
        print(f"fastadv: CUDA kernels for TORCH_CUDA_ARCH_LIST={build.set_cuda_arch_list(torch)}")
        ext = ce.CUDAExtension(
            "fastadv._C", sources,
            extra_compile_args={"cxx": build.cxx_flags(True), "nvcc": build.nvcc_flags()},
            extra_link_args=["-fopenmp"])
    else:
        print("fastadv: CPU kernels only" + ("" if not torch.version.cuda else " (no CUDA toolkit found)"))
        ext = ce.CppExtension("fastadv._C", sources, extra_compile_args=build.cxx_flags(False),
                              extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": ce.BuildExtension.with_options(use_ninja=True), "build_py": BuildPyWithSources}


ext_modules, cmdclass = extensions()
setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
