"""Fused adversarial-attack kernels (SPEC §1): the public, documented Python API.

=================================  =====================================================================
function                           does
=================================  =====================================================================
``linf_step_``                     x ← clip(proj∞(x + α·sign(g) [+ noise])), in place, returns x
``l2_step_``                       x ← clip(proj₂(x + α·g/‖g‖ [+ noise])), per sample, in place
``random_start``                   "uniform": clip(x + U(−ε, ε)); "normal": clip(x + σ·N(0, I)); None: x
``early_stop_update_``             FAT's per-check update of ``budget``/``kappa``; returns ``leave``
``compaction_plan``                destination rows of the still-active samples + their count (1 host read)
``compact_rows``                   pack active rows to the front, scatter leavers to ``leavers[index]``
``linf_step_compact``              the L∞ step fused with compaction (one pass over memory)
``linf_fosc_step_``                DAT's FOSC per row fused with the L∞ step of the rows above a threshold
``available_backends``             e.g. ``["native", "reference"]`` on a CPU build
=================================  =====================================================================

``eps``/``alpha`` are floats or per-sample tensors of shape [N]. Tensors may be float64, float32,
float16 or bfloat16 (computed in float64 for float64, else in float32, rounded once), contiguous or
channels_last, any N including 0. Bad input raises ``TypeError``/``ValueError``/``IndexError``
naming the argument. Each function takes ``check=True``; ``check=False`` skips what costs a host
synchronisation on a GPU: the inspection of per-sample ``eps``/``alpha`` tensors, and the
immediate report of an out-of-range compaction plan (whose rows are never written; the next
``compaction_plan`` reports it then). The attack engine validates once per attack instead.

Each function is one call of the op ``torch.ops.fastadv.<name>`` (``fastadv.ops.library``), which
validates, then runs the kernel of the backend picked for the device (``fastadv.ops.dispatch``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import library  # registers torch.ops.fastadv.*
from ._validation import check_batched, check_clip, check_tensor, compute_dtype, per_sample
from .dispatch import available_backends, get_backend
from ..errors import UserError

__all__ = ["linf_step_", "l2_step_", "random_start", "early_stop_update_", "compaction_plan",
           "compact_rows", "linf_step_compact", "linf_fosc_step_", "available_backends",
           "get_backend"]


def _call(name: str, *args):
    """``torch.ops.fastadv.<name>`` while torch.compile traces; in eager, the op's body directly
    (same code, without the ~40 µs dispatcher round trip)."""
    if torch.compiler.is_compiling():
        return getattr(torch.ops.fastadv, name)(*args)
    return library.EAGER[name](*args)


_CONSTANTS: dict = {}  # (value, n, device, dtype) -> the [N] tensor of a float eps/alpha (read-only)


def _per_sample(name: str, v, x: Tensor, check: bool):
    """A float as a validated [N] tensor here (no host read; the same values give the same cached
    tensor, which no op writes); a tensor is left to the op."""
    if isinstance(v, Tensor) or not isinstance(x, Tensor):
        return v
    key = (v, x.shape[0] if x.dim() else 0, x.device, compute_dtype(x) if x.is_floating_point() else torch.float32)
    t = _CONSTANTS.get(key) if type(v) is float else None
    if t is None:
        t = per_sample(name, v, *key[1:], check=check)
        if type(v) is float:
            if len(_CONSTANTS) >= 256:
                _CONSTANTS.clear()
            _CONSTANTS[key] = t
    return t


def linf_step_(x: Tensor, grad: Tensor, x_nat: Tensor, eps, alpha, clip_min: float = 0.0,
               clip_max: float = 1.0, *, noise: Optional[Tensor] = None, check: bool = True) -> Tensor:
    """L∞ PGD step in place: ``x ← clip(min(max(x + α·sign(grad) + noise, x_nat − ε), x_nat + ε))``.

    ``sign(0) = 0``. ``noise`` (optional, shaped like ``x``) is FAT's ω·N(0, I) term, added before
    the projection. Returns ``x``.
    """
    check_values = check and (isinstance(eps, Tensor) or isinstance(alpha, Tensor))
    e, a = _per_sample("eps", eps, x, check), _per_sample("alpha", alpha, x, check)
    _call("linf_step_", x, grad, x_nat, e, a, noise, clip_min, clip_max, check_values)
    return x


def l2_step_(x: Tensor, grad: Tensor, x_nat: Tensor, eps, alpha, clip_min: float = 0.0,
             clip_max: float = 1.0, *, noise: Optional[Tensor] = None, check: bool = True) -> Tensor:
    """L2 PGD step in place, per sample: ``x ← clip(x_nat + δ·min(1, ε/‖δ‖))`` with
    ``δ = x + α·g/‖g‖ + noise − x_nat`` (norms guarded against 0 by 1e-12). Returns ``x``."""
    check_values = check and (isinstance(eps, Tensor) or isinstance(alpha, Tensor))
    e, a = _per_sample("eps", eps, x, check), _per_sample("alpha", alpha, x, check)
    _call("l2_step_", x, grad, x_nat, e, a, noise, clip_min, clip_max, check_values)
    return x


RANDOM_START_KINDS = ("uniform", "normal", None)


def random_start(x_nat: Tensor, eps, kind: Optional[str] = "uniform", sigma: float = 0.001,
                 clip_min: float = 0.0, clip_max: float = 1.0,
                 generator: Optional[torch.Generator] = None, *, check: bool = True) -> Tensor:
    """A new tensor: ``"uniform"`` clip(x + U(−ε, ε)), ``"normal"`` clip(x + σ·N(0, I)),
    ``None`` a copy of ``x_nat``. Noise is drawn on ``x_nat``'s device (with ``generator`` if given)."""
    check_batched("x_nat", check_tensor("x_nat", x_nat))  # the op checks the rest (clip bounds too)
    if kind not in RANDOM_START_KINDS:
        raise UserError(f"kind must be 'uniform', 'normal' or None, got {kind!r}")
    n, dt = x_nat.shape[0], compute_dtype(x_nat)
    e = _per_sample("eps", eps, x_nat, check)  # a float: validated (and cached) here
    if isinstance(e, Tensor):
        e = per_sample("eps", e, n, x_nat.device, dt, check=check)
    if kind is None:
        check_clip(clip_min, clip_max)
        return x_nat.clone()
    if generator is not None and generator.device != x_nat.device:
        raise UserError(f"generator is on {generator.device} but x_nat is on {x_nat.device}")
    r = torch.empty_like(x_nat, dtype=dt)
    if kind == "uniform":
        r.uniform_(0.0, 1.0, generator=generator)
        scale = e
    else:
        scale = _per_sample("sigma", sigma, x_nat, check)
        scale = per_sample("sigma", scale, n, x_nat.device, dt, check=check) if isinstance(sigma, Tensor) else scale
        r.normal_(0.0, 1.0, generator=generator)
    return _call("start_from_noise", x_nat, r, scale, kind == "uniform", clip_min, clip_max, False)


