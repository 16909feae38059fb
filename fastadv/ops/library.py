"""``torch.ops.fastadv.*``: the public ops, each with its fake beside it.

Each op body validates its arguments once (``fastadv.ops._validation``, the same for every
backend), brings the tensors into one memory layout, and calls the kernel of the backend that
``dispatch.get_backend`` picks for the device: ``torch.ops.fastadv._*`` (native C++/CUDA), Triton,
or the reference. ``torch.compile(fullgraph=True)`` traces each op as one opaque node; the fakes
allocate outputs with the strides the real op gives them (:func:`empty_rows`).

Memory layout: the native and Triton kernels see every sample as one dense block of D elements
(contiguous or channels_last both qualify). Tensors in another layout, or in layouts that differ
from ``x``'s, are copied into ``x``'s layout first; the reference backend takes anything. Inputs
that partially overlap the tensor an op writes are copied first (:func:`unaliased`).

Invalid compaction plans: no backend writes out of bounds. A row whose ``dest``/``index`` is out of
range is skipped and a flag on the device is raised; the op raises IndexError on it at once on the
CPU and, on CUDA, with ``check=True`` (one host read); with ``check=False`` (what the attacks pass)
the next ``fastadv.ops.compaction_plan`` reads the flag together with its count and raises.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _validation as v
from . import dispatch
from ..errors import UserTypeError

_LIB = "fastadv"


# The op bodies by name: eager calls from ``fastadv.ops`` run them directly, because the
# dispatcher round trip of a Python custom op costs ~40 µs per call, as much as a fused step at
# attack batch sizes. Under torch.compile the registered ops are used.
EAGER: dict = {}


def _custom_op(name: str, mutates_args):
    def register(fn):
        EAGER[name] = fn
        return torch.library.custom_op(f"{_LIB}::{name}", mutates_args=mutates_args)(fn)
    return register


# ----------------------------------------------------------------------------- layout helpers
def memory_format_of(t: Tensor) -> torch.memory_format:
    """The format whose dense layout ``t`` has; ``preserve_format`` when it is not row-dense."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.preserve_format  # not row-dense


def empty_rows(n: int, like: Tensor) -> Tensor:
    """An uninitialised tensor of ``n`` rows shaped like ``like``, channels_last when ``like`` is
    (else contiguous): the layout of every op's outputs, real and fake alike."""
    shape = (n,) + tuple(like.shape[1:])
    fmt = memory_format_of(like)
    if fmt in (torch.channels_last, torch.channels_last_3d):
        return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _layout_key(t: Tensor) -> tuple:
    # Strides of size-1 dimensions do not change the order of elements in memory.
    return tuple(s for s, n in zip(t.stride(), t.shape) if n != 1)


def _to_layout(t: Optional[Tensor], like: Tensor) -> Optional[Tensor]:
    """``t`` (shaped like ``like``) in ``like``'s row-dense layout, copied only if needed."""
    if t is None or t.stride() == like.stride() or t.dim() == 0 or _layout_key(t) == _layout_key(like):
        return t
    fmt = memory_format_of(like)
    return t.contiguous(memory_format=torch.contiguous_format if fmt is torch.preserve_format else fmt)


def _row_dense(x: Tensor) -> Tensor:
    return x if memory_format_of(x) is not torch.preserve_format else x.contiguous()


def _byte_span(t: Tensor) -> tuple[int, int]:
    """[first, last) bytes of ``t``'s elements in its storage."""
    size = t.element_size()
    first = t.storage_offset() * size
    extent = sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1
    return first, first + extent * size


def unaliased(written: Tensor, t: Optional[Tensor], same_view_ok: bool = True) -> Optional[Tensor]:
    """``t``, or a copy of it when it overlaps ``written`` in memory (an op reads all of its inputs
    before it writes, in the reference: a kernel that writes while it reads must not see rows it
    already wrote). The very same view (same start, shape and strides) needs no copy for an
    element-wise op (``same_view_ok``), which reads each element before writing it; a scatter
    (compaction) writes rows it has yet to read, so it passes ``same_view_ok=False``."""
    if t is None or t.numel() == 0 or written.numel() == 0:
        return t
    if t.untyped_storage().data_ptr() != written.untyped_storage().data_ptr():
        return t
    a0, a1 = _byte_span(t)
    b0, b1 = _byte_span(written)
    if a1 <= b0 or b1 <= a0:
        return t
    if (same_view_ok and t.data_ptr() == written.data_ptr() and t.shape == written.shape
            and t.stride() == written.stride() and t.dtype == written.dtype):
        return t
    return t.clone()


