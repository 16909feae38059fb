"""Fused adversarial-attack kernels (SPEC §1): the public, documented Python API.

=================================  =====================================================================
function                           does
=================================  =====================================================================
``linf_step_``                     x ← clip(proj∞(x + α·sign(g) [+ noise])), in place, returns x
``l2_step_``                       x ← clip(proj₂(x + α·g/‖g‖ [+ noise])), per sample, in place
``random_start``                   "uniform": clip(x + U(−ε, ε)); "normal": clip(x + σ·N(0, I)); None: x
``early_stop_update_``             FAT's per-check update of ``budget``/``kappa``; returns ``leave``
``compaction_plan``                destination rows of the still-active samples + their count (1 host read)
``compact_rows``                   pack active rows to the front, scatter leavers to ``out[index]``
``linf_step_compact``              the L∞ step fused with compaction (one pass over memory)
``available_backends``             e.g. ``["native", "reference"]`` on a CPU build
=================================  =====================================================================

``eps``/``alpha`` are floats or per-sample tensors of shape [N]. Tensors may be float32, float16 or
bfloat16 (computed in float32, rounded once), contiguous or channels_last, any N including 0.
Bad input raises ``TypeError``/``ValueError`` naming the argument. Each function takes
``check=True``; ``check=False`` skips the inspection of tensor ``eps``/``alpha`` values, which
costs a host synchronisation (the attack engine validates once per attack instead).
The same kernels are ``torch.ops.fastadv.*`` (see ``fastadv.ops.library``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import library  # registers torch.ops.fastadv.*
from ._validation import (check_batched, check_clip, check_index_vector, check_like, check_step_args,
                          check_tensor, per_sample)
from .dispatch import available_backends, get_backend

__all__ = ["linf_step_", "l2_step_", "random_start", "early_stop_update_", "compaction_plan",
           "compact_rows", "linf_step_compact", "available_backends", "get_backend"]


def _call(name: str, *args):
    """``torch.ops.fastadv.<name>`` while torch.compile traces; in eager, the op's body directly
    (same code, without the ~40 µs dispatcher round trip)."""
    if torch.compiler.is_compiling():
        return getattr(torch.ops.fastadv, name)(*args)
    return library.EAGER[name](*args)


def linf_step_(x: Tensor, grad: Tensor, x_nat: Tensor, eps, alpha, clip_min: float = 0.0,
               clip_max: float = 1.0, *, noise: Optional[Tensor] = None, check: bool = True) -> Tensor:
    """L∞ PGD step in place: ``x ← clip(min(max(x + α·sign(grad) + noise, x_nat − ε), x_nat + ε))``.

    ``sign(0) = 0``. ``noise`` (optional, shaped like ``x``) is FAT's ω·N(0, I) term, added before
    the projection. Returns ``x``.
    """
    check_step_args(x, grad, x_nat, noise)
    clip_min, clip_max = check_clip(clip_min, clip_max)
    n = x.shape[0]
    e = per_sample("eps", eps, n, x.device, check=check)
    a = per_sample("alpha", alpha, n, x.device, check=check)
    _call("linf_step_", x, grad, x_nat, e, a, noise, clip_min, clip_max)
    return x


def l2_step_(x: Tensor, grad: Tensor, x_nat: Tensor, eps, alpha, clip_min: float = 0.0,
             clip_max: float = 1.0, *, noise: Optional[Tensor] = None, check: bool = True) -> Tensor:
    """L2 PGD step in place, per sample: ``x ← clip(x_nat + δ·min(1, ε/‖δ‖))`` with
    ``δ = x + α·g/‖g‖ + noise − x_nat`` (norms guarded against 0 by 1e-12). Returns ``x``."""
    check_step_args(x, grad, x_nat, noise)
    clip_min, clip_max = check_clip(clip_min, clip_max)
    n = x.shape[0]
    e = per_sample("eps", eps, n, x.device, check=check)
    a = per_sample("alpha", alpha, n, x.device, check=check)
    _call("l2_step_", x, grad, x_nat, e, a, noise, clip_min, clip_max)
    return x


RANDOM_START_KINDS = ("uniform", "normal", None)


def random_start(x_nat: Tensor, eps, kind: Optional[str] = "uniform", sigma: float = 0.001,
                 clip_min: float = 0.0, clip_max: float = 1.0,
                 generator: Optional[torch.Generator] = None, *, check: bool = True) -> Tensor:
    """A new tensor: ``"uniform"`` clip(x + U(−ε, ε)), ``"normal"`` clip(x + σ·N(0, I)),
    ``None`` a copy of ``x_nat``. Noise is drawn on ``x_nat``'s device (with ``generator`` if given)."""
    check_batched("x_nat", check_tensor("x_nat", x_nat))
    clip_min, clip_max = check_clip(clip_min, clip_max)
    if kind not in RANDOM_START_KINDS:
        raise ValueError(f"kind must be 'uniform', 'normal' or None, got {kind!r}")
    n = x_nat.shape[0]
    e = per_sample("eps", eps, n, x_nat.device, check=check)
    if kind is None:
        return x_nat.clone()
    if generator is not None and generator.device != x_nat.device:
        raise ValueError(f"generator is on {generator.device} but x_nat is on {x_nat.device}")
    r = torch.empty_like(x_nat, dtype=torch.float32)
    if kind == "uniform":
        r.uniform_(0.0, 1.0, generator=generator)
        scale = e
    else:
        scale = per_sample("sigma", sigma, n, x_nat.device, check=check)
        r.normal_(0.0, 1.0, generator=generator)
    return _call("start_from_noise", x_nat, r, scale, kind == "uniform", clip_min, clip_max)


