"""Argument checks shared by the public ops: clear ``TypeError``/``ValueError`` naming the argument.

Kernels never see bad input: every public function validates first (SPEC §1).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
Number = Union[int, float]


def check_tensor(name: str, t, *, float_only: bool = True) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if float_only and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    return t


def check_like(name: str, t, ref: Tensor, ref_name: str, *, same_dtype: bool = True) -> Tensor:
    """``t`` must be a float tensor with ``ref``'s shape, device (and dtype)."""
    check_tensor(name, t)
    if t.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)} but {ref_name} has {tuple(ref.shape)}")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if same_dtype and t.dtype != ref.dtype:
        raise TypeError(f"{name} is {t.dtype} but {ref_name} is {ref.dtype}")
    return t


def check_batched(name: str, t: Tensor) -> Tensor:
    if t.dim() < 1:
        raise ValueError(f"{name} must have a batch dimension first, got a 0-dim tensor")
    return t


def per_sample(name: str, v, n: int, device: torch.device, *, check: bool = True) -> Tensor:
    """A float or a [N] tensor, as a float32 [N] tensor on ``device``; must be finite and >= 0.

    With ``check=False`` a tensor's values are not inspected (that would cost a host sync).
    """
    if isinstance(v, bool):
        raise TypeError(f"{name} must be a float or a tensor of shape [N], got bool")
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
        return torch.full((n,), float(v), dtype=torch.float32, device=device)
    if not isinstance(v, Tensor):
        raise TypeError(f"{name} must be a float or a tensor of shape [N], got {type(v).__name__}")
    if v.dim() == 0:
        v = v.expand(n)
    if v.shape != (n,):
        raise ValueError(f"{name} must be a float or have shape [{n}] (one value per sample), got {tuple(v.shape)}")
    if v.device != device:
        raise ValueError(f"{name} is on {v.device} but the batch is on {device}")
    if not (v.dtype.is_floating_point or v.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must be a floating-point tensor, got {v.dtype}")
    v = v.to(torch.float32).contiguous()
    if check and n:
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} must be finite (it has inf or nan entries)")
        if bool((v < 0).any()):
            raise ValueError(f"{name} must be >= 0 (it has negative entries)")
    return v


def check_clip(clip_min, clip_max) -> tuple[float, float]:
    for name, v in (("clip_min", clip_min), ("clip_max", clip_max)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name} must be a float, got {type(v).__name__}")
        if math.isnan(v):
            raise ValueError(f"{name} must not be nan")
    if clip_min > clip_max:
        raise ValueError(f"clip_min ({clip_min}) must be <= clip_max ({clip_max})")
    return float(clip_min), float(clip_max)


def check_step_args(x, grad, x_nat, noise: Optional[Tensor]) -> None:
    check_batched("x", check_tensor("x", x))
    check_like("grad", grad, x, "x")
    check_like("x_nat", x_nat, x, "x")
    if noise is not None:
        check_like("noise", noise, x, "x", same_dtype=False)
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError("x requires grad: the step is in place; call it under torch.no_grad() or pass x.detach()")


def check_index_vector(name: str, t, n: int, device: torch.device, dtypes=(torch.int64,)) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        names = " or ".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must be {names}, got {t.dtype}")
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape [{n}], got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the batch is on {device}")
    return t
