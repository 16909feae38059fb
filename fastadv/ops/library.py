"""``torch.ops.fastadv.*``: the kernels registered with ``torch.library``, with fake implementations.

These ops take already-validated tensor arguments (``eps``/``alpha``/``scale`` as float32 [N]
tensors); the friendly Python functions in ``fastadv.ops`` validate and call them. Each op picks
its backend inside its body (``dispatch.get_backend``), so the same op works on every device,
``torch.compile(fullgraph=True)`` traces it as one opaque node, and ``FASTADV_BACKEND`` applies.

Memory layout: the native and Triton kernels see every sample as one dense block of D elements
(contiguous or channels_last both qualify). Tensors in another layout, or in layouts that differ
from ``x``'s, are copied into ``x``'s layout first; the reference backend takes anything.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import dispatch

_LIB = "fastadv"


# The op bodies by name: eager calls from ``fastadv.ops`` run them directly, because the
# dispatcher round trip of ``torch.ops`` costs ~40 µs per call, as much as a fused step at attack
# batch sizes. Under torch.compile the registered ops are used.
EAGER: dict = {}


def _custom_op(name: str, mutates_args):
    def register(fn):
        EAGER[name] = fn
        return torch.library.custom_op(f"{_LIB}::{name}", mutates_args=mutates_args)(fn)
    return register


# ----------------------------------------------------------------------------- layout helpers
def memory_format_of(t: Tensor) -> torch.memory_format:
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.preserve_format  # not row-dense


def _layout_key(t: Tensor) -> tuple:
    # Strides of size-1 dimensions do not change the order of elements in memory.
    return tuple(s for s, n in zip(t.stride(), t.shape) if n != 1)


def _to_layout(t: Optional[Tensor], fmt: torch.memory_format, key: tuple) -> Optional[Tensor]:
    if t is None or t.dim() == 0 or _layout_key(t) == key:
        return t
    return t.contiguous(memory_format=fmt)


def _row_dense(x: Tensor) -> tuple[Tensor, torch.memory_format]:
    fmt = memory_format_of(x)
    if fmt is torch.preserve_format:
        x, fmt = x.contiguous(), torch.contiguous_format
    return x, fmt


def empty_rows(n: int, like: Tensor, fmt: torch.memory_format) -> Tensor:
    """An uninitialised tensor of ``n`` rows shaped and laid out like ``like``."""
    shape = (n,) + tuple(like.shape[1:])
    if fmt in (torch.channels_last, torch.channels_last_3d):
        return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _backend(t: Tensor):
    return dispatch.get_backend(t.device)


def _is_reference(backend) -> bool:
    return backend.__name__.endswith(".reference")


# ----------------------------------------------------------------------------- step ops
def _step(kind: str, x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor,
          noise: Optional[Tensor], clip_min: float, clip_max: float) -> None:
    if x.numel() == 0:
        return
    be = _backend(x)
    fn = getattr(be, kind)
    if _is_reference(be):
        fn(x, grad, x_nat, eps, alpha, noise, clip_min, clip_max)
        return
    work, fmt = _row_dense(x)
    key = _layout_key(work)
    noise = None if noise is None else noise.float()  # kernels read the noise as float32
    grad, x_nat, noise = (_to_layout(t, fmt, key) for t in (grad, x_nat, noise))
    fn(work, grad, x_nat, eps.contiguous(), alpha.contiguous(), noise, clip_min, clip_max)
    if work is not x:
        x.copy_(work)


@_custom_op("linf_step_", mutates_args=("x",))
def linf_step_op(x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor,
                 noise: Optional[Tensor], clip_min: float, clip_max: float) -> None:
    _step("linf_step", x, grad, x_nat, eps, alpha, noise, clip_min, clip_max)


@_custom_op("l2_step_", mutates_args=("x",))
def l2_step_op(x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor,
               noise: Optional[Tensor], clip_min: float, clip_max: float) -> None:
    _step("l2_step", x, grad, x_nat, eps, alpha, noise, clip_min, clip_max)


@linf_step_op.register_fake
def _(x, grad, x_nat, eps, alpha, noise, clip_min, clip_max):
    return None


@l2_step_op.register_fake
def _(x, grad, x_nat, eps, alpha, noise, clip_min, clip_max):
    return None


# ----------------------------------------------------------------------------- random start
@_custom_op("start_from_noise", mutates_args=())
def start_from_noise_op(x_nat: Tensor, r: Tensor, scale: Tensor, uniform: bool,
                        clip_min: float, clip_max: float) -> Tensor:
    if x_nat.numel() == 0:
        return x_nat.clone()
    be = _backend(x_nat)
    if _is_reference(be):
        return be.start_from_noise(x_nat, r, scale, uniform, clip_min, clip_max)
    x_nat, fmt = _row_dense(x_nat)
    r = _to_layout(r, fmt, _layout_key(x_nat))
    return be.start_from_noise(x_nat, r, scale.contiguous(), uniform, clip_min, clip_max)


@start_from_noise_op.register_fake
def _(x_nat, r, scale, uniform, clip_min, clip_max):
    return torch.empty_like(x_nat)


# ----------------------------------------------------------------------------- early stop
@_custom_op("early_stop_update_", mutates_args=("budget", "kappa"))
def early_stop_update_op(logits: Tensor, y: Tensor, budget: Tensor, kappa: Tensor) -> Tensor:
    if logits.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=logits.device)
    be = _backend(logits)
    b, k = budget.contiguous(), kappa.contiguous()  # kernels update contiguous int64 vectors
    leave = be.early_stop_update(logits.contiguous(), y.contiguous(), b, k)
    if b is not budget:
        budget.copy_(b)
    if k is not kappa:
        kappa.copy_(k)
    return leave


@early_stop_update_op.register_fake
def _(logits, y, budget, kappa):
    return torch.empty(logits.shape[0], dtype=torch.bool, device=logits.device)


# ----------------------------------------------------------------------------- compaction
@_custom_op("compaction_plan", mutates_args=())
def compaction_plan_op(leave: Tensor) -> tuple[Tensor, Tensor]:
    if leave.shape[0] == 0:
        return (torch.zeros(0, dtype=torch.int64, device=leave.device),
                torch.zeros((), dtype=torch.int64, device=leave.device))
    return _backend(leave).compaction_plan(leave.contiguous())


@compaction_plan_op.register_fake
def _(leave):
    return (torch.empty(leave.shape[0], dtype=torch.int64, device=leave.device),
            torch.empty((), dtype=torch.int64, device=leave.device))


def _compact(src: Tensor, dest: Tensor, index: Optional[Tensor], out: Optional[Tensor],
             n_active: int) -> Tensor:
    be = _backend(src)
    if _is_reference(be):
        packed = empty_rows(n_active, src, memory_format_of(src))
        be.compact_rows(src, dest, index, out, packed)
        return packed
    src, fmt = _row_dense(src)
    packed = empty_rows(n_active, src, fmt)
    work_out = out
    if out is not None and _layout_key(out) != _layout_key(src):
        work_out = out.contiguous(memory_format=fmt)
    if src.shape[0]:
        be.compact_rows(src, dest, index, work_out, packed)
    if work_out is not out:
        out.copy_(work_out)
    return packed


@_custom_op("compact_rows", mutates_args=("out",))
def compact_rows_op(src: Tensor, dest: Tensor, index: Optional[Tensor], out: Optional[Tensor],
                    n_active: int) -> Tensor:
    return _compact(src, dest, index, out, n_active)


@compact_rows_op.register_fake
def _(src, dest, index, out, n_active):
    return src.new_empty((n_active,) + tuple(src.shape[1:]))


@_custom_op("linf_step_compact", mutates_args=("out",))
def linf_step_compact_op(x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor,
                         noise: Optional[Tensor], dest: Tensor, index: Tensor, out: Tensor,
                         n_active: int, clip_min: float, clip_max: float) -> tuple[Tensor, Tensor]:
    be = _backend(x)
    if _is_reference(be):
        fmt = memory_format_of(x)
        x_next, x_nat_next = empty_rows(n_active, x, fmt), empty_rows(n_active, x_nat, fmt)
        if x.shape[0]:
            be.linf_step_compact(x, grad, x_nat, eps, alpha, noise, dest, index, out,
                                 x_next, x_nat_next, clip_min, clip_max)
        return x_next, x_nat_next
    x, fmt = _row_dense(x)
    key = _layout_key(x)
    noise = None if noise is None else noise.float()  # kernels read the noise as float32
    grad, x_nat, noise = (_to_layout(t, fmt, key) for t in (grad, x_nat, noise))
    work_out = out if _layout_key(out) == key else out.contiguous(memory_format=fmt)
    x_next, x_nat_next = empty_rows(n_active, x, fmt), empty_rows(n_active, x_nat, fmt)
    if x.shape[0]:
        be.linf_step_compact(x, grad, x_nat, eps.contiguous(), alpha.contiguous(), noise,
                             dest.contiguous(), index.contiguous(), work_out, x_next, x_nat_next,
                             clip_min, clip_max)
    if work_out is not out:
        out.copy_(work_out)
    return x_next, x_nat_next


@linf_step_compact_op.register_fake
def _(x, grad, x_nat, eps, alpha, noise, dest, index, out, n_active, clip_min, clip_max):
    shape = (n_active,) + tuple(x.shape[1:])
    return x.new_empty(shape), x_nat.new_empty(shape)