# ----------------------------------------------------------------------------- error flag
_ERRORS: dict = {}


def error_flag(device: torch.device) -> Tensor:
    """The int32 [1] flag the compaction kernels raise (instead of writing out of bounds) on ``device``."""
    flag = _ERRORS.get(device)
    if flag is None:
        flag = _ERRORS[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return flag


def raise_if_flagged(device: torch.device, flagged: bool) -> None:
    if flagged:
        error_flag(device).zero_()
        raise IndexError("compaction plan out of range: dest must be in [-1, n_active) and each leaving "
                         "row's index in [0, rows of leavers); those rows were not written")


def _after_compaction(device: torch.device, check: bool) -> None:
    # On the CPU reading the flag is free: raise at once. On CUDA only when asked (a host read);
    # otherwise compaction_plan reads it with its count.
    if device.type == "cpu" or check:
        raise_if_flagged(device, bool(error_flag(device)))


# ----------------------------------------------------------------------------- step ops
def _step(kind: str, x: Tensor, grad: Tensor, x_nat: Tensor, eps, alpha, noise: Optional[Tensor],
          clip_min: float, clip_max: float, check: bool) -> None:
    eps, alpha, noise, clip_min, clip_max = v.step_inputs(x, grad, x_nat, eps, alpha, noise, clip_min,
                                                          clip_max, check)
    if x.numel() == 0:
        return
    grad, x_nat, noise = (unaliased(x, t) for t in (grad, x_nat, noise))
    be = dispatch.get_backend(x.device)
    if dispatch.is_reference(be):
        getattr(be, kind)(x, grad, x_nat, eps, alpha, noise, clip_min, clip_max)
        return
    work = _row_dense(x)
    grad, x_nat, noise = (_to_layout(t, work) for t in (grad, x_nat, noise))
    getattr(be, kind)(work, grad, x_nat, eps, alpha, noise, clip_min, clip_max)
    if work is not x:
        x.copy_(work)


@_custom_op("linf_step_", mutates_args=("x",))
def linf_step_(x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor, noise: Optional[Tensor] = None,
               clip_min: float = 0.0, clip_max: float = 1.0, check: bool = True) -> None:
    _step("linf_step", x, grad, x_nat, eps, alpha, noise, clip_min, clip_max, check)


@linf_step_.register_fake
def _(x, grad, x_nat, eps, alpha, noise=None, clip_min=0.0, clip_max=1.0, check=True):
    return None


@_custom_op("l2_step_", mutates_args=("x",))
def l2_step_(x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor, noise: Optional[Tensor] = None,
             clip_min: float = 0.0, clip_max: float = 1.0, check: bool = True) -> None:
    _step("l2_step", x, grad, x_nat, eps, alpha, noise, clip_min, clip_max, check)


@l2_step_.register_fake
def _(x, grad, x_nat, eps, alpha, noise=None, clip_min=0.0, clip_max=1.0, check=True):
    return None


@_custom_op("linf_fosc_step_", mutates_args=("x",))
def linf_fosc_step_(x: Tensor, grad: Tensor, x_nat: Tensor, x_start: Tensor, eps: Tensor,
                    alpha: Tensor, threshold: float, always: bool = False, clip_min: float = 0.0,
                    clip_max: float = 1.0, check: bool = True) -> Tensor:
    """DAT's FOSC ``c = eps·||g||_1 − <x − x_start, g>`` per row, fused with the L∞ step of the
    rows with ``always`` or ``c > threshold`` (in place on ``x``); returns ``c`` [N]."""
    eps, alpha, _, clip_min, clip_max = v.step_inputs(x, grad, x_nat, eps, alpha, None, clip_min,
                                                      clip_max, check)
    v.check_like("x_start", x_start, x, "x")
    threshold = v.check_threshold(threshold)
    if not isinstance(always, bool):
        raise UserTypeError(f"always must be a bool, got {type(always).__name__}")
    n = x.shape[0]
    if n == 0 or x.numel() == 0:
        return torch.zeros(n, dtype=v.compute_dtype(x), device=x.device)
    grad, x_nat, x_start = (unaliased(x, t) for t in (grad, x_nat, x_start))
    be = dispatch.get_backend(x.device)
    if dispatch.is_reference(be):
        return be.linf_fosc_step(x, grad, x_nat, x_start, eps, alpha, threshold, always, clip_min,
                                 clip_max)
    work = _row_dense(x)
    grad, x_nat, x_start = (_to_layout(t, work) for t in (grad, x_nat, x_start))
    c = be.linf_fosc_step(work, grad, x_nat, x_start, eps, alpha, threshold, always, clip_min,
                          clip_max)
    if work is not x:
        x.copy_(work)
    return c


@linf_fosc_step_.register_fake
def _(x, grad, x_nat, x_start, eps, alpha, threshold, always=False, clip_min=0.0, clip_max=1.0,
      check=True):
    return x.new_empty(x.shape[0], dtype=v.compute_dtype(x))


# ----------------------------------------------------------------------------- random start
@_custom_op("start_from_noise", mutates_args=())
def start_from_noise(x_nat: Tensor, r: Tensor, scale: Tensor, uniform: bool, clip_min: float = 0.0,
                     clip_max: float = 1.0, check: bool = True) -> Tensor:
    """clip(x_nat + (2r − 1)·scale) (``uniform``) or clip(x_nat + r·scale), a new tensor; ``r`` is
    the pre-drawn noise (U[0, 1) or N(0, 1)), shaped like ``x_nat``."""
    v.check_batched("x_nat", v.check_tensor("x_nat", x_nat))
    v.check_like("r", r, x_nat, "x_nat", same_dtype=False)
    clip_min, clip_max = v.check_clip(clip_min, clip_max)
    dt = v.compute_dtype(x_nat)
    scale = v.per_sample("scale", scale, x_nat.shape[0], x_nat.device, dt, check=check)
    r = r.to(dt)
    be = dispatch.get_backend(x_nat.device)
    if x_nat.numel() == 0 or dispatch.is_reference(be):
        out = empty_rows(x_nat.shape[0], x_nat)
        if x_nat.numel():
            out.copy_(be.start_from_noise(x_nat, r, scale, uniform, clip_min, clip_max))
        return out
    x_nat = _row_dense(x_nat)
    return be.start_from_noise(x_nat, _to_layout(r, x_nat), scale, uniform, clip_min, clip_max)


@start_from_noise.register_fake
def _(x_nat, r, scale, uniform, clip_min=0.0, clip_max=1.0, check=True):
    return empty_rows(x_nat.shape[0], x_nat)


# ----------------------------------------------------------------------------- early stop
@_custom_op("early_stop_update_", mutates_args=("budget", "kappa"))
def early_stop_update_(logits: Tensor, y: Tensor, budget: Tensor, kappa: Tensor) -> Tensor:
    v.check_early_stop_args(logits, y, budget, kappa)
    if logits.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=logits.device)
    b, k = budget.contiguous(), kappa.contiguous()  # kernels update contiguous int64 vectors
    leave = dispatch.get_backend(logits.device).early_stop_update(logits.contiguous(), y.contiguous(), b, k)
    if b is not budget:
        budget.copy_(b)
    if k is not kappa:
        kappa.copy_(k)
    return leave


