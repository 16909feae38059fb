"""The one validation of the ops: every check of user input, for every backend, raising
``TypeError``/``ValueError``/``IndexError`` that names the argument.

The public ops ``torch.ops.fastadv.*`` (``fastadv.ops.library``) call these in their bodies before
any backend runs, so a raw ``torch.ops.fastadv.linf_step_`` call is checked exactly like
``fastadv.ops.linf_step_``, whichever backend then computes it. The backends' kernels assume
validated input (the C++ ones keep memory-safety guards only).

The compute dtype of a float tensor is float64 for float64 and float32 for float32, float16 and
bfloat16 (:func:`compute_dtype`); per-sample vectors and noise are converted to it.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor
from ..errors import UserError, UserTypeError

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_FLOAT_NAMES = "float64, float32, float16 or bfloat16"
Number = Union[int, float]


def compute_dtype(t: Tensor) -> torch.dtype:
    """float64 for float64 tensors, else float32: the dtype every kernel computes in."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def check_tensor(name: str, t, *, float_only: bool = True) -> Tensor:
    if not isinstance(t, Tensor):
        raise UserTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if float_only and t.dtype not in FLOAT_DTYPES:
        raise UserTypeError(f"{name} must be {_FLOAT_NAMES}, got {t.dtype}")
    return t


def check_like(name: str, t, ref: Tensor, ref_name: str, *, same_dtype: bool = True) -> Tensor:
    """``t`` must be a float tensor with ``ref``'s shape, device (and dtype)."""
    check_tensor(name, t)
    if t.shape != ref.shape:
        raise UserError(f"{name} has shape {tuple(t.shape)} but {ref_name} has {tuple(ref.shape)}")
    if t.device != ref.device:
        raise UserError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if same_dtype and t.dtype != ref.dtype:
        raise UserTypeError(f"{name} is {t.dtype} but {ref_name} is {ref.dtype}")
    return t


def check_batched(name: str, t: Tensor) -> Tensor:
    if t.dim() < 1:
        raise UserError(f"{name} must have a batch dimension first, got a 0-dim tensor")
    return t


def check_number(name: str, v) -> float:
    """A finite Python number >= 0, as a float."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UserTypeError(f"{name} must be a float, got {type(v).__name__}")
    if not math.isfinite(v):
        raise UserError(f"{name} must be finite, got {v}")
    if v < 0:
        raise UserError(f"{name} must be >= 0, got {v}")
    return float(v)


def per_sample(name: str, v, n: int, device: torch.device, dtype: torch.dtype = torch.float32, *,
               check: bool = True) -> Tensor:
    """A float or a [N] (or 0-dim) tensor, as a contiguous ``dtype`` [N] tensor on ``device``;
    finite and >= 0. With ``check=False`` a tensor's values are not inspected (a host sync)."""
    if not isinstance(v, Tensor):
        v = check_number(name, v)
        if v > torch.finfo(dtype).max:  # it would become inf in the kernels' compute dtype
            raise UserError(f"{name} = {v:g} does not fit {dtype} (at most "
                            f"{torch.finfo(dtype).max:g}), the dtype the attack computes in")
        return torch.full((n,), v, dtype=dtype, device=device)
    if not check and v.dtype == dtype and v.shape == (n,) and v.device == device and v.is_contiguous():
        return v  # already what the kernels take (the common case: nothing to convert)
    if v.dim() == 0:
        v = v.expand(n)
    if v.shape != (n,):
        raise UserError(f"{name} must be a float or have shape [{n}] (one value per sample), got {tuple(v.shape)}")
    if v.device != device:
        raise UserError(f"{name} is on {v.device} but the batch is on {device}")
    if not (v.dtype.is_floating_point or v.dtype in (torch.int32, torch.int64)):
        raise UserTypeError(f"{name} must be a floating-point tensor, got {v.dtype}")
    v = v.to(dtype).contiguous()
    if check and n:
        if not bool(torch.isfinite(v).all()):
            raise UserError(f"{name} must be finite (it has inf or nan entries)")
        if bool((v < 0).any()):
            raise UserError(f"{name} must be >= 0 (it has negative entries)")
    return v


