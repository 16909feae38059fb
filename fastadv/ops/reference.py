"""Plain-PyTorch reference backend: the executable specification of every kernel (SPEC §1).

Every other backend (native C++/CUDA, Triton) is tested against these functions. They take
*validated* inputs (see ``fastadv.ops._validation``): ``eps``/``alpha``/``scale`` are float32
tensors of shape [N] on the tensors' device, ``noise`` is ``None`` or a tensor shaped like ``x``.
All arithmetic is done in float32 and rounded once to the storage dtype, in this order:

    linf:  y = x + alpha * sign(g) [+ noise];  y = min(max(y, x_nat - eps), x_nat + eps);
           y = min(max(y, clip_min), clip_max)
    l2:    d = y - x_nat with y = x + alpha * g / max(||g||_2, 1e-12) [+ noise];
           d *= min(1, eps / max(||d||_2, 1e-12));  y = clamp(x_nat + d, clip_min, clip_max)

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


def _project_clip_linf(y: Tensor, x_nat: Tensor, eps: Tensor, clip_min: float, clip_max: float) -> Tensor:
    xn = x_nat.float()
    e = _rows(eps, y)
    y = torch.minimum(torch.maximum(y, xn - e), xn + e)
    return y.clamp(clip_min, clip_max)


def linf_step(x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor,
              noise: Optional[Tensor], clip_min: float, clip_max: float) -> None:
    """In place on ``x``: x <- clip(proj_inf(x + alpha*sign(grad) [+ noise]))."""
    y = x.float() + _rows(alpha, x) * torch.sign(grad.float())
    if noise is not None:
        y = y + noise.float()
    x.copy_(_project_clip_linf(y, x_nat, eps, clip_min, clip_max))


def _row_norm(t: Tensor) -> Tensor:
    """Per-sample L2 norm of a float32 tensor, shaped to broadcast over its rows."""
    n = t.reshape(t.shape[0], -1).norm(p=2, dim=1) if t.shape[0] else t.new_zeros(0)
    return _rows(n, t)


def l2_step(x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor,
            noise: Optional[Tensor], clip_min: float, clip_max: float) -> None:
    """In place on ``x``: x <- clip(proj_2(x + alpha*grad/||grad|| [+ noise])), per sample."""
    g = grad.float()
    y = x.float() + _rows(alpha, x) * (g / _row_norm(g).clamp_min(L2_NORM_FLOOR))
    if noise is not None:
        y = y + noise.float()
    xn = x_nat.float()
    d = y - xn
    factor = torch.clamp(_rows(eps, x) / _row_norm(d).clamp_min(L2_NORM_FLOOR), max=1.0)
    x.copy_((xn + d * factor).clamp(clip_min, clip_max))


def start_from_noise(x_nat: Tensor, r: Tensor, scale: Tensor, uniform: bool,
                     clip_min: float, clip_max: float) -> Tensor:
    """Random start from pre-drawn float32 noise ``r`` (same shape and layout as ``x_nat``).

    uniform: clip(x_nat + (2r - 1) * scale) with r ~ U[0, 1), i.e. U(-eps, eps);
    normal:  clip(x_nat + r * scale) with r ~ N(0, 1) and scale = sigma.
    """
    s = _rows(scale, x_nat)
    delta = (2.0 * r - 1.0) * s if uniform else r * s
    return (x_nat.float() + delta).clamp(clip_min, clip_max).to(x_nat.dtype)


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


def compact_rows(src: Tensor, dest: Tensor, index: Optional[Tensor], out: Optional[Tensor],
                 packed: Tensor) -> None:
    """packed[dest[i]] = src[i] where dest[i] >= 0; out[index[i]] = src[i] where dest[i] < 0.

    ``packed`` has ``n_active`` rows. ``out`` (with ``index``) may be None: leavers are then dropped.
    """
    if src.shape[0] == 0:
        return
    n_active = packed.shape[0]
    stay = dest >= 0
    # Leavers all go to a spare row n_active, which is dropped: no boolean indexing, no host sync.
    spare = torch.empty((n_active + 1,) + tuple(src.shape[1:]), dtype=src.dtype, device=src.device)
    spare.index_copy_(0, torch.where(stay, dest, torch.full_like(dest, n_active)), src)
    packed.copy_(spare[:n_active])
    if out is not None:
        # Rows that stay rewrite out's current value: the scatter has unique indices and no sync.
        keep_mask = _rows(stay, src)
        out.index_copy_(0, index, torch.where(keep_mask, out.index_select(0, index), src))


def linf_step_compact(x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor,
                      noise: Optional[Tensor], dest: Tensor, index: Tensor, out: Tensor,
                      x_next: Tensor, x_nat_next: Tensor, clip_min: float, clip_max: float) -> None:
    """Fused L∞ step and compaction.

    Leavers (dest < 0): out[index[i]] = x[i] (the iterate at which they left, no update).
    The others: x_next[dest[i]] = linf_step(x[i]); x_nat_next[dest[i]] = x_nat[i].
    ``x`` itself is not modified.
    """
    stepped = x.clone()
    linf_step(stepped, grad, x_nat, eps, alpha, noise, clip_min, clip_max)
    stay = _rows(dest >= 0, x)
    compact_rows(torch.where(stay, stepped, x), dest, index, out, x_next)
    compact_rows(x_nat, dest, None, None, x_nat_next)
