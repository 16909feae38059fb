"""Plain-PyTorch reference backend: the executable specification of every kernel (SPEC §1).

Every other backend (native C++/CUDA, Triton) is tested against these functions. They take
*validated* inputs (see ``fastadv.ops._validation``): ``eps``/``alpha``/``scale`` are tensors of
shape [N] in the compute dtype, ``noise`` is ``None`` or a compute-dtype tensor shaped like ``x``.
The compute dtype is float64 for float64 tensors and float32 otherwise; all arithmetic is done in
it and rounded once to the storage dtype, in this order:

    linf:  y = x + alpha * sign(g) [+ noise];  y = min(max(y, x_nat - eps), x_nat + eps);
           y = min(max(y, clip_min), clip_max)
    l2:    d = y - x_nat with y = x + alpha * g / max(||g||_2, 1e-12) [+ noise];
           d *= min(1, eps / max(||d||_2, 1e-12));  y = clamp(x_nat + d, clip_min, clip_max)

where ``||v||_2`` is the square root of the sum of squares computed in float64, rounded once to the
compute dtype (so no float32 overflow below components of 1e154, on every backend).

Backends must reproduce the L∞ step bit for bit (every operation in it is exactly rounded in
float32), with two documented exceptions that no comparison can see: the sign of a zero where
``torch.maximum``/``minimum`` meet a (+0, −0) tie (torch's own scalar and vectorised loops disagree
there), and NaN payloads (a NaN stays a NaN). The L2 step involves a reduction, so backends match
it to float32 rounding.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

# Guard for ||g|| = 0 and ||delta|| = 0 in the L2 step (the value of torchattacks/advertorch).
L2_NORM_FLOOR = 1e-12


def supports(device: torch.device) -> bool:
    """The reference runs wherever PyTorch does."""
    return True


def _rows(v: Tensor, like: Tensor) -> Tensor:
    """View a per-sample [N] vector so it broadcasts over the rows of ``like``."""
    return v.view((-1,) + (1,) * (like.dim() - 1))


def _compute(t: Tensor) -> Tensor:
    """``t`` in its compute dtype: float64 stays, everything else becomes float32."""
    return t if t.dtype == torch.float64 else t.float()


def _project_clip_linf(y: Tensor, x_nat: Tensor, eps: Tensor, clip_min: float, clip_max: float) -> Tensor:
    xn = _compute(x_nat)
    e = _rows(eps, y)
    y = torch.minimum(torch.maximum(y, xn - e), xn + e)
    return y.clamp(clip_min, clip_max)


def linf_step(x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor,
              noise: Optional[Tensor], clip_min: float, clip_max: float) -> None:
    """In place on ``x``: x <- clip(proj_inf(x + alpha*sign(grad) [+ noise]))."""
    y = _compute(x) + _rows(alpha, x) * torch.sign(_compute(grad))
    if noise is not None:
        y = y + noise
    x.copy_(_project_clip_linf(y, x_nat, eps, clip_min, clip_max))


def _row_norm(t: Tensor) -> Tensor:
    """Per-sample L2 norm (a float64 sum of squares, rounded once to ``t``'s dtype), shaped to
    broadcast over ``t``'s rows."""
    flat = t.reshape(t.shape[0], -1) if t.numel() else t.new_zeros(t.shape[0], 0)
    squares = flat.double().square()
    return _rows(squares.sum(dim=1).sqrt().to(t.dtype), t)


def l2_step(x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor,
            noise: Optional[Tensor], clip_min: float, clip_max: float) -> None:
    """In place on ``x``: x <- clip(proj_2(x + alpha*grad/||grad|| [+ noise])), per sample."""
    g = _compute(grad)
    y = _compute(x) + _rows(alpha, x) * (g / _row_norm(g).clamp_min(L2_NORM_FLOOR))
    if noise is not None:
        y = y + noise
    xn = _compute(x_nat)
    d = y - xn
    factor = torch.clamp(_rows(eps, x) / _row_norm(d).clamp_min(L2_NORM_FLOOR), max=1.0)
    x.copy_((xn + d * factor).clamp(clip_min, clip_max))


def _row_sum64(t: Tensor, like: Tensor) -> Tensor:
    """Per-sample sum of ``t`` in float64, rounded once to ``like``'s dtype, shape [N]."""
    flat = t.reshape(t.shape[0], -1) if t.numel() else t.new_zeros(t.shape[0], 0)
    return flat.double().sum(dim=1).to(like.dtype)


def linf_fosc_step(x: Tensor, grad: Tensor, x_nat: Tensor, x_start: Tensor, eps: Tensor,
                   alpha: Tensor, threshold: float, always: bool, clip_min: float,
                   clip_max: float) -> Tensor:
    """DAT's FOSC and step, in place on ``x``; returns the FOSC [N] (compute dtype).

    c = eps * ||g||_1 - <x - x_start, g>, the two sums in float64 over the compute-dtype terms
    (|g| and (x - x_start) * g, the product in float64), each rounded once to the compute dtype;
    rows with ``always`` or c > threshold take the L∞ step (as :func:`linf_step`), the others
    (c <= threshold, or NaN) keep x.
    """
    g = _compute(grad)
    l1 = _row_sum64(g.abs(), g)
    diff = _compute(x) - _compute(x_start)
    dot = _row_sum64(diff.double() * g.double(), g)
    c = eps * l1 - dot
    stepped = x.clone()
    linf_step(stepped, grad, x_nat, eps, alpha, None, clip_min, clip_max)
    move = torch.ones_like(c, dtype=torch.bool) if always else c > threshold
    x.copy_(torch.where(_rows(move, x), stepped, x))
    return c


def start_from_noise(x_nat: Tensor, r: Tensor, scale: Tensor, uniform: bool,
                     clip_min: float, clip_max: float) -> Tensor:
    """Random start from pre-drawn noise ``r`` (compute dtype, shaped like ``x_nat``).

    uniform: clip(x_nat + (2r - 1) * scale) with r ~ U[0, 1), i.e. U(-eps, eps);
    normal:  clip(x_nat + r * scale) with r ~ N(0, 1) and scale = sigma.
    """
    s = _rows(scale, x_nat)
    delta = (2.0 * r - 1.0) * s if uniform else r * s
    return (_compute(x_nat) + delta).clamp(clip_min, clip_max).to(x_nat.dtype)


def early_stop_update(logits: Tensor, y: Tensor, budget: Tensor, kappa: Tensor) -> Tensor:
    """One check of FAT's early stop (SPEC §2.1), in place on ``budget`` and ``kappa``.

    wrong = argmax(logits) != y (first index on ties, NaN counts as the maximum, as torch.argmax);
    leave = wrong & budget == 0;  budget -= wrong & ~leave;  kappa += ~wrong.  Returns ``leave``.
    """
    wrong = logits.argmax(dim=1) != y
    leave = wrong & (budget == 0)
    budget.sub_((wrong & ~leave).to(budget.dtype))
    kappa.add_((~wrong).to(kappa.dtype))
    return leave


def compaction_plan(leave: Tensor) -> tuple[Tensor, Tensor]:
    """Destination row of each still-active row in the packed batch (stable), -1 for leavers.

    Returns ``(dest int64 [M], n_active int64 0-dim tensor)``; no host synchronisation.
    """
    keep = ~leave
    dest = torch.cumsum(keep, 0, dtype=torch.int64) - 1
    dest = torch.where(keep, dest, torch.full_like(dest, -1))
    return dest, keep.sum(dtype=torch.int64)


def compact_rows(src: Tensor, dest: Tensor, index: Optional[Tensor], leavers: Optional[Tensor],
                 packed: Tensor, errors: Tensor) -> None:
    """packed[dest[i]] = src[i] where dest[i] >= 0; leavers[index[i]] = src[i] where dest[i] == -1.

    ``packed`` has ``n_active`` rows. ``leavers`` (with ``index``) may be None: leavers are then
    dropped. Rows whose dest/index is out of range are not written; they set ``errors[0] = 1``.
    """
    if src.shape[0] == 0:
        return
    n_active = packed.shape[0]
    stay = (dest >= 0) & (dest < n_active)
    go = dest == -1
    bad = ~(stay | go)
    if leavers is not None:
        go_ok = go & (index >= 0) & (index < leavers.shape[0])
        bad = bad | (go & ~go_ok)
        go = go_ok
    errors.copy_(torch.maximum(errors, bad.any().to(errors.dtype).view(1)))  # no host sync
    # Staying rows go to packed, the rest to a spare row n_active that is dropped: no boolean
    # indexing, no host sync.
    spare = torch.empty((n_active + 1,) + tuple(src.shape[1:]), dtype=src.dtype, device=src.device)
    spare.index_copy_(0, torch.where(stay, dest, torch.full_like(dest, n_active)), src)
    packed.copy_(spare[:n_active])
    if leavers is not None:
        # Same trick: leaving rows go to their index, the others to a spare row R.
        rows = leavers.shape[0]
        spare = torch.cat([leavers, leavers.new_empty((1,) + tuple(leavers.shape[1:]))])
        spare.index_copy_(0, torch.where(go, index, torch.full_like(index, rows)), src)
        leavers.copy_(spare[:rows])


def linf_step_compact(x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor,
                      noise: Optional[Tensor], dest: Tensor, index: Tensor, leavers: Tensor,
                      x_next: Tensor, x_nat_next: Tensor, errors: Tensor, clip_min: float, clip_max: float) -> None:
    """Fused L∞ step and compaction.

    Leavers (dest == -1): leavers[index[i]] = x[i] (the iterate at which they left, no update).
    The others: x_next[dest[i]] = linf_step(x[i]); x_nat_next[dest[i]] = x_nat[i].
    ``x`` itself is not modified; out-of-range rows are not written and set ``errors``.
    """
    stepped = x.clone()
    linf_step(stepped, grad, x_nat, eps, alpha, noise, clip_min, clip_max)
    stay = _rows(dest >= 0, x)
    compact_rows(torch.where(stay, stepped, x), dest, index, leavers, x_next, errors)
    compact_rows(x_nat, dest, None, None, x_nat_next, errors)
