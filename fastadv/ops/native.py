"""The native backend: C++ kernels for the CPU and CUDA C++ kernels (csrc/), as ``torch.ops.fastadv_native.*``.

The library is ``fastadv._C``, built by ``pip install --no-build-isolation -e .``. If it is missing, it
is built just in time with ``torch.utils.cpp_extension.load`` (ninja; cached in torch's per-user
extensions directory, about a minute once) from the package's sources, unless ``FASTADV_NO_JIT=1``.
If that fails too, a warning is given once and :func:`supports` is False: the dispatcher then uses
the reference backend.

The functions have the names, signatures and semantics of ``fastadv.ops.reference``; they take the
normalised inputs of ``fastadv.ops.library`` (row-dense tensors sharing one layout, float32 [N]
``eps``/``alpha``/``scale``, float32 noise, contiguous int64 vectors).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from . import dispatch

_state: dict = {"module": None, "error": None, "source": None, "info": None}


def _source_dir() -> Optional[Path]:
    """csrc/ of a checkout (editable install) or the copy shipped in the package (fastadv/_csrc)."""
    pkg = Path(__file__).resolve().parents[1]
    for cand in (pkg.parent / "csrc", pkg / "_csrc"):
        if (cand / "ops.cpp").is_file():
            return cand
    return None


def _jit_build():
    from torch.utils import cpp_extension as ce

    src = _source_dir()
    if src is None:
        raise RuntimeError("the kernel sources (csrc/) are not installed")
    sources = [src / "ops.cpp", src / "cpu" / "ops_cpu.cpp"]
    with_cuda = bool(torch.version.cuda) and ce.CUDA_HOME is not None
    cflags = ["-O3", "-std=c++17", "-ffp-contract=off", "-fopenmp",
              f"-march={os.environ.get('FASTADV_CPU_ARCH', 'native')}"]
    if with_cuda:
        sources += [src / "cuda" / "kernels.cu", src / "cuda" / "ops_cuda.cpp"]
        cflags.append("-DFASTADV_WITH_CUDA")
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    return ce.load(name="fastadv_native", sources=[str(s) for s in sources], extra_cflags=cflags,
                   extra_cuda_cflags=["-O3", "-std=c++17", "--fmad=false"] + (["-DFASTADV_WITH_CUDA"] if with_cuda else []),
                   extra_ldflags=["-fopenmp"], with_cuda=with_cuda, verbose=False)


def _register_fakes() -> None:
    """Shapes of the native ops' outputs for FakeTensor / torch.compile tracing (no data is touched)."""
    reg = torch.library.register_fake
    for name in ("linf_step_", "l2_step_"):
        reg(f"fastadv_native::{name}")(lambda x, grad, x_nat, eps, alpha, noise, clip_min, clip_max: None)
    reg("fastadv_native::start_from_noise")(
        lambda x_nat, r, scale, uniform, clip_min, clip_max: torch.empty_like(x_nat))
    reg("fastadv_native::early_stop_update_")(
        lambda logits, y, budget, kappa: logits.new_empty(logits.shape[0], dtype=torch.bool))
    reg("fastadv_native::compaction_plan")(
        lambda leave: (leave.new_empty(leave.shape[0], dtype=torch.int64), leave.new_empty((), dtype=torch.int64)))
    reg("fastadv_native::compact_rows")(lambda src, dest, index, out, packed: None)
    reg("fastadv_native::linf_step_compact")(
        lambda x, grad, x_nat, eps, alpha, noise, dest, index, out, x_next, x_nat_next, clip_min, clip_max: None)


def _load():
    """Import fastadv._C, else build it just in time; None (with one warning) if neither works."""
    if _state["module"] is not None or _state["error"] is not None:
        return _state["module"]
    try:
        from fastadv import _C as mod  # noqa: F401  (loading it registers torch.ops.fastadv_native)
        _state.update(module=mod, source="installed")
        _register_fakes()
        return mod
    except ImportError as exc:
        first = exc
    if os.environ.get("FASTADV_NO_JIT") == "1":
        _state["error"] = first
    else:
        try:
            _state.update(module=_jit_build(), source="jit")
            _register_fakes()
            return _state["module"]
        except Exception as exc:  # compiler missing, build error: fall back to the reference
            _state["error"] = exc
    dispatch.warn_once("native", f"fastadv: native kernels unavailable ({_state['error']}); "
                                 "using the reference backend. Build them with "
                                 "`pip install --no-build-isolation -e .`")
    return None


def build_info() -> dict:
    """What the native library holds: ``{"loaded", "source" ("installed"|"jit"), "cpu", "cuda",
    "openmp", "threads", "cpu_isa"}``, or ``{"loaded": False, "error": ...}``."""
    mod = _load()
    if mod is None:
        return {"loaded": False, "error": repr(_state["error"])}
    if _state["info"] is None:
        _state["info"] = mod.build_info()
    # threads: what the kernels use now (at::parallel_for follows torch.set_num_threads).
    return {"loaded": True, "source": _state["source"], **_state["info"], "threads": torch.get_num_threads()}


def supports(device: torch.device) -> bool:
    """CPU when the library is loaded; CUDA when it was also built with the CUDA kernels."""
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda") or _load() is None:
        return False
    return kind == "cpu" or bool(build_info()["cuda"])


def _ops():
    return torch.ops.fastadv_native


# ----------------------------------------------------------------------------- the kernels
def linf_step(x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor,
              noise: Optional[Tensor], clip_min: float, clip_max: float) -> None:
    _ops().linf_step_(x, grad, x_nat, eps, alpha, noise, clip_min, clip_max)


def l2_step(x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor,
            noise: Optional[Tensor], clip_min: float, clip_max: float) -> None:
    _ops().l2_step_(x, grad, x_nat, eps, alpha, noise, clip_min, clip_max)


def start_from_noise(x_nat: Tensor, r: Tensor, scale: Tensor, uniform: bool,
                     clip_min: float, clip_max: float) -> Tensor:
    return _ops().start_from_noise(x_nat, r, scale, uniform, clip_min, clip_max)


def early_stop_update(logits: Tensor, y: Tensor, budget: Tensor, kappa: Tensor) -> Tensor:
    return _ops().early_stop_update_(logits, y, budget, kappa)


def compaction_plan(leave: Tensor) -> tuple[Tensor, Tensor]:
    dest, n_active = _ops().compaction_plan(leave)
    return dest, n_active


def compact_rows(src: Tensor, dest: Tensor, index: Optional[Tensor], out: Optional[Tensor],
                 packed: Tensor) -> None:
    _ops().compact_rows(src, dest, index, out, packed)


def linf_step_compact(x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor,
                      noise: Optional[Tensor], dest: Tensor, index: Tensor, out: Tensor,
                      x_next: Tensor, x_nat_next: Tensor, clip_min: float, clip_max: float) -> None:
    _ops().linf_step_compact(x, grad, x_nat, eps, alpha, noise, dest, index, out, x_next, x_nat_next,
                             clip_min, clip_max)
