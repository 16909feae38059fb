"""The Triton backend: every kernel of ``fastadv.ops.reference`` as a Triton kernel (SPEC §1).

Runs on CUDA devices, and on the CPU only under the Triton interpreter (``TRITON_INTERPRET=1`` set
before this module is imported; the test suite does that in ``tests/conftest.py``). If ``triton``
is not installed, importing this module raises ``ImportError`` and the dispatcher skips it.

The functions have the names, signatures and semantics of ``fastadv.ops.reference`` and take the
inputs that ``fastadv.ops.library`` validated and normalised (no checks here): row-dense tensors
that share one memory layout (so a sample is D consecutive elements: element j of row i is at
``base + i*D + j``, for contiguous and channels_last alike), ``eps``/``alpha``/``scale``/``noise``
in the compute dtype, contiguous int64 index vectors. Every kernel is handed 1-D views of that
memory (see :func:`_flat`).

Numerics (bit-exact with the reference for the L∞ step, the random start, the early-stop update
and compaction; the L2 step to rounding):

- the compute dtype is float64 for float64 tensors (whose clip bounds then travel as a float64
  tensor: Triton passes Python floats as float32), float32 otherwise;
- loads are decoded to the compute dtype and results rounded once to the storage dtype. bfloat16 is moved as
  its int16 bits and converted with integer arithmetic (round to nearest even, NaN -> 0x7FC0, as
  c10 does): the interpreter's own float32 -> bfloat16 cast truncates (and its "rtne" mode rounds
  ties away from zero), so ``.to(tl.bfloat16)`` would be 1 ulp off. float16 uses Triton's casts
  (IEEE round to nearest even on the GPU and in numpy).
- the operations run in the reference's order; min/max/clamp are written as selects with torch's
  NaN propagation (``tl.maximum``/``tl.minimum`` drop NaNs on the GPU by default); sign(±0) = 0.
- no FMA contraction: every launch passes ``enable_fp_fusion=False`` (Triton then emits no
  ``llvm.fma`` for ``a*b + c`` and runs ptxas with ``--fmad=false``). The interpreter evaluates
  each operation separately in numpy, so it never fuses, and it ignores that launch option.
- the L2 step's norms are float64 sums (in another order than the reference's), square-rooted in
  float64 (``sqrt.rn.f64``, IEEE) and rounded once to the compute dtype; float32 divisions use
  ``tl.div_rn`` (``/`` may be approximate on the GPU), float64 ones ``/`` (``div.rn.f64``).

Launch shapes: each program handles a [ROWS, BLOCK_D] tile with ROWS·BLOCK_D <= ``_BLOCK`` elements
(8192 in the interpreter, whose cost grows with the number of programs; 4096 on the GPU; half that
for float64); rows that
fit in a tile are batched into one program. No autotuning (more than one config fails in the
interpreter). Compaction masks rows whose ``dest``/``index`` is out of range instead of writing out
of bounds, and raises the ``errors`` flag (a host-side check would cost a synchronisation).
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

import triton  # ImportError here means "no Triton backend" to the dispatcher
import triton.language as tl

from ..errors import UserTypeError

# Read once, as Triton itself decides at decoration time whether kernels are interpreted.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

_BLOCK = 8192 if _INTERPRET else 4096  # elements per program (tile)
_SCAN_BLOCK = 1024  # elements per iteration of the single-program prefix sum (compaction_plan)
_NUM_WARPS = 8
_LAUNCH = dict(num_warps=_NUM_WARPS, enable_fp_fusion=False)

L2_NORM_FLOOR = 1e-12  # the reference's guard of ||g|| and ||delta|| (rounded to float32 in kernels)

# Storage codecs (the KIND constexpr): how a floating tensor's elements are loaded and stored.
_F32, _F16, _BF16, _F64 = 0, 1, 2, 3
_KIND = {torch.float32: _F32, torch.float16: _F16, torch.bfloat16: _BF16, torch.float64: _F64}
# Integer types of each element size, for raw (bitwise) row copies of any dtype.
_RAW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def supports(device: torch.device) -> bool:
    """CUDA devices (Triton is importable); the CPU only under ``TRITON_INTERPRET=1``."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available()
    return kind == "cpu" and _INTERPRET