def early_stop_update_(logits: Tensor, y: Tensor, budget: Tensor, kappa: Tensor) -> Tensor:
    """FAT's early-stop update for one check (SPEC §1), in place on int64 ``budget``/``kappa``.

    ``wrong = argmax(logits) != y``; ``leave = wrong & (budget == 0)``;
    ``budget -= wrong & ~leave``; ``kappa += ~wrong``. Returns the bool ``leave`` mask [N].
    """
    check_tensor("logits", logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [N, C], got {tuple(logits.shape)}")
    if logits.shape[0] and logits.shape[1] == 0:
        raise ValueError("logits must have at least one class")
    n, dev = logits.shape[0], logits.device
    check_index_vector("y", y, n, dev, (torch.int64, torch.int32))
    check_index_vector("budget", budget, n, dev)
    check_index_vector("kappa", kappa, n, dev)
    return _call("early_stop_update_", logits, y, budget, kappa)


def compaction_plan(leave: Tensor) -> tuple[Tensor, int]:
    """From the bool ``leave`` mask [M]: ``dest`` (int64 [M]; the packed row of each staying sample
    in stable order, −1 for leavers) and ``n_active`` (a Python int: the one host read per check)."""
    if not isinstance(leave, Tensor):
        raise TypeError(f"leave must be a torch.Tensor, got {type(leave).__name__}")
    if leave.dtype != torch.bool or leave.dim() != 1:
        raise TypeError(f"leave must be a 1-D bool tensor, got {leave.dtype} of shape {tuple(leave.shape)}")
    dest, count = _call("compaction_plan", leave)
    return dest, int(count)


def _check_plan(src: Tensor, dest: Tensor, n_active: int) -> None:
    check_index_vector("dest", dest, src.shape[0], src.device)
    if isinstance(n_active, bool) or not isinstance(n_active, int) or not 0 <= n_active <= src.shape[0]:
        raise ValueError(f"n_active must be an int in [0, {src.shape[0]}], got {n_active!r}")


def _check_out(out: Tensor, index: Optional[Tensor], src: Tensor) -> None:
    check_tensor("out", out, float_only=False)
    if index is None:
        raise ValueError("index is required with out (leavers are written to out[index])")
    check_index_vector("index", index, src.shape[0], src.device)
    if out.dim() != src.dim() or out.shape[1:] != src.shape[1:]:
        raise ValueError(f"out must have shape [*, {', '.join(map(str, src.shape[1:]))}], got {tuple(out.shape)}")
    if out.device != src.device or out.dtype != src.dtype:
        raise ValueError(f"out is {out.dtype} on {out.device} but the rows are {src.dtype} on {src.device}")


def compact_rows(src: Tensor, dest: Tensor, n_active: int, index: Optional[Tensor] = None,
                 out: Optional[Tensor] = None) -> Tensor:
    """Compaction: a new tensor ``packed`` with ``packed[dest[i]] = src[i]`` for every staying row
    (``dest[i] >= 0``, stable order) and, if ``out`` is given, ``out[index[i]] = src[i]`` for every
    leaving row (``dest[i] == -1``). ``src`` is any dtype with the batch first; ``index`` holds the
    rows' positions in ``out`` (their original order). With all ``dest == -1`` it is the final
    scatter of survivors back to input order."""
    check_batched("src", check_tensor("src", src, float_only=False))
    _check_plan(src, dest, n_active)
    if out is not None:
        _check_out(out, index, src)
    return _call("compact_rows", src, dest, index, out, n_active)


def linf_step_compact(x: Tensor, grad: Tensor, x_nat: Tensor, eps, alpha, dest: Tensor,
                      n_active: int, index: Tensor, out: Tensor, clip_min: float = 0.0,
                      clip_max: float = 1.0, *, noise: Optional[Tensor] = None,
                      check: bool = True) -> tuple[Tensor, Tensor]:
    """The L∞ step fused with compaction, one pass over memory. For each row i:

    - leaving (``dest[i] == -1``): ``out[index[i]] = x[i]`` (no update: the iterate at which it left);
    - staying: ``x_next[dest[i]] = linf_step(x[i])``, ``x_nat_next[dest[i]] = x_nat[i]``.

    Returns ``(x_next, x_nat_next)`` with ``n_active`` rows; ``x`` is not modified.
    """
    check_step_args(x, grad, x_nat, noise)
    clip_min, clip_max = check_clip(clip_min, clip_max)
    _check_plan(x, dest, n_active)
    _check_out(out, index, x)
    n = x.shape[0]
    e = per_sample("eps", eps, n, x.device, check=check)
    a = per_sample("alpha", alpha, n, x.device, check=check)
    return _call("linf_step_compact", x, grad, x_nat, e, a, noise, dest, index, out,
                                               n_active, clip_min, clip_max)


