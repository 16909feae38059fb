"""Which backend runs an op: by the tensor's device, the fastest one available.

Backends are modules with the functions of ``fastadv.ops.reference`` (same names, same contract)
and a ``supports(device) -> bool``:

- ``native``: C++ (CPU, OpenMP + vectorised) and CUDA C++ kernels from ``csrc/`` (``fastadv._C``,
  the ops ``torch.ops.fastadv._*``), built at install time or just in time with ninja;
- ``triton``: Triton kernels, for CUDA tensors (and on the CPU under ``TRITON_INTERPRET=1``);
- ``reference``: plain PyTorch, always available.

Default order: CPU → native, reference (then the Triton interpreter, when switched on, which
is never picked by default). CUDA → native, triton, reference. The native CUDA kernels
come first because at adversarial-training batch sizes one step moves only a few MB (~10 µs of
HBM traffic), where a C++ launch (~5 µs) beats Triton's Python launch path (~20-40 µs); both are
memory-bound and reach the same bandwidth on large tensors. ``FASTADV_BACKEND=reference|triton|native``
forces one (an error if it cannot run on that device).
"""
from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

import torch
from ..errors import UserError

BACKEND_NAMES = ("native", "triton", "reference")
# On the CPU, Triton runs only in its interpreter (a correctness tool, slower than the reference).
_ORDER = {"cpu": ("native", "reference", "triton"), "cuda": ("native", "triton", "reference")}
_MODULES = {"native": "fastadv.ops.native", "triton": "fastadv.ops.triton_kernels",
            "reference": "fastadv.ops.reference"}
_loaded: dict[str, object] = {}


def _module(name: str):
    """Import a backend module once; ``None`` if it can't be imported (e.g. no triton)."""
    if name not in _loaded:
        try:
            _loaded[name] = importlib.import_module(_MODULES[name])
        except ImportError as exc:  # an optional dependency is missing
            if name == "triton":
                _loaded[name] = None
            else:
                raise
            _loaded[name + ":error"] = exc
    return _loaded[name]


def _device_type(device) -> str:
    return torch.device(device).type


def available_backends(device="cpu") -> list[str]:
    """Backends that can run on ``device`` here, fastest first (e.g. ``["native", "reference"]``)."""
    dtype = _device_type(device)
    out = []
    for name in BACKEND_NAMES:
        mod = _module(name)
        if mod is not None and mod.supports(torch.device(device)):
            out.append(name)
    order = _ORDER.get(dtype, ("reference",))
    return sorted(out, key=lambda n: order.index(n) if n in order else len(order))


def is_reference(backend: ModuleType) -> bool:
    """The reference takes tensors in any layout; the others want them row-dense (library.py)."""
    return backend is _module("reference")


def forced_backend() -> str | None:
    name = os.environ.get("FASTADV_BACKEND")
    if not name:
        return None
    name = name.strip().lower()
    if name not in BACKEND_NAMES:
        raise UserError(f"FASTADV_BACKEND must be one of {', '.join(BACKEND_NAMES)}, got {name!r}")
    return name


_chosen: dict = {}  # (device type, forced name) -> module: every op call asks, so remember


def get_backend(device, name: str | None = None) -> ModuleType:
    """The backend module for ``device``: ``name`` if given, else ``$FASTADV_BACKEND``, else the fastest."""
    key = (device.type if isinstance(device, torch.device) else str(device), name or os.environ.get("FASTADV_BACKEND"))
    mod = _chosen.get(key)
    if mod is None:
        mod = _chosen[key] = _pick(torch.device(device), name or forced_backend())
    return mod


def _pick(device: torch.device, name: str | None) -> ModuleType:
    if name is not None:
        mod = _module(name)
        if mod is None or not mod.supports(device):
            raise RuntimeError(
                f"backend {name!r} cannot run on {device} here (available: {available_backends(device)})"
                + (" - for Triton on the CPU set TRITON_INTERPRET=1 before importing fastadv" if name == "triton" else ""))
        return mod
    for cand in _ORDER.get(device.type, ("reference",)):
        mod = _module(cand)
        if mod is not None and mod.supports(device):
            return mod
    return _module("reference")


_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