@early_stop_update_.register_fake
def _(logits, y, budget, kappa):
    return torch.empty(logits.shape[0], dtype=torch.bool, device=logits.device)


# ----------------------------------------------------------------------------- compaction
@_custom_op("compaction_plan", mutates_args=())
def compaction_plan(leave: Tensor) -> tuple[Tensor, Tensor]:
    v.check_leave(leave)
    if leave.shape[0] == 0:
        return (torch.zeros(0, dtype=torch.int64, device=leave.device),
                torch.zeros((), dtype=torch.int64, device=leave.device))
    return dispatch.get_backend(leave.device).compaction_plan(leave.contiguous())


@compaction_plan.register_fake
def _(leave):
    return (torch.empty(leave.shape[0], dtype=torch.int64, device=leave.device),
            torch.empty((), dtype=torch.int64, device=leave.device))


@_custom_op("compact_rows", mutates_args=("leavers",))
def compact_rows(src: Tensor, dest: Tensor, n_active: int, index: Optional[Tensor] = None,
                 leavers: Optional[Tensor] = None, check: bool = True) -> Tensor:
    """``packed[dest[i]] = src[i]`` for the staying rows (returned, ``n_active`` rows) and
    ``leavers[index[i]] = src[i]`` for the leaving ones (``dest[i] == -1``)."""
    v.check_batched("src", v.check_tensor("src", src, float_only=False))
    n_active = v.check_plan(src, dest, n_active, index, leavers, index_required=False)
    src = unaliased(leavers, src, same_view_ok=False) if leavers is not None else src
    be = dispatch.get_backend(src.device)
    if src.numel() == 0 and src.shape[0]:  # rows of no elements: nothing moves, but the plan is checked
        be = dispatch.get_backend(src.device, "reference")
    if dispatch.is_reference(be):
        packed = empty_rows(n_active, src)
        be.compact_rows(src, dest, index, leavers, packed, error_flag(src.device))
    else:
        src = _row_dense(src)
        packed = empty_rows(n_active, src)
        work = _to_layout(leavers, src)
        if src.shape[0]:
            be.compact_rows(src, dest.contiguous(), None if index is None else index.contiguous(), work, packed,
                            error_flag(src.device))
        if work is not leavers:
            leavers.copy_(work)
    _after_compaction(src.device, check)
    return packed


