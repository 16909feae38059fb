"""The native backend: the C++ (CPU) and CUDA C++ kernels of csrc/, the ops ``torch.ops.fastadv._*``.

The library is ``fastadv._C``, built by ``pip install --no-build-isolation -e .``. If it is missing,
it is built just in time with ``torch.utils.cpp_extension.load`` (ninja; cached in torch's
per-user extensions folder) from the package's sources, unless ``FASTADV_NO_JIT=1``. A failed
just-in-time build is reported in one line naming its log, and remembered (keyed by the torch
version and a hash of the sources and flags): later processes do not try again until the sources or
torch change, or the marker file named in the warning is deleted. The dispatcher then uses the
reference backend.

The kernels (module attributes ``linf_step``, ``l2_step``, ... with the names and signatures of
``fastadv.ops.reference``) are the registered ops themselves: ``native.linf_step`` is
``torch.ops.fastadv._linf_step_``. They take the inputs ``fastadv.ops.library`` validated and
normalised (row-dense tensors sharing one layout, per-sample vectors and noise in the compute
dtype, contiguous int64 vectors).
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Optional

import torch

from .. import _build
from .._cache import cache_dir
from . import dispatch

_state: dict = {"loaded": False, "error": None, "source": None, "info": None}

# Backend function name -> kernel op of the library.
_KERNELS = {"linf_step": "_linf_step_", "l2_step": "_l2_step_", "start_from_noise": "_start_from_noise",
            "early_stop_update": "_early_stop_update_", "compaction_plan": "_compaction_plan",
            "compact_rows": "_compact_rows", "linf_step_compact": "_linf_step_compact",
            "linf_fosc_step": "_linf_fosc_step_"}


def _source_dir() -> Optional[Path]:
    """csrc/ of a checkout (editable install) or the copy shipped in the package (fastadv/_csrc)."""
    pkg = Path(__file__).resolve().parents[1]
    for cand in (pkg.parent / "csrc", pkg / "_csrc"):
        if (cand / "ops.cpp").is_file():
            return cand
    return None


@contextlib.contextmanager
def _output_to(log: Path):
    """Send this process's stdout/stderr (and the compiler's, which inherits them) to ``log``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log, "w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _jit_build() -> None:
    """Build and load the library just in time, or raise RuntimeError naming the log (at once if
    this torch already failed on these sources)."""
    from torch.utils import cpp_extension as ce

    src = _source_dir()
    if src is None:
        raise RuntimeError("the kernel sources (csrc/) are not installed")
    with_cuda = bool(torch.version.cuda) and _build.find_cuda_home()[0] is not None
    key = f"torch{torch.__version__}-{'cuda' if with_cuda else 'cpu'}-{_build.source_hash(src)}"
    cache = cache_dir()
    failed, log = cache / f"jit-failed-{key}", cache / f"jit-{key}.log"
    if failed.exists():
        raise RuntimeError(f"the just-in-time build failed before for torch {torch.__version__} and these "
                           f"sources (log: {log}; delete {failed} to try again)")
    cache.mkdir(parents=True, exist_ok=True)
    try:
        with _output_to(log):
            if with_cuda:
                _build.use_cuda_home(ce)
                _build.set_cuda_arch_list(torch)
            ce.load(name="fastadv_native", sources=[str(s) for s in _build.sources(src, with_cuda)],
                    extra_cflags=_build.cxx_flags(with_cuda), extra_cuda_cflags=_build.nvcc_flags(),
                    extra_ldflags=["-fopenmp"], with_cuda=with_cuda, is_python_module=False, verbose=True)
    except Exception as exc:
        failed.write_text(f"{type(exc).__name__}: {str(exc)[:2000]}\n")
        raise RuntimeError(f"the just-in-time build failed (log: {log}); it will not be tried again for "
                           f"torch {torch.__version__} and these sources (delete {failed} to retry)") from None


def _load() -> bool:
    """Import fastadv._C, else build it just in time; False (with one warning) if neither works."""
    if _state["loaded"] or _state["error"] is not None:
        return _state["loaded"]
    try:
        from fastadv import _C  # noqa: F401  (loading it registers torch.ops.fastadv._*)
        _state.update(loaded=True, source="installed")
        return True
    except ImportError as exc:
        _state["error"] = exc
    if os.environ.get("FASTADV_NO_JIT") != "1":
        try:
            _jit_build()
            _state.update(loaded=True, source="jit", error=None)
            return True
        except Exception as exc:  # compiler missing, build error: fall back to the reference
            _state["error"] = exc
    dispatch.warn_once("native", f"fastadv: native kernels unavailable ({_state['error']}); using the "
                                 "reference backend. Build them with `pip install --no-build-isolation -e .`")
    return False


def build_info() -> dict:
    """What the native library holds: ``{"loaded", "source" ("installed"|"jit"), "cpu", "cuda",
    "openmp", "threads", "cpu_isa" (the build's target), "cpu_clones" (the vector loops' extra ISA
    versions, picked at load time)}``, or ``{"loaded": False, "error": ...}``."""
    if not _load():
        return {"loaded": False, "error": str(_state["error"])}
    if _state["info"] is None:
        words = dict(w.split("=") for w in torch.ops.fastadv._build_info().split())
        _state["info"] = {"cpu": True, "cuda": words["cuda"] == "1", "openmp": words["openmp"] == "1",
                          "cpu_isa": words["cpu_isa"], "cpu_clones": words.get("cpu_clones", "none")}
    # threads: what the kernels use now (at::parallel_for follows torch.set_num_threads).
    return {"loaded": True, "source": _state["source"], **_state["info"], "threads": torch.get_num_threads()}


def supports(device: torch.device) -> bool:
    """CPU when the library is loaded; CUDA when it was also built with the CUDA kernels."""
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda") or not _load():
        return False
    return kind == "cpu" or build_info()["cuda"]


def __getattr__(name: str):
    """``native.linf_step`` etc.: the kernel ops (loading the library on first use)."""
    if name in _KERNELS and _load():
        op = getattr(torch.ops.fastadv, _KERNELS[name])
        globals()[name] = op  # later lookups skip this function
        return op
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