# ----------------------------------------------------------------------------- host helpers
def _inner_key(t: Tensor) -> tuple:
    """The memory order of a sample (strides of the non-batch, non-size-1 dimensions)."""
    return tuple(s for s, n in zip(t.stride()[1:], t.shape[1:]) if n != 1)


def _flat(t: Tensor) -> Tensor:
    """A 1-D view of a row-dense tensor's memory (element j of row i at i*D + j): the kernels index
    memory themselves, so the interpreter sees exactly the memory the GPU would."""
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


def _storage(t: Tensor) -> tuple[Tensor, int]:
    """(the tensor's flat memory as the kernels load it, its codec): bfloat16 travels as int16 bits."""
    kind = _KIND[t.dtype]
    return _flat(t.view(torch.int16) if kind == _BF16 else t), kind


def _raw(t: Tensor) -> Tensor:
    """A flat tensor's memory as integers of the same element size (bytes for odd sizes)."""
    size = t.element_size()
    return t.view(_RAW[size]) if size in _RAW else t.view(torch.uint8)


def _bounds(kind: int, clip_min: float, clip_max: float, device) -> tuple:
    """(lo, hi, bounds): float64 kernels read the clip bounds from the tensor ``bounds`` (Triton
    would round Python floats to float32); the others take them as float32 scalars."""
    if kind == _F64:
        return 0.0, 0.0, torch.tensor([clip_min, clip_max], dtype=torch.float64, device=device)
    return float(clip_min), float(clip_max), None


def _block(kind: int) -> int:
    """Elements per tile: half for float64, whose values and offsets take twice the registers (a
    full tile of short float64 rows spills on sm_90; scripts/triton_aot_check.py checks)."""
    return _BLOCK // 2 if kind == _F64 else _BLOCK


