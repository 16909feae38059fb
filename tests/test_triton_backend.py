"""The Triton backend (``fastadv.ops.triton_kernels``) on what tests/test_ops.py does not reach.

tests/test_ops.py already compares every backend with the reference across dtypes, layouts and
small sizes. Here the Triton functions are called directly (no dispatch) on: rows longer than one
tile (D > BLOCK), more classes than one tile, more rows than one scan block in compaction_plan,
1-D / int64 / bool / odd-sized-element rows in compact_rows, int32 labels, NaN and tied logits,
NaN/±inf through the L∞ step, every fp16/bf16 bit pattern through the float32 round trip, and the
CUDA path (``@pytest.mark.gpu``; on the CPU the kernels run in the Triton interpreter, which
tests/conftest.py switches on). Interpreter cases are kept small (well under 2 s each).
"""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

import fastadv.ops as ops  # noqa: E402
from fastadv.ops import reference  # noqa: E402
from fastadv.ops._validation import compute_dtype  # noqa: E402
from fastadv.ops.library import empty_rows  # noqa: E402

tk = pytest.importorskip("fastadv.ops.triton_kernels")

# The interpreter computes in numpy, which warns about NaN/Inf arithmetic that these tests do on purpose.
pytestmark = [pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")]
CPU_OK = tk.supports(torch.device("cpu"))  # only under TRITON_INTERPRET=1
needs_interpreter = pytest.mark.skipif(not CPU_OK, reason="Triton on the CPU needs TRITON_INTERPRET=1")
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
NO_CLIP = (float("-inf"), float("inf"))
BIG_D = tk._BLOCK + 37  # a row spans two tiles (and is no multiple of any block)


def bits(t):
    """The bit patterns of a float tensor (-0.0 != +0.0, NaN == NaN)."""
    return t.view({torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
                   torch.bfloat16: torch.int16}[t.dtype])


def raw_bytes(t):
    """Any tensor's elements as bytes, in logical order (compares NaN payloads and -0.0 too)."""
    return t.contiguous().view(torch.uint8)


def _step_inputs(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_nat = torch.rand(shape, generator=g)
    x = (x_nat + (torch.rand(shape, generator=g) - 0.5) * 0.1).clamp(0, 1)
    grad = torch.randn(shape, generator=g)
    flat = grad.view(-1)
    flat[::5] = 0.0
    flat[1::7] = -0.0
    n = shape[0]
    eps = (torch.rand(n, generator=g) * 0.05).float()
    alpha = (torch.rand(n, generator=g) * 0.02).float()
    noise = torch.randn(shape, generator=g) * 1e-3
    cast = lambda t: t.to(dtype).to(device)
    vec = lambda t: t.to(compute_dtype(cast(x))).to(device)  # per-sample values and noise
    return cast(x), cast(grad), cast(x_nat), vec(eps), vec(alpha), vec(noise)


# ----------------------------------------------------------------------------- checks (CPU and CUDA)
def check_linf_step(device, dtype, shape, with_noise, channels_last=False):
    x, grad, x_nat, eps, alpha, noise = _step_inputs(shape, dtype, device)
    if channels_last:
        x, grad, x_nat, noise = (t.contiguous(memory_format=torch.channels_last) for t in (x, grad, x_nat, noise))
    noise = noise if with_noise else None
    want, got = x.clone(), x.clone()
    reference.linf_step(want, grad, x_nat, eps, alpha, noise, 0.0, 1.0)
    tk.linf_step(got, grad, x_nat, eps, alpha, noise, 0.0, 1.0)
    assert torch.equal(got, want)  # bit for bit, up to the sign of a zero (not part of the contract)
    nz = want != 0
    assert torch.equal(bits(got)[nz], bits(want)[nz])
    assert not torch.equal(got, x)


def check_l2_step(device, dtype, shape):
    x, grad, x_nat, eps, alpha, noise = _step_inputs(shape, dtype, device)
    grad[1] = 0  # ||g|| = 0 is guarded
    eps = eps * 20
    eps[0] = 1e-3  # projected onto the ball
    eps[-1] = 10.0  # inside the ball
    for nz in (None, noise):
        want, got = x.clone(), x.clone()
        reference.l2_step(want, grad, x_nat, eps, alpha * 30, nz, 0.0, 1.0)
        tk.l2_step(got, grad, x_nat, eps, alpha * 30, nz, 0.0, 1.0)
        tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
        torch.testing.assert_close(got.double(), want.double(), rtol=0, atol=tol)
        if nz is None:
            assert torch.equal(got[1], want[1])  # no gradient term: no reduction in play


def check_random_start(device, dtype, shape):
    _, _, x_nat, eps, _, _ = _step_inputs(shape, dtype, device)
    g = torch.Generator().manual_seed(3)
    for uniform in (True, False):
        r = (torch.rand(shape, generator=g) if uniform else torch.randn(shape, generator=g)).to(device).to(eps.dtype)
        scale = eps if uniform else torch.full_like(eps, 0.01)
        want = reference.start_from_noise(x_nat, r, scale, uniform, 0.0, 1.0)
        got = tk.start_from_noise(x_nat, r, scale, uniform, 0.0, 1.0)
        assert got.dtype == dtype and got.stride() == x_nat.stride() and torch.equal(got, want)


def check_early_stop(device, ldtype, ydtype):
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor([[1.0, 3.0, 3.0],      # tie: first index (1)
                           [nan, 5.0, 1.0],      # NaN is the maximum (0)
                           [0.0, nan, nan],      # first NaN (1)
                           [2.0, 1.0, 0.0],
                           [2.0, 1.0, 0.0],
                           [-1.0, -1.0, -1.0],   # full tie: 0
                           [-inf, -inf, -inf],   # all -inf: 0
                           [-inf, -inf, inf]], dtype=ldtype, device=device)
    y = torch.tensor([1, 1, 1, 0, 2, 0, 1, 2], dtype=ydtype, device=device)
    budget = torch.tensor([0, 0, 3, 0, 2, 1, 0, 0], device=device)
    kappa = torch.tensor([5, 0, 1, 0, 0, 2, 0, 0], device=device)
    b_ref, k_ref = budget.clone(), kappa.clone()
    want = reference.early_stop_update(logits, y, b_ref, k_ref)
    got = tk.early_stop_update(logits, y, budget, kappa)
    assert got.dtype == torch.bool
    assert got.tolist() == want.tolist() == [False, True, False, False, False, False, True, False]
    assert budget.tolist() == b_ref.tolist() == [0, 0, 3, 0, 1, 1, 0, 0]
    assert kappa.tolist() == k_ref.tolist() == [6, 0, 2, 1, 0, 3, 0, 1]


def check_early_stop_wide(device, ldtype, c):
    """More classes than one tile: the argmax carries across column blocks (ties, NaN, -inf)."""
    m = 6
    logits = torch.randn(m, c, generator=torch.Generator().manual_seed(c))
    logits[0, 5] = logits[0, c - 3] = 50.0  # tie across blocks: the first one
    logits[1, c - 1] = 50.0  # the maximum in the last block
    logits[2, c - 2] = float("nan")  # NaN in the last block beats everything
    logits[2, 0] = 50.0
    logits[3, 1] = float("nan")  # the first NaN, in the first block
    logits[3, c - 1] = float("nan")
    logits[4] = float("-inf")
    logits[4, c - 1] = -1e30  # the only finite value, in the last block
    logits = logits.to(ldtype).to(device)
    y = torch.tensor([5, c - 1, c - 2, 1, c - 1, 0], device=device, dtype=torch.int32)
    budget = torch.tensor([0, 1, 0, 2, 0, 0], device=device)
    kappa = torch.zeros(m, dtype=torch.int64, device=device)
    b_ref, k_ref = budget.clone(), kappa.clone()
    want = reference.early_stop_update(logits, y, b_ref, k_ref)
    got = tk.early_stop_update(logits, y, budget, kappa)
    assert torch.equal(got, want) and torch.equal(budget, b_ref) and torch.equal(kappa, k_ref)
    assert kappa[:5].tolist() == [1, 1, 1, 1, 1]  # each of those argmaxes was found


def check_compaction_plan(device, m, p_leave):
    leave = (torch.rand(m, generator=torch.Generator().manual_seed(m)) < p_leave).to(device)
    d_ref, n_ref = reference.compaction_plan(leave)
    dest, n = tk.compaction_plan(leave)
    assert dest.dtype == n.dtype == torch.int64 and n.dim() == 0
    assert torch.equal(dest, d_ref) and int(n) == int(n_ref)


def check_compact_rows(device, src, with_out=True):
    n = src.shape[0]
    g = torch.Generator().manual_seed(n + 1)
    leave = (torch.rand(n, generator=g) < 0.5).to(device)
    dest, n_active = reference.compaction_plan(leave)
    index = torch.randperm(n + 2, generator=g)[:n].to(device)
    out_ref = empty_rows(n + 2, src).zero_()  # the library hands the kernels tensors in src's layout
    out = out_ref.clone()
    want, got = empty_rows(int(n_active), src), empty_rows(int(n_active), src)
    errors = torch.zeros(1, dtype=torch.int32, device=device)
    reference.compact_rows(src, dest, index if with_out else None, out_ref if with_out else None, want, errors)
    tk.compact_rows(src, dest, index if with_out else None, out if with_out else None, got, errors)
    assert errors.item() == 0
    assert torch.equal(raw_bytes(got), raw_bytes(want)) and torch.equal(raw_bytes(out), raw_bytes(out_ref))
    assert torch.equal(raw_bytes(got), raw_bytes(src[~leave]))
    if with_out:
        assert torch.equal(raw_bytes(out[index[leave]]), raw_bytes(src[leave]))


def check_linf_step_compact(device, dtype, shape, channels_last=False):
    x, grad, x_nat, eps, alpha, noise = _step_inputs(shape, dtype, device)
    if channels_last:
        x, grad, x_nat, noise = (t.contiguous(memory_format=torch.channels_last) for t in (x, grad, x_nat, noise))
    n = shape[0]
    leave = (torch.rand(n, generator=torch.Generator().manual_seed(9)) < 0.4).to(device)
    leave[0], leave[-1] = True, False
    dest, n_active = reference.compaction_plan(leave)
    k = int(n_active)
    index = torch.randperm(n, generator=torch.Generator().manual_seed(2)).to(device)
    x_before = x.clone()
    results = []
    for fn in (reference.linf_step_compact, tk.linf_step_compact):
        out = torch.zeros_like(x)
        x_next, xn_next = torch.empty_like(x[:k]), torch.empty_like(x[:k])
        errors = torch.zeros(1, dtype=torch.int32, device=device)
        fn(x, grad, x_nat, eps, alpha, noise, dest, index, out, x_next, xn_next, errors, 0.0, 1.0)
        assert errors.item() == 0
        results.append((out, x_next, xn_next))
    (o_ref, x_ref, n_ref), (o, xg, ng) = results
    assert torch.equal(x, x_before)
    assert torch.equal(xg, x_ref) and torch.equal(bits(ng), bits(n_ref)) and torch.equal(bits(o), bits(o_ref))
    assert torch.equal(bits(o[index[leave]]), bits(x[leave]))


# ----------------------------------------------------------------------------- CPU (interpreter)
@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_noise", [False, True])
def test_linf_step_rows_longer_than_a_tile(dtype, with_noise):
    check_linf_step("cpu", dtype, (3, BIG_D), with_noise)


@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linf_step_many_small_rows_share_a_tile(dtype):
    # 300 rows of 5: one program holds many rows (per-row eps/alpha broadcast inside the tile).
    check_linf_step("cpu", dtype, (300, 5), with_noise=True)
    check_linf_step("cpu", dtype, (3, 2, 3, 5), with_noise=False, channels_last=True)


@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("eps", [0.0, 0.03, 5.0])
def test_linf_step_nan_and_inf_like_torch(dtype, eps):
    # Every combination of NaN/±inf/finite x, grad, x_nat and noise: a NaN anywhere but in grad gives
    # NaN (torch.maximum/minimum/clamp propagate it), sign(NaN) = sign(±0) = 0.
    nan, inf = float("nan"), float("inf")
    vals = torch.tensor([nan, inf, -inf, 0.5, -0.0, 2.0, -1.0])
    grids = torch.meshgrid(vals, torch.tensor([1.0, -1.0, 0.0, -0.0, nan]), vals, torch.tensor([0.0, nan, inf]),
                           indexing="ij")
    x, g, xn, nz = (t.reshape(1, -1) for t in grids)
    x, g, xn = x.to(dtype), g.to(dtype), xn.to(dtype)
    e, a = torch.tensor([eps]), torch.tensor([0.01])
    for noise in (None, nz):
        want, got = x.clone(), x.clone()
        reference.linf_step(want, g, xn, e, a, noise, 0.0, 1.0)
        tk.linf_step(got, g, xn, e, a, noise, 0.0, 1.0)
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
        assert bool(got.isnan().any()) and bool((got == 1).any())


@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_l2_step_rows_longer_than_a_tile(dtype):
    check_l2_step("cpu", dtype, (3, BIG_D))
    check_l2_step("cpu", dtype, (40, 3, 5))  # many rows per tile


@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_random_start_rows_longer_than_a_tile(dtype):
    check_random_start("cpu", dtype, (2, BIG_D))
    check_random_start("cpu", dtype, (70, 3))


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fp_conversions_exact_over_all_half_values(dtype):
    # start_from_noise with r = 0, scale = 1 and no clip is a float32 round trip of x_nat: every
    # fp16/bf16 bit pattern (subnormals, ±Inf, NaN) must come back; then float32 -> dtype rounding,
    # ties to even included (the interpreter's own bf16 cast truncates).
    h = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype).reshape(1, -1)
    out = tk.start_from_noise(h, torch.zeros(h.shape), torch.ones(1), False, *NO_CLIP)
    nan = torch.isnan(h)
    assert torch.equal(out[~nan], h[~nan]) and bool(torch.isnan(out[nan]).all())  # -0.0 + 0 is +0.0
    nz = ~nan & (h != 0)
    assert torch.equal(bits(out)[nz], bits(h)[nz])
    g = torch.Generator().manual_seed(0)
    f = torch.randn(1 << 15, generator=g) * torch.pow(10.0, torch.randint(-9, 6, (1 << 15,), generator=g).float())
    ties = torch.tensor([0x3F808000, 0x3F818000, 0x3F80C000, -0x40808000, 0x7F7FFFFF, 0x7F7F8000,
                         0x00008000, 0x00018000], dtype=torch.int32).view(torch.float32)
    f = torch.cat([f, ties, torch.tensor([65504.0, 65519.99, 65520.0, 2.98e-8, -6e-8, 1e-45,
                                          float("inf"), -float("inf"), float("nan")])])[None]
    out = tk.start_from_noise(torch.zeros(f.shape, dtype=dtype), f, torch.ones(1), False, *NO_CLIP)
    want = f.to(dtype)
    assert torch.equal(bits(out)[~want.isnan()], bits(want)[~want.isnan()])
    assert bool(out[want.isnan()].isnan().all())


@needs_interpreter
@pytest.mark.parametrize("ldtype", DTYPES, ids=str)
@pytest.mark.parametrize("ydtype", [torch.int64, torch.int32], ids=str)
def test_early_stop_update_ties_nan_and_int32_labels(ldtype, ydtype):
    check_early_stop("cpu", ldtype, ydtype)


@needs_interpreter
@pytest.mark.parametrize("ldtype", [torch.float32, torch.bfloat16], ids=str)
def test_early_stop_update_more_classes_than_a_tile(ldtype):
    check_early_stop_wide("cpu", ldtype, BIG_D)


@needs_interpreter
def test_early_stop_update_many_rows():
    m, c = 3000, 10
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(m, c, generator=g)
    logits[::7] = 0.0  # full ties
    y = torch.randint(0, c, (m,), generator=g, dtype=torch.int32)
    budget = torch.randint(0, 3, (m,), generator=g)
    kappa = torch.randint(0, 5, (m,), generator=g)
    b_ref, k_ref = budget.clone(), kappa.clone()
    want = reference.early_stop_update(logits, y, b_ref, k_ref)
    got = tk.early_stop_update(logits, y, budget, kappa)
    assert torch.equal(got, want) and torch.equal(budget, b_ref) and torch.equal(kappa, k_ref)


@needs_interpreter
@pytest.mark.parametrize("m", [1, tk._SCAN_BLOCK - 1, tk._SCAN_BLOCK, tk._SCAN_BLOCK + 1, 5000])
@pytest.mark.parametrize("p_leave", [0.0, 0.3, 1.0])
def test_compaction_plan_across_scan_blocks(m, p_leave):
    check_compaction_plan("cpu", m, p_leave)


@needs_interpreter
@pytest.mark.parametrize("src", [
    torch.arange(11, dtype=torch.int64) * 1_000_000_007,  # 1-D int64 (e.g. the index vector itself)
    torch.arange(9) % 3 == 0,  # 1-D bool
    torch.randn(7, dtype=torch.float64),
    torch.arange(2000, dtype=torch.int32),  # more rows than fit in one tile of 1-element rows
    (torch.arange(60) % 4 == 1).reshape(6, 2, 5),  # bool rows
    torch.arange(5 * 3 * 4, dtype=torch.int64).reshape(5, 3, 4),
    torch.randn(4, 3, dtype=torch.complex128),  # 16-byte elements, moved as bytes
    torch.randn(3, BIG_D).to(torch.bfloat16),  # rows longer than a tile
    torch.tensor([[float("nan"), -0.0]] * 5, dtype=torch.float16),  # bits kept, not values
], ids=lambda t: f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}")
@pytest.mark.parametrize("with_out", [True, False])
def test_compact_rows_any_dtype_and_rank(src, with_out):
    check_compact_rows("cpu", src, with_out)


@needs_interpreter
def test_compact_rows_channels_last_and_all_leave():
    src = torch.randn(5, 3, 4, 2).contiguous(memory_format=torch.channels_last)
    check_compact_rows("cpu", src)
    # Everyone leaves (the final scatter back to input order): packed has no rows.
    out = torch.zeros(7, 3, 4, 2).contiguous(memory_format=torch.channels_last)
    index = torch.tensor([6, 0, 3, 1, 5])
    packed = torch.empty(0, 3, 4, 2).contiguous(memory_format=torch.channels_last)
    tk.compact_rows(src, torch.full((5,), -1), index, out, packed, torch.zeros(1, dtype=torch.int32))
    assert torch.equal(out[index], src) and out[[2, 4]].abs().sum() == 0


@needs_interpreter
def test_compaction_never_writes_out_of_bounds():
    # A bad plan (dest >= rows of packed, index outside out) is dropped row by row, never written
    # past the end, and raises the error flag: the kernels do not read the plan on the host.
    src = torch.arange(8.0).reshape(4, 2)
    for fn, plan in ((tk.compact_rows, lambda: (src, torch.tensor([0, 5, -1, -1]), torch.tensor([0, 0, 1, 9]))),
                     (tk.linf_step_compact, None)):
        storage = torch.full((10, 2), -1.0)
        packed, out = storage[:2], storage[5:7]
        errors = torch.zeros(1, dtype=torch.int32)
        dest, index = torch.tensor([0, 5, -1, -1]), torch.tensor([0, 0, 1, 9])
        if plan is not None:
            fn(src, dest, index, out, packed, errors)
        else:
            e = torch.zeros(4)
            fn(src, src, src, e, e, None, dest, index, out, packed, storage[8:10], errors, -1e9, 1e9)
        assert packed[0].tolist() == [0.0, 1.0] and out[1].tolist() == [4.0, 5.0]
        assert (storage[2:5] == -1).all() and (storage[7] == -1).all() and (packed[1] == -1).all()
        assert errors.item() == 1


@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linf_step_compact_rows_longer_than_a_tile(dtype):
    check_linf_step_compact("cpu", dtype, (5, BIG_D))
    check_linf_step_compact("cpu", dtype, (40, 2, 3, 3), channels_last=True)


@needs_interpreter
def test_mixed_layouts_are_brought_to_x_layout_by_the_op(monkeypatch):
    # The kernels assume one row-dense layout; fastadv.ops (the one validation) converts the rest.
    x = torch.rand(2, 3, 4, 4)
    xt = torch.rand(3, 2, 4, 4).transpose(0, 1)  # not row-dense
    args = (x.contiguous(memory_format=torch.channels_last), xt, 0.1, 0.05)
    monkeypatch.setenv("FASTADV_BACKEND", "reference")
    want = ops.linf_step_(x.clone(), *args)
    monkeypatch.setenv("FASTADV_BACKEND", "triton")
    got = ops.linf_step_(x.clone(), *args)
    assert torch.equal(got, want)


def test_supports():
    assert tk.supports(torch.device("cpu")) == CPU_OK
    assert tk.supports(torch.device("cuda")) == torch.cuda.is_available()
    assert not tk.supports(torch.device("meta"))


def test_zero_rows_launch_nothing():
    # N = 0 must not launch (a grid with 0 programs is an error on CUDA): plain no-ops.
    x = torch.empty(0, 3, 4)
    e = torch.empty(0)
    tk.linf_step(x, x, x, e, e, None, 0.0, 1.0)
    tk.l2_step(x, x, x, e, e, None, 0.0, 1.0)
    assert tk.start_from_noise(x, x, e, True, 0.0, 1.0).shape == x.shape
    assert tk.early_stop_update(torch.empty(0, 5), torch.empty(0, dtype=torch.int64),
                                torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)).shape == (0,)
    dest, n = tk.compaction_plan(torch.empty(0, dtype=torch.bool))
    assert dest.shape == (0,) and int(n) == 0
    errors = torch.zeros(1, dtype=torch.int32)
    tk.compact_rows(x, dest, None, None, x, errors)
    tk.linf_step_compact(x, x, x, e, e, None, dest, dest, x, x, x, errors, 0.0, 1.0)


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.slow  # ~10 s: Triton -> PTX -> cubin for a few kernel specialisations
def test_gpu_code_has_no_fma_contraction_and_no_spills():
    """Compile kernels for sm_90 without a GPU (Triton ships ptxas), specialised as the runtime
    would, and read the PTX and ptxas' report: no FMA (each a*b + c rounds twice, as in the
    reference), no approximate math, no spills. The script's fused control proves the FMA check
    can fail. The CUDA leg of CI runs the full script over every kernel and dtype."""
    try:
        import triton.backends.nvidia.compiler  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("this Triton has no NVIDIA backend")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, os.path.join(root, "scripts", "triton_aot_check.py"), "--quick"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "0 failure(s)" in run.stdout and "_linf_kernel" in run.stdout and "_l2_kernel" in run.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_path_matches_reference(dtype):
    """The compiled kernels (not the interpreter): FMA contraction off, IEEE sqrt/div, bf16 rounding."""
    dev = "cuda"
    assert tk.supports(torch.device(dev))
    for shape in [(1, 3, 5, 5), (7, 3, 32, 32), (3, BIG_D), (300, 5)]:
        for noise in (False, True):
            check_linf_step(dev, dtype, shape, noise)
        check_l2_step(dev, dtype, shape if shape[0] > 1 else (2,) + shape[1:])
        check_random_start(dev, dtype, shape)
        check_linf_step_compact(dev, dtype, shape if shape[0] > 1 else (2,) + shape[1:])
    check_linf_step(dev, dtype, (5, 3, 9, 11), True, channels_last=True)
    check_linf_step_compact(dev, dtype, (6, 3, 4, 5), channels_last=True)
    for ydtype in (torch.int64, torch.int32):
        check_early_stop(dev, dtype, ydtype)
    check_early_stop_wide(dev, dtype, BIG_D)
    for m in (1, tk._SCAN_BLOCK + 1, 5000):
        check_compaction_plan(dev, m, 0.3)
    for src in (torch.arange(11, dtype=torch.int64), torch.arange(9) % 3 == 0,
                torch.randn(9, 7, 13).to(dtype), torch.randn(3, BIG_D).to(dtype)):
        check_compact_rows(dev, src.to(dev))