def check_clip(clip_min, clip_max) -> tuple[float, float]:
    for name, v in (("clip_min", clip_min), ("clip_max", clip_max)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserTypeError(f"{name} must be a float, got {type(v).__name__}")
        if math.isnan(v):
            raise UserError(f"{name} must not be nan")
    if clip_min > clip_max:
        raise UserError(f"clip_min ({clip_min}) must be <= clip_max ({clip_max})")
    return float(clip_min), float(clip_max)


def check_step_args(x, grad, x_nat, noise: Optional[Tensor]) -> None:
    check_batched("x", check_tensor("x", x))
    check_like("grad", grad, x, "x")
    check_like("x_nat", x_nat, x, "x")
    if noise is not None:
        check_like("noise", noise, x, "x", same_dtype=False)
    if x.requires_grad and torch.is_grad_enabled():
        raise UserError("x requires grad: the step is in place; call it under torch.no_grad() or pass x.detach()")


def step_inputs(x, grad, x_nat, eps, alpha, noise, clip_min, clip_max, check: bool):
    """The checked and normalised arguments of a step: ``(eps, alpha, noise, clip_min, clip_max)``
    with eps/alpha [N] and noise in the compute dtype."""
    check_step_args(x, grad, x_nat, noise)
    clip_min, clip_max = check_clip(clip_min, clip_max)
    n, dt = x.shape[0], compute_dtype(x)
    eps = per_sample("eps", eps, n, x.device, dt, check=check)
    alpha = per_sample("alpha", alpha, n, x.device, dt, check=check)
    if noise is not None and noise.dtype != dt:
        noise = noise.to(dt)
    return eps, alpha, noise, clip_min, clip_max


def check_threshold(v) -> float:
    """A finite Python number (any sign), as a float: DAT's FOSC threshold."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UserTypeError(f"threshold must be a float, got {type(v).__name__}")
    if not math.isfinite(v):
        raise UserError(f"threshold must be finite, got {v!r}")
    return float(v)


def check_index_vector(name: str, t, n: int, device: torch.device, dtypes=(torch.int64,)) -> Tensor:
    if not isinstance(t, Tensor):
        raise UserTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        names = " or ".join(str(d) for d in dtypes)
        raise UserTypeError(f"{name} must be {names}, got {t.dtype}")
    if t.shape != (n,):
        raise UserError(f"{name} must have shape [{n}], got {tuple(t.shape)}")
    if t.device != device:
        raise UserError(f"{name} is on {t.device} but the batch is on {device}")
    return t


def check_early_stop_args(logits, y, budget, kappa) -> None:
    check_tensor("logits", logits)
    if logits.dim() != 2:
        raise UserError(f"logits must have shape [N, C], got {tuple(logits.shape)}")
    if logits.shape[0] and logits.shape[1] == 0:
        raise UserError("logits must have at least one class")
    n, dev = logits.shape[0], logits.device
    check_index_vector("y", y, n, dev, (torch.int64, torch.int32))
    check_index_vector("budget", budget, n, dev)
    check_index_vector("kappa", kappa, n, dev)


def check_leave(leave) -> None:
    if not isinstance(leave, Tensor):
        raise UserTypeError(f"leave must be a torch.Tensor, got {type(leave).__name__}")
    if leave.dtype != torch.bool or leave.dim() != 1:
        raise UserTypeError(f"leave must be a 1-D bool tensor, got {leave.dtype} of shape {tuple(leave.shape)}")


def check_n_active(n_active, m: int) -> int:
    if isinstance(n_active, bool) or not isinstance(n_active, int) or not 0 <= n_active <= m:
        raise UserError(f"n_active must be an int in [0, {m}], got {n_active!r}")
    return n_active


def check_plan(src: Tensor, dest, n_active, index, leavers, *, index_required: bool) -> int:
    """``dest`` int64 [M], ``n_active`` in [0, M]; ``index`` int64 [M] with ``leavers`` (rows shaped
    like ``src``'s, same dtype and device). Returns ``n_active``."""
    m = src.shape[0]
    check_index_vector("dest", dest, m, src.device)
    n_active = check_n_active(n_active, m)
    if leavers is None:
        if index_required:
            raise UserError("leavers is required (the leaving rows are written to leavers[index])")
        if index is not None:
            raise UserError("index is given without leavers (index says where in leavers the leaving rows go)")
        return n_active
    check_tensor("leavers", leavers, float_only=False)
    if index is None:
        raise UserError("index is required with leavers (leaving rows are written to leavers[index])")
    check_index_vector("index", index, m, src.device)
    if leavers.dim() != src.dim() or leavers.shape[1:] != src.shape[1:]:
        raise UserError(f"leavers must have shape [*, {', '.join(map(str, src.shape[1:]))}], "
                        f"got {tuple(leavers.shape)}")
    if leavers.device != src.device or leavers.dtype != src.dtype:
        raise UserError(f"leavers is {leavers.dtype} on {leavers.device} but the rows are {src.dtype} on {src.device}")
    return n_active