def _tile(n: int, d: int, block: int = _BLOCK) -> tuple[int, int]:
    """(ROWS, BLOCK_D) of a tile of at most ``block`` elements covering rows of ``d`` elements."""
    bd = min(triton.next_power_of_2(max(d, 1)), block)
    rows = max(1, min(block // bd, triton.next_power_of_2(max(n, 1))))
    return rows, bd


def _grid(n: int, d: int, rows: int, bd: int) -> tuple[int, int]:
    # Rows on axis 0 (up to 2^31 - 1 programs), column blocks on axis 1 (65535 at most on CUDA).
    return triton.cdiv(n, rows), triton.cdiv(d, bd)


# ----------------------------------------------------------------------------- device helpers
@triton.jit
def _dec(raw, KIND: tl.constexpr):
    """Storage value -> compute dtype (exact)."""
    if KIND == 2:  # bfloat16 bits (int16): the high half of a float32
        v = (raw.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    elif KIND == 3:
        v = raw
    else:
        v = raw.to(tl.float32)
    return v


@triton.jit
def _clip_bounds(lo, hi, bounds_ptr, KIND: tl.constexpr):
    """The clip bounds in the compute dtype (float64 ones from memory, see :func:`_bounds`)."""
    if KIND == 3:
        lo = tl.load(bounds_ptr)
        hi = tl.load(bounds_ptr + 1)
    return lo, hi


@triton.jit
def _enc(v, KIND: tl.constexpr):
    """float32 -> storage value, rounded once to nearest even."""
    if KIND == 2:
        u = v.to(tl.uint32, bitcast=True)
        r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        r = tl.where(v != v, 0x7FC0, r)
        out = r.to(tl.uint16).to(tl.int16, bitcast=True)
    elif KIND == 1:
        out = v.to(tl.float16)
    else:  # float32, float64: already the storage dtype
        out = v
    return out


@triton.jit
def _linf_value(x, g, xn, e, a, nz, lo, hi, HAS_NOISE: tl.constexpr):
    """clip(proj_inf(x + a*sign(g) [+ nz], xn, e)) in the reference's order (see fastadv_math.h)."""
    s = tl.where(g > 0.0, 1.0, tl.where(g < 0.0, -1.0, 0.0))  # sign(±0) = sign(NaN) = 0
    y = x + a * s
    if HAS_NOISE:
        y = y + nz
    below = xn - e
    above = xn + e
    nan = (y != y) | (below != below) | (above != above)
    r = tl.where(y < below, below, y)  # torch.maximum(y, below)
    r = tl.where(above < r, above, r)  # torch.minimum(r, above)
    r = tl.where(r < lo, lo, r)  # clamp(lo, hi); the bounds are never NaN
    r = tl.where(hi < r, hi, r)
    return tl.where(nan, float("nan"), r)


# ----------------------------------------------------------------------------- L∞ step
@triton.jit
def _linf_kernel(x_ptr, g_ptr, xn_ptr, nz_ptr, eps_ptr, alpha_ptr, N, D, lo, hi, bounds_ptr,
                 KIND: tl.constexpr, HAS_NOISE: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    lo, hi = _clip_bounds(lo, hi, bounds_ptr, KIND)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < N
    mask = rmask[:, None] & (cols < D)[None, :]
    offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
    e = tl.load(eps_ptr + rows, mask=rmask, other=0.0)[:, None]
    a = tl.load(alpha_ptr + rows, mask=rmask, other=0.0)[:, None]
    x = _dec(tl.load(x_ptr + offs, mask=mask, other=0), KIND)
    g = _dec(tl.load(g_ptr + offs, mask=mask, other=0), KIND)
    xn = _dec(tl.load(xn_ptr + offs, mask=mask, other=0), KIND)
    nz = 0.0
    if HAS_NOISE:
        nz = tl.load(nz_ptr + offs, mask=mask, other=0.0)
    r = _linf_value(x, g, xn, e, a, nz, lo, hi, HAS_NOISE)
    tl.store(x_ptr + offs, _enc(r, KIND), mask=mask)


def _step_operands(x: Tensor, grad: Tensor, x_nat: Tensor, noise: Optional[Tensor]):
    """Flat storage views of a step's operands (the noise pointer is x's when there is none: the
    kernel never reads it then) and x's storage kind."""
    fx, kind = _storage(x)
    fz = _flat(noise) if noise is not None else fx
    return fx, _storage(grad)[0], _storage(x_nat)[0], fz, kind


def linf_step(x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor,
              noise: Optional[Tensor], clip_min: float, clip_max: float) -> None:
    """In place on ``x``: x <- clip(proj_inf(x + alpha*sign(grad) [+ noise]))."""
    n = x.shape[0]
    if n == 0 or x.numel() == 0:
        return
    d = x.numel() // n
    fx, fg, fn, fz, kind = _step_operands(x, grad, x_nat, noise)
    lo, hi, bounds = _bounds(kind, clip_min, clip_max, x.device)
    rows, bd = _tile(n, d, _block(kind))
    _linf_kernel[_grid(n, d, rows, bd)](
        fx, fg, fn, fz, eps, alpha, n, d, lo, hi, bounds if bounds is not None else eps,
        KIND=kind, HAS_NOISE=noise is not None, ROWS=rows, BLOCK_D=bd, **_LAUNCH)


# ----------------------------------------------------------------------------- L2 step
@triton.jit
def _div(a, b, KIND: tl.constexpr):
    """a / b rounded as IEEE division: float64 ``/`` is (div.rn.f64); float32 needs div_rn."""
    if KIND == 3:
        q = a / b
    else:
        q = tl.div_rn(a, b)
    return q


@triton.jit
def _l2_delta(x_ptr, g_ptr, xn_ptr, nz_ptr, offs, mask, a, gn, KIND: tl.constexpr, HAS_NOISE: tl.constexpr):
    """(delta = x + a*(g/||g||) [+ noise] - xn, xn) for one tile, as the reference rounds it."""
    x = _dec(tl.load(x_ptr + offs, mask=mask, other=0), KIND)
    g = _dec(tl.load(g_ptr + offs, mask=mask, other=0), KIND)
    xn = _dec(tl.load(xn_ptr + offs, mask=mask, other=0), KIND)
    y = x + a * _div(g, gn, KIND)
    if HAS_NOISE:
        y = y + tl.load(nz_ptr + offs, mask=mask, other=0.0)
    return tl.where(mask, y - xn, 0.0), xn


@triton.jit
def _l2_kernel(x_ptr, g_ptr, xn_ptr, nz_ptr, eps_ptr, alpha_ptr, N, D, lo, hi, bounds_ptr,
               KIND: tl.constexpr, HAS_NOISE: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    # One program owns ROWS whole rows and makes three passes over them: ||g||, ||delta||, write.
    # Norms: float64 sums of squares, square-rooted and rounded once to the compute dtype.
    lo, hi = _clip_bounds(lo, hi, bounds_ptr, KIND)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    rmask = rows < N
    base = rows.to(tl.int64)[:, None] * D
    a = tl.load(alpha_ptr + rows, mask=rmask, other=0.0)[:, None]  # in the compute dtype
    acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float64)
    for start in range(0, D, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        g = _dec(tl.load(g_ptr + base + cols[None, :], mask=mask, other=0), KIND).to(tl.float64)
        acc += g * g
    gn = tl.sqrt(tl.sum(acc, axis=1)).to(a.dtype)  # float64 sqrt is IEEE (sqrt.rn.f64)
    floor = tl.full([ROWS], 1e-12, a.dtype)  # the floor in the compute dtype (a literal is float32)
    gn = tl.where(gn < floor, floor, gn)[:, None]  # clamp_min(1e-12); NaN propagates
    acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float64)
    for start in range(0, D, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        d, xn = _l2_delta(x_ptr, g_ptr, xn_ptr, nz_ptr, base + cols[None, :], mask, a, gn, KIND, HAS_NOISE)
        d = d.to(tl.float64)
        acc += d * d
    dn = tl.sqrt(tl.sum(acc, axis=1)).to(a.dtype)
    dn = tl.where(dn < floor, floor, dn)
    e = tl.load(eps_ptr + rows, mask=rmask, other=0.0)
    factor = _div(e, dn, KIND)
    factor = tl.where(factor > 1.0, 1.0, factor)[:, None]  # clamp(max=1); NaN propagates
    for start in range(0, D, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        offs = base + cols[None, :]
        d, xn = _l2_delta(x_ptr, g_ptr, xn_ptr, nz_ptr, offs, mask, a, gn, KIND, HAS_NOISE)
        r = xn + d * factor
        r = tl.where(r < lo, lo, r)
        r = tl.where(hi < r, hi, r)
        tl.store(x_ptr + offs, _enc(r, KIND), mask=mask)


def l2_step(x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor,
            noise: Optional[Tensor], clip_min: float, clip_max: float) -> None:
    """In place on ``x``: x <- clip(proj_2(x + alpha*grad/||grad|| [+ noise])), per sample."""
    n = x.shape[0]
    if n == 0 or x.numel() == 0:
        return
    d = x.numel() // n
    fx, fg, fn, fz, kind = _step_operands(x, grad, x_nat, noise)
    lo, hi, bounds = _bounds(kind, clip_min, clip_max, x.device)
    rows, bd = _tile(n, d, _block(kind))
    _l2_kernel[(triton.cdiv(n, rows),)](
        fx, fg, fn, fz, eps, alpha, n, d, lo, hi, bounds if bounds is not None else eps,
        KIND=kind, HAS_NOISE=noise is not None, ROWS=rows, BLOCK_D=bd, **_LAUNCH)


# ----------------------------------------------------------------------------- DAT's FOSC step
@triton.jit
def _fosc_kernel(x_ptr, g_ptr, xn_ptr, x0_ptr, eps_ptr, alpha_ptr, fosc_ptr, thr_ptr, N, D, lo, hi,
                 bounds_ptr, ALWAYS: tl.constexpr, KIND: tl.constexpr, ROWS: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    # One program owns ROWS whole rows, two passes: the FOSC c = eps*||g||_1 - <x - x0, g>
    # (float64 sums of compute-dtype terms, each rounded once), then the L-inf step of the rows
    # with ALWAYS or c > thr (the threshold from memory: float64 kernels need it unrounded).
    lo, hi = _clip_bounds(lo, hi, bounds_ptr, KIND)
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rmask = rows < N
    base = rows[:, None] * D
    e = tl.load(eps_ptr + rows, mask=rmask, other=0.0)  # in the compute dtype
    l1 = tl.zeros([ROWS, BLOCK_D], dtype=tl.float64)
    dot = tl.zeros([ROWS, BLOCK_D], dtype=tl.float64)
    for start in range(0, D, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        offs = base + cols[None, :]
        g = _dec(tl.load(g_ptr + offs, mask=mask, other=0), KIND)
        diff = _dec(tl.load(x_ptr + offs, mask=mask, other=0), KIND) - \
            _dec(tl.load(x0_ptr + offs, mask=mask, other=0), KIND)
        l1 += tl.abs(g).to(tl.float64)
        dot += diff.to(tl.float64) * g.to(tl.float64)
    c = e * tl.sum(l1, axis=1).to(e.dtype) - tl.sum(dot, axis=1).to(e.dtype)
    tl.store(fosc_ptr + rows, c, mask=rmask)
    thr = tl.load(thr_ptr)
    move = rmask if ALWAYS else rmask & (c > thr)
    a = tl.load(alpha_ptr + rows, mask=rmask, other=0.0)[:, None]
    for start in range(0, D, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        mask = move[:, None] & (cols < D)[None, :]
        offs = base + cols[None, :]
        x = _dec(tl.load(x_ptr + offs, mask=mask, other=0), KIND)
        g = _dec(tl.load(g_ptr + offs, mask=mask, other=0), KIND)
        xn = _dec(tl.load(xn_ptr + offs, mask=mask, other=0), KIND)
        r = _linf_value(x, g, xn, e[:, None], a, 0.0, lo, hi, False)
        tl.store(x_ptr + offs, _enc(r, KIND), mask=mask)


def linf_fosc_step(x: Tensor, grad: Tensor, x_nat: Tensor, x_start: Tensor, eps: Tensor,
                   alpha: Tensor, threshold: float, always: bool, clip_min: float,
                   clip_max: float) -> Tensor:
    """DAT's FOSC per row and the L∞ step of the rows that go on (see the reference); returns
    the FOSC [N] in the compute dtype."""
    n = x.shape[0]
    fosc = torch.zeros(n, dtype=eps.dtype, device=x.device)
    if n == 0 or x.numel() == 0:
        return fosc
    d = x.numel() // n
    fx, kind = _storage(x)
    lo, hi, bounds = _bounds(kind, clip_min, clip_max, x.device)
    thr = torch.tensor([threshold], dtype=eps.dtype, device=x.device)
    rows, bd = _tile(n, d, _block(kind))
    _fosc_kernel[(triton.cdiv(n, rows),)](
        fx, _storage(grad)[0], _storage(x_nat)[0], _storage(x_start)[0], eps, alpha, fosc, thr, n, d,
        lo, hi, bounds if bounds is not None else eps, ALWAYS=bool(always), KIND=kind, ROWS=rows,
        BLOCK_D=bd, **_LAUNCH)
    return fosc


# ----------------------------------------------------------------------------- random start
@triton.jit
def _start_kernel(out_ptr, xn_ptr, r_ptr, scale_ptr, N, D, lo, hi, bounds_ptr,
                  KIND: tl.constexpr, UNIFORM: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    lo, hi = _clip_bounds(lo, hi, bounds_ptr, KIND)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < N
    mask = rmask[:, None] & (cols < D)[None, :]
    offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
    s = tl.load(scale_ptr + rows, mask=rmask, other=0.0)[:, None]
    xn = _dec(tl.load(xn_ptr + offs, mask=mask, other=0), KIND)
    r = tl.load(r_ptr + offs, mask=mask, other=0.0)
    if UNIFORM:
        delta = (2.0 * r - 1.0) * s
    else:
        delta = r * s
    v = xn + delta
    v = tl.where(v < lo, lo, v)  # clamp: NaN propagates
    v = tl.where(hi < v, hi, v)
    tl.store(out_ptr + offs, _enc(v, KIND), mask=mask)


def start_from_noise(x_nat: Tensor, r: Tensor, scale: Tensor, uniform: bool,
                     clip_min: float, clip_max: float) -> Tensor:
    """clip(x_nat + (2r - 1)*scale) (uniform) or clip(x_nat + r*scale) (normal), a new tensor."""
    out = torch.empty_like(x_nat)  # preserve_format: a row-dense input keeps its strides
    n = x_nat.shape[0]
    if n == 0 or x_nat.numel() == 0:
        return out
    d = x_nat.numel() // n
    xs, kind = _storage(x_nat)
    lo, hi, bounds = _bounds(kind, clip_min, clip_max, x_nat.device)
    rows, bd = _tile(n, d, _block(kind))
    _start_kernel[_grid(n, d, rows, bd)](
        _storage(out)[0], xs, _flat(r), scale, n, d, lo, hi, bounds if bounds is not None else scale,
        KIND=kind, UNIFORM=bool(uniform), ROWS=rows, BLOCK_D=bd, **_LAUNCH)
    return out


# ----------------------------------------------------------------------------- early stop
@triton.jit
def _early_stop_kernel(logits_ptr, y_ptr, budget_ptr, kappa_ptr, leave_ptr, M, C,
                       KIND: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    rmask = rows < M
    base = rows.to(tl.int64)[:, None] * C
    # Running argmax with torch's rules: the first index of the maximum; the first NaN wins.
    if KIND == 3:
        best = tl.full([ROWS], float("-inf"), tl.float64)
    else:
        best = tl.full([ROWS], float("-inf"), tl.float32)
    best_idx = tl.zeros([ROWS], dtype=tl.int32)
    found_nan = tl.zeros([ROWS], dtype=tl.int32)
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        mask = rmask[:, None] & (cols < C)[None, :]
        v = _dec(tl.load(logits_ptr + base + cols[None, :], mask=mask, other=0), KIND)
        is_nan = (v != v) & mask
        nan_idx = tl.min(tl.where(is_nan, cols[None, :], C), axis=1)
        vmax = tl.max(tl.where(mask & (v == v), v, float("-inf")), axis=1)
        idx = tl.min(tl.where(mask & (v == vmax[:, None]), cols[None, :], C), axis=1)
        new_nan = (found_nan == 0) & (nan_idx < C)
        better = (found_nan == 0) & (nan_idx >= C) & (vmax > best)  # strict: ties keep the first
        best_idx = tl.where(new_nan, nan_idx, tl.where(better, idx, best_idx))
        best = tl.where(better, vmax, best)
        found_nan = tl.where(new_nan, 1, found_nan)
    y = tl.load(y_ptr + rows, mask=rmask, other=0).to(tl.int64)
    budget = tl.load(budget_ptr + rows, mask=rmask, other=0)
    kappa = tl.load(kappa_ptr + rows, mask=rmask, other=0)
    wrong = best_idx.to(tl.int64) != y
    leave = wrong & (budget == 0)
    budget = budget - tl.where(wrong & (budget != 0), 1, 0).to(tl.int64)
    kappa = kappa + tl.where(wrong, 0, 1).to(tl.int64)
    tl.store(budget_ptr + rows, budget, mask=rmask)
    tl.store(kappa_ptr + rows, kappa, mask=rmask)
    tl.store(leave_ptr + rows, tl.where(leave, 1, 0).to(tl.uint8), mask=rmask)


def early_stop_update(logits: Tensor, y: Tensor, budget: Tensor, kappa: Tensor) -> Tensor:
    """wrong = argmax(logits) != y; leave = wrong & budget == 0; budget -= wrong & ~leave;
    kappa += ~wrong (in place on int64 ``budget``/``kappa``). Returns ``leave`` (bool [M])."""
    m = logits.shape[0]
    leave = torch.zeros(m, dtype=torch.uint8, device=logits.device)
    if m == 0:
        return leave.view(torch.bool)
    c = logits.shape[1]
    ls, kind = _storage(logits)
    rows, bc = _tile(m, c, _block(kind))
    _early_stop_kernel[(triton.cdiv(m, rows),)](
        ls, y, budget, kappa, leave, m, c, KIND=kind, ROWS=rows, BLOCK_C=bc, **_LAUNCH)
    return leave.view(torch.bool)


# ----------------------------------------------------------------------------- compaction
@triton.jit
def _plan_kernel(leave_ptr, dest_ptr, count_ptr, M, BLOCK: tl.constexpr):
    # One program scans the mask in chunks (M is a batch size), carrying the running count.
    carry = tl.zeros([1], dtype=tl.int64)
    for start in range(0, M, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < M
        lv = tl.load(leave_ptr + offs, mask=mask, other=1)
        keep = tl.where(mask & (lv == 0), 1, 0).to(tl.int32)
        incl = tl.cumsum(keep, axis=0).to(tl.int64) + carry
        tl.store(dest_ptr + offs, tl.where(keep != 0, incl - 1, -1), mask=mask)
        carry += tl.sum(keep, axis=0).to(tl.int64)
    tl.store(count_ptr + tl.arange(0, 1), carry)


def compaction_plan(leave: Tensor) -> tuple[Tensor, Tensor]:
    """(dest int64 [M]: packed row of each staying sample in stable order, -1 for leavers;
    n_active int64 0-dim tensor). No host synchronisation."""
    m = leave.shape[0]
    dest = torch.empty(m, dtype=torch.int64, device=leave.device)
    count = torch.zeros((), dtype=torch.int64, device=leave.device)
    if m == 0:
        return dest, count
    if leave.dtype != torch.bool or leave.dim() != 1:
        raise UserTypeError(f"leave: expected a 1-D bool tensor, got {leave.dtype} {tuple(leave.shape)}")
    _plan_kernel[(1,)](leave.contiguous().view(torch.uint8), dest, count.view(1), m,
                       BLOCK=_SCAN_BLOCK, **_LAUNCH)
    return dest, count


@triton.jit
def _flag(err_ptr, bad):
    """errors[0] = 1 where ``bad`` (a compaction row whose plan is out of range)."""
    tl.store(err_ptr + tl.zeros_like(bad.to(tl.int32)), tl.full(bad.shape, 1, tl.int32), mask=bad)


@triton.jit
def _compact_kernel(src_ptr, dest_ptr, index_ptr, out_ptr, packed_ptr, err_ptr, M, D, P, R,
                    HAS_OUT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < M
    cmask = (cols < D)[None, :]
    dest = tl.load(dest_ptr + rows, mask=rmask, other=-1)
    stay = rmask & (dest >= 0) & (dest < P)  # an out-of-range plan is never written out of bounds
    bad = rmask & ((dest < -1) | (dest >= P))
    v = tl.load(src_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :], mask=rmask[:, None] & cmask)
    to = tl.where(stay, dest, 0)
    tl.store(packed_ptr + to[:, None] * D + cols[None, :], v, mask=stay[:, None] & cmask)
    if HAS_OUT:
        index = tl.load(index_ptr + rows, mask=rmask, other=-1)
        leaving = rmask & (dest == -1)
        go = leaving & (index >= 0) & (index < R)
        bad = bad | (leaving & ~go)
        to = tl.where(go, index, 0)
        tl.store(out_ptr + to[:, None] * D + cols[None, :], v, mask=go[:, None] & cmask)
    _flag(err_ptr, bad)


def compact_rows(src: Tensor, dest: Tensor, index: Optional[Tensor], leavers: Optional[Tensor],
                 packed: Tensor, errors: Tensor) -> None:
    """packed[dest[i]] = src[i] where dest[i] >= 0; leavers[index[i]] = src[i] where dest[i] == -1.

    ``src`` of any dtype and rank >= 1; rows are copied bit for bit. ``leavers``/``index`` may be
    None. Rows whose dest/index is out of range are not written; they set ``errors[0] = 1``.
    """
    m = src.shape[0]
    if m == 0 or src.numel() == 0:
        return
    s = _raw(_flat(src))
    d = s.numel() // m
    p = _raw(_flat(packed)) if packed.numel() else s  # 0 rows: never written
    o, ix, r = s, dest, 0
    if leavers is not None:
        o = _raw(_flat(leavers)) if leavers.numel() else s
        ix, r = index, leavers.shape[0]
    rows, bd = _tile(m, d)
    _compact_kernel[_grid(m, d, rows, bd)](
        s, dest, ix, o, p, errors, m, d, packed.shape[0], r,
        HAS_OUT=leavers is not None, ROWS=rows, BLOCK_D=bd, **_LAUNCH)


@triton.jit
def _linf_compact_kernel(x_ptr, g_ptr, xn_ptr, nz_ptr, eps_ptr, alpha_ptr, dest_ptr, index_ptr,
                         out_ptr, x_next_ptr, xn_next_ptr, err_ptr, N, D, P, R, lo, hi, bounds_ptr,
                         KIND: tl.constexpr, HAS_NOISE: tl.constexpr, ROWS: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    lo, hi = _clip_bounds(lo, hi, bounds_ptr, KIND)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < N
    cmask = (cols < D)[None, :]
    mask = rmask[:, None] & cmask
    offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
    dest = tl.load(dest_ptr + rows, mask=rmask, other=-1)
    index = tl.load(index_ptr + rows, mask=rmask, other=-1)
    stay = rmask & (dest >= 0) & (dest < P)
    go = rmask & (dest == -1) & (index >= 0) & (index < R)
    _flag(err_ptr, rmask & ~stay & ~go)
    e = tl.load(eps_ptr + rows, mask=rmask, other=0.0)[:, None]
    a = tl.load(alpha_ptr + rows, mask=rmask, other=0.0)[:, None]
    x_raw = tl.load(x_ptr + offs, mask=mask, other=0)
    xn_raw = tl.load(xn_ptr + offs, mask=mask, other=0)
    g = _dec(tl.load(g_ptr + offs, mask=mask, other=0), KIND)
    nz = 0.0
    if HAS_NOISE:
        nz = tl.load(nz_ptr + offs, mask=mask, other=0.0)
    r = _linf_value(_dec(x_raw, KIND), g, _dec(xn_raw, KIND), e, a, nz, lo, hi, HAS_NOISE)
    to = tl.where(stay, dest, 0).to(tl.int64)[:, None] * D + cols[None, :]
    smask = stay[:, None] & cmask
    tl.store(x_next_ptr + to, _enc(r, KIND), mask=smask)
    tl.store(xn_next_ptr + to, xn_raw, mask=smask)
    back = tl.where(go, index, 0).to(tl.int64)[:, None] * D + cols[None, :]
    tl.store(out_ptr + back, x_raw, mask=go[:, None] & cmask)  # a leaver keeps its iterate


def linf_step_compact(x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor,
                      noise: Optional[Tensor], dest: Tensor, index: Tensor, leavers: Tensor,
                      x_next: Tensor, x_nat_next: Tensor, errors: Tensor, clip_min: float, clip_max: float) -> None:
    """One kernel: leavers (dest == -1): leavers[index[i]] = x[i]; the others:
    x_next[dest[i]] = linf_step(x[i]), x_nat_next[dest[i]] = x_nat[i]. ``x`` is not modified;
    out-of-range rows are not written and set ``errors``."""
    n = x.shape[0]
    if n == 0 or x.numel() == 0:
        return
    d = x.numel() // n
    fx, fg, fn, fz, kind = _step_operands(x, grad, x_nat, noise)
    # Tensors with no rows are never written (every row fails the range test): pass x instead.
    fo, fxn, fnn = (_storage(t)[0] if t.numel() else fx for t in (leavers, x_next, x_nat_next))
    lo, hi, bounds = _bounds(kind, clip_min, clip_max, x.device)
    rows, bd = _tile(n, d, _block(kind))
    _linf_compact_kernel[_grid(n, d, rows, bd)](
        fx, fg, fn, fz, eps, alpha, dest, index, fo, fxn, fnn, errors,
        n, d, x_next.shape[0], leavers.shape[0], lo, hi, bounds if bounds is not None else eps,
        KIND=kind, HAS_NOISE=noise is not None, ROWS=rows, BLOCK_D=bd, **_LAUNCH)