def early_stop_update_(logits: Tensor, y: Tensor, budget: Tensor, kappa: Tensor) -> Tensor:
    """FAT's early-stop update for one check (SPEC §1), in place on int64 ``budget``/``kappa``.

    ``wrong = argmax(logits) != y``; ``leave = wrong & (budget == 0)``;
    ``budget -= wrong & ~leave``; ``kappa += ~wrong``. Returns the bool ``leave`` mask [N].
    """
    return _call("early_stop_update_", logits, y, budget, kappa)


def compaction_plan(leave: Tensor) -> tuple[Tensor, int]:
    """From the bool ``leave`` mask [M]: ``dest`` (int64 [M]; the packed row of each staying sample
    in stable order, −1 for leavers) and ``n_active`` (a Python int: the one host read per check).

    The same read also brings the flag of the compaction kernels: if an earlier call with
    ``check=False`` had an out-of-range plan (whose rows were not written), this raises IndexError.
    """
    dest, count = _call("compaction_plan", leave)
    if leave.device.type == "cpu":  # CPU kernels raise at once; nothing to read
        return dest, int(count)
    flag = library.error_flag(leave.device)
    n_active, flagged = torch.cat([count.view(1), flag.to(torch.int64)]).tolist()
    library.raise_if_flagged(leave.device, bool(flagged))
    return dest, n_active


def compact_rows(src: Tensor, dest: Tensor, n_active: int, index: Optional[Tensor] = None,
                 leavers: Optional[Tensor] = None, *, check: bool = True) -> Tensor:
    """Compaction: a new tensor ``packed`` with ``packed[dest[i]] = src[i]`` for every staying row
    (``dest[i] >= 0``, stable order) and, if ``leavers`` is given, ``leavers[index[i]] = src[i]`` for
    every leaving row (``dest[i] == -1``). ``src`` is any dtype with the batch first; ``index``
    holds the rows' positions in ``leavers`` (their original order). With all ``dest == -1`` it is
    the final scatter of survivors back to input order."""
    return _call("compact_rows", src, dest, n_active, index, leavers, check)


def linf_step_compact(x: Tensor, grad: Tensor, x_nat: Tensor, eps, alpha, dest: Tensor,
                      n_active: int, index: Tensor, leavers: Tensor, clip_min: float = 0.0,
                      clip_max: float = 1.0, *, noise: Optional[Tensor] = None,
                      check: bool = True) -> tuple[Tensor, Tensor]:
    """The L∞ step fused with compaction, one pass over memory. For each row i:

    - leaving (``dest[i] == -1``): ``leavers[index[i]] = x[i]`` (no update: the iterate it left at);
    - staying: ``x_next[dest[i]] = linf_step(x[i])``, ``x_nat_next[dest[i]] = x_nat[i]``.

    Returns ``(x_next, x_nat_next)`` with ``n_active`` rows; ``x`` is not modified.
    """
    e, a = _per_sample("eps", eps, x, check), _per_sample("alpha", alpha, x, check)
    return _call("linf_step_compact", x, grad, x_nat, e, a, dest, n_active, index, leavers, noise,
                 clip_min, clip_max, check)


def linf_fosc_step_(x: Tensor, grad: Tensor, x_nat: Tensor, x_start: Tensor, eps, alpha,
                    threshold: float, always: bool = False, clip_min: float = 0.0,
                    clip_max: float = 1.0, *, check: bool = True) -> Tensor:
    """DAT's first-order stationary condition, fused with the L∞ step. Per row:
    ``c = ε·‖g‖₁ − ⟨x − x_start, g⟩`` (``x_start``: the attack's start x⁰; the sums in float64,
    rounded once to the compute dtype); rows with ``always`` or ``c > threshold`` take the L∞
    step in place (as :func:`linf_step_`), the others keep ``x``. Returns ``c`` [N] in the compute
    dtype (a row stopped where ``not c > threshold``)."""
    e, a = _per_sample("eps", eps, x, check), _per_sample("alpha", alpha, x, check)
    return _call("linf_fosc_step_", x, grad, x_nat, x_start, e, a, threshold, always, clip_min,
                 clip_max, check)