@compact_rows.register_fake
def _(src, dest, n_active, index=None, leavers=None, check=True):
    return empty_rows(n_active, src)


@_custom_op("linf_step_compact", mutates_args=("leavers",))
def linf_step_compact(x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor, dest: Tensor,
                      n_active: int, index: Tensor, leavers: Tensor, noise: Optional[Tensor] = None,
                      clip_min: float = 0.0, clip_max: float = 1.0, check: bool = True) -> tuple[Tensor, Tensor]:
    """The L∞ step fused with compaction: ``leavers[index[i]] = x[i]`` for the leaving rows; the
    others are stepped into ``x_next[dest[i]]`` with ``x_nat_next[dest[i]] = x_nat[i]``."""
    eps, alpha, noise, clip_min, clip_max = v.step_inputs(x, grad, x_nat, eps, alpha, noise, clip_min,
                                                          clip_max, check)
    n_active = v.check_plan(x, dest, n_active, index, leavers, index_required=True)
    x, grad, x_nat, noise = (unaliased(leavers, t, same_view_ok=False) for t in (x, grad, x_nat, noise))
    be = dispatch.get_backend(x.device)
    if x.numel() == 0 and x.shape[0]:  # rows of no elements: nothing moves, but the plan is checked
        be = dispatch.get_backend(x.device, "reference")
    if dispatch.is_reference(be):
        x_next, x_nat_next = empty_rows(n_active, x), empty_rows(n_active, x)
        if x.shape[0]:
            be.linf_step_compact(x, grad, x_nat, eps, alpha, noise, dest, index, leavers, x_next, x_nat_next,
                                 error_flag(x.device), clip_min, clip_max)
    else:
        x = _row_dense(x)
        grad, x_nat, noise, work = (_to_layout(t, x) for t in (grad, x_nat, noise, leavers))
        x_next, x_nat_next = empty_rows(n_active, x), empty_rows(n_active, x)
        if x.shape[0]:
            be.linf_step_compact(x, grad, x_nat, eps, alpha, noise, dest.contiguous(), index.contiguous(), work,
                                 x_next, x_nat_next, error_flag(x.device), clip_min, clip_max)
        if work is not leavers:
            leavers.copy_(work)
    _after_compaction(x.device, check)
    return x_next, x_nat_next


@linf_step_compact.register_fake
def _(x, grad, x_nat, eps, alpha, dest, n_active, index, leavers, noise=None, clip_min=0.0, clip_max=1.0,
      check=True):
    return empty_rows(n_active, x), empty_rows(n_active, x)  # both in x's layout
