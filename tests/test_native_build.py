"""The native backend is built, loaded and picked by default, and its ops match the reference.

Build first: ``pip install --no-build-isolation -e .``. tests/test_ops.py compares every backend with the
reference across dtypes, layouts and sizes; this file checks the build itself and calls
the kernel ops ``torch.ops.fastadv._*`` directly (``native.linf_step`` is ``torch.ops.fastadv._linf_step_``), including the inputs where
a plain C++ port goes wrong: sign(±0) and NaN, -0.0 against +0.0, argmax ties and NaN logits,
fp16/bf16 rounding and subnormals, and bad arguments. Exact means equal values and equal bits, except
for the sign of a zero result (see test_linf_step_bit_exact).
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import fastadv.ops as ops
from fastadv.ops import library, native, reference
from fastadv.ops._validation import compute_dtype

ON_CI = bool(os.environ.get("CI"))
BUILT = native.supports(torch.device("cpu"))
needs_native = pytest.mark.skipif(not BUILT and not ON_CI, reason="native backend not built "
                                  "(pip install --no-build-isolation -e .)")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
NO_CLIP = (float("-inf"), float("inf"))


def test_native_is_built_and_default_on_ci():
    info = native.build_info()
    if not ON_CI and not info["loaded"]:
        pytest.skip(f"native backend not built here: {info['error']}")
    assert info["loaded"] and info["cpu"], info
    assert ops.available_backends("cpu")[0] == "native"
    assert ops.get_backend("cpu") is native
    assert info["threads"] >= 1
    # The CUDA kernels are built exactly when torch can build them.
    from fastadv import _build
    assert info["cuda"] == (bool(torch.version.cuda) and _build.find_cuda_home()[0] is not None)
    assert native.supports(torch.device("cuda")) == info["cuda"]
    assert not native.supports(torch.device("meta"))


def test_failed_load_warns_once_and_falls_back():
    # A fresh interpreter where fastadv._C can't be imported and the JIT is off.
    code = (
        "import sys, warnings; sys.modules['fastadv._C'] = None\n"
        "warnings.simplefilter('always')\n"
        "import torch, fastadv.ops as ops\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    a = ops.available_backends('cpu'); b = ops.available_backends('cpu')\n"
        "    x = torch.zeros(2, 3); ops.linf_step_(x, torch.ones(2, 3), x.clone(), 0.1, 0.05)\n"
        "import json; print(json.dumps([a, b, len([m for m in w if 'native kernels unavailable' in str(m.message)]),\n"
        "                               float(x.sum()), ops.get_backend('cpu').__name__]))\n")
    env = dict(os.environ, FASTADV_NO_JIT="1")
    env.pop("FASTADV_BACKEND", None)
    env.pop("TRITON_INTERPRET", None)  # only native vs reference is at stake here
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    a, b, n_warnings, total, backend = json.loads(out.stdout)
    assert a == b == ["reference"] and n_warnings == 1 and backend == "fastadv.ops.reference"
    assert total == pytest.approx(6 * 0.05)  # the reference did the step: x = 0 + 0.05 * sign(1)


_JIT_FAILS = r"""
import json, shutil, sys, time, warnings
from pathlib import Path
sys.modules['fastadv._C'] = None  # no installed library: the just-in-time build is tried
import fastadv.ops.native as native
src = Path(sys.argv[1])
if not src.exists():  # a copy of csrc/ whose schema file does not compile
    shutil.copytree(native._source_dir(), src)
    (src / "ops.cpp").write_text("#error planted build failure\n" + (src / "ops.cpp").read_text())
native._source_dir = lambda: src
import fastadv.ops as ops
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter('always')
    t0 = time.perf_counter()
    backends = ops.available_backends('cpu')
    seconds = time.perf_counter() - t0
msgs = [str(m.message) for m in w if 'native kernels unavailable' in str(m.message)]
print(json.dumps([backends, msgs, seconds]))
"""


def test_a_failed_jit_build_is_one_line_with_its_log_and_is_not_retried(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("FASTADV_NO_JIT", "FASTADV_BACKEND", "TRITON_INTERPRET")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env["TORCH_EXTENSIONS_DIR"] = str(tmp_path / "torch_extensions")
    runs = []
    for _ in range(2):  # the second process must not build again
        out = subprocess.run([sys.executable, "-c", _JIT_FAILS, str(tmp_path / "csrc")], env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    (b1, msgs1, _), (b2, msgs2, t2) = runs
    assert b1 == b2 == ["reference"] and len(msgs1) == len(msgs2) == 1
    assert "\n" not in msgs1[0] and len(msgs1[0]) < 600, msgs1[0]  # one line, not the compiler's output
    log = next((tmp_path / "cache" / "fastadv").glob("jit-*.log"))
    assert str(log) in msgs1[0] and "planted build failure" in log.read_text()
    assert "failed before" in msgs2[0] and "delete" in msgs2[0] and t2 < 10  # remembered, no new build
    assert len(list((tmp_path / "cache" / "fastadv").glob("jit-failed-*"))) == 1


def bits(t):
    """The bit patterns of a float tensor (so that -0.0 != +0.0 and NaN == NaN)."""
    return t.view({torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
                   torch.bfloat16: torch.int16}[t.dtype])


def _step_inputs(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_nat = torch.rand(shape, generator=g)
    x = (x_nat + (torch.rand(shape, generator=g) - 0.5) * 0.1).clamp(0, 1)
    grad = torch.randn(shape, generator=g)
    flat = grad.view(-1)
    flat[::5] = 0.0
    flat[1::7] = -0.0
    flat[2::11] = float("nan")  # sign(NaN) = 0 in torch
    x_nat.view(-1)[3::13] = -0.0  # with eps = 0 rows: -0.0 vs +0.0 ties in the projection and clip
    x.view(-1)[3::13] = -0.0
    n = shape[0]
    eps = (torch.rand(n, generator=g) * 0.05).float()
    eps[0] = 0.0
    alpha = torch.full((n,), 0.01)
    noise = torch.randn(shape, generator=g) * 1e-3
    cast = lambda t: t.to(dtype).to(device)
    vec = lambda t: t.to(compute_dtype(x.to(dtype))).to(device)  # per-sample values and noise
    return cast(x), cast(grad), cast(x_nat), vec(eps), vec(alpha), vec(noise)


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 1, 5, 7), (5, 4096 + 3), (2, 3, 16, 16)])
@pytest.mark.parametrize("with_noise", [False, True])
def test_linf_step_bit_exact(device, dtype, shape, with_noise):
    x, grad, x_nat, eps, alpha, noise = _step_inputs(shape, dtype, device)
    noise = noise if with_noise else None
    want, got = x.clone(), x.clone()
    reference.linf_step(want, grad, x_nat, eps, alpha, noise, 0.0, 1.0)
    native.linf_step(got, grad, x_nat, eps, alpha, noise, 0.0, 1.0)
    # Equal values (NaN never comes out: sign(NaN) = 0). The sign of a zero result is not compared:
    # torch.maximum itself returns +0.0 or -0.0 on a (+0.0, -0.0) tie depending on whether the
    # element falls in its vectorised body or its scalar tail, so the reference has no fixed answer.
    assert torch.equal(got, want)
    nz = want != 0
    assert torch.equal(bits(got)[nz], bits(want)[nz])
    assert not torch.equal(got, x)  # the step did something


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("eps", [0.0, 0.03, 5.0])
def test_linf_step_nan_and_inf_like_torch(device, dtype, eps):
    # Every combination of NaN/±inf/finite x, grad, x_nat and noise (a NaN anywhere but in grad
    # gives NaN, as torch.maximum/minimum/clamp propagate it; sign(NaN) = 0), across the vectorised
    # body and the scalar tail of the loop.
    nan, inf = float("nan"), float("inf")
    vals = torch.tensor([nan, inf, -inf, 0.5, -0.0, 2.0, -1.0])
    grids = torch.meshgrid(vals, torch.tensor([1.0, -1.0, 0.0, nan]), vals, torch.tensor([0.0, nan, inf]),
                           indexing="ij")
    x, g, xn, nz = (t.reshape(1, -1).to(device) for t in grids)
    x, g, xn = x.to(dtype), g.to(dtype), xn.to(dtype)
    dt = compute_dtype(x)
    e, a = torch.tensor([eps], dtype=dt, device=device), torch.tensor([0.01], dtype=dt, device=device)
    nz = nz.to(dt)
    for noise in (None, nz):
        want, got = x.clone(), x.clone()
        reference.linf_step(want, g, xn, e, a, noise, 0.0, 1.0)
        native.linf_step(got, g, xn, e, a, noise, 0.0, 1.0)
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
        assert bool(got.isnan().any()) and bool((got == 1).any())  # both kinds of outcome occur


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_l2_step_and_random_start(device, dtype):
    x, grad, x_nat, eps, alpha, noise = _step_inputs((4, 3, 9, 9), dtype, device)
    grad = torch.nan_to_num(grad, nan=0.5)  # a NaN gradient makes the whole row NaN on both sides
    grad[1] = 0  # ||g|| = 0 is guarded
    eps = eps + 0.5  # some rows inside the ball, some projected
    eps[2] = 1e-3
    want, got = x.clone(), x.clone()
    reference.l2_step(want, grad, x_nat, eps, alpha * 30, noise, 0.0, 1.0)
    native.l2_step(got, grad, x_nat, eps, alpha * 30, noise, 0.0, 1.0)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]  # an ulp
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert torch.equal(got[1].float(), want[1].float())  # no gradient term: no reduction in play
    r = torch.rand(x_nat.shape, generator=torch.Generator().manual_seed(5)).to(device).to(eps.dtype)
    for uniform in (True, False):
        want = reference.start_from_noise(x_nat, r, eps, uniform, 0.0, 1.0)
        got = native.start_from_noise(x_nat, r, eps, uniform, 0.0, 1.0)
        assert got.dtype == dtype and torch.equal(got, want)


@needs_native
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fp_conversions_exact_over_all_half_values(dtype):
    # start_from_noise with r = 0, scale = 1, no clip is a float32 round trip of x_nat: every fp16 and
    # bf16 bit pattern (subnormals, Inf, NaN) must come back unchanged; then float32 -> dtype rounding.
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    h = bits.view(dtype).reshape(1, -1) if dtype.itemsize == 2 else torch.randn(1, 65536, dtype=dtype)
    dt = compute_dtype(h)
    out = native.start_from_noise(h, torch.zeros(h.shape, dtype=dt), torch.ones(1, dtype=dt), False, *NO_CLIP)
    nan = torch.isnan(h)
    assert torch.equal(out[~nan], h[~nan]) and bool(torch.isnan(out[nan]).all())
    g = torch.Generator().manual_seed(0)
    f = torch.randn(1 << 16, generator=g) * torch.pow(10.0, torch.randint(-9, 6, (1 << 16,), generator=g).float())
    f = torch.cat([f, torch.tensor([65504.0, 65519.99, 65520.0, 2.98e-8, -6e-8, float("inf"), -float("inf")])])[None]
    out = native.start_from_noise(torch.zeros(f.shape, dtype=dtype), f.to(dt), torch.ones(1, dtype=dt), False, *NO_CLIP)
    assert torch.equal(out, f.to(dtype))


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ldtype", DTYPES, ids=str)
@pytest.mark.parametrize("ydtype", [torch.int64, torch.int32], ids=str)
def test_early_stop_update(device, ldtype, ydtype):
    nan = float("nan")
    logits = torch.tensor([[1.0, 3.0, 3.0],    # tie: first index (1)
                           [nan, 5.0, 1.0],    # NaN is the maximum (0)
                           [0.0, nan, nan],    # first NaN (1)
                           [2.0, 1.0, 0.0],
                           [2.0, 1.0, 0.0],
                           [-1.0, -1.0, -1.0]], dtype=ldtype, device=device)
    y = torch.tensor([1, 1, 1, 0, 2, 0], dtype=ydtype, device=device)
    budget = torch.tensor([0, 0, 3, 0, 2, 1], device=device)
    kappa = torch.tensor([5, 0, 1, 0, 0, 2], device=device)
    b_ref, k_ref = budget.clone(), kappa.clone()
    want = reference.early_stop_update(logits, y, b_ref, k_ref)
    got = native.early_stop_update(logits, y, budget, kappa)
    assert got.tolist() == want.tolist() == [False, True, False, False, False, False]
    assert budget.tolist() == b_ref.tolist() == [0, 0, 3, 0, 1, 1]
    assert kappa.tolist() == k_ref.tolist() == [6, 0, 2, 1, 0, 3]


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.int64, torch.uint8], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_compaction_and_fused_step(device, dtype, channels_last):
    leave = torch.tensor([False, True, False, False, True, True, False], device=device)
    dest, n_active = native.compaction_plan(leave)
    assert dest.tolist() == [0, -1, 1, 2, -1, -1, 3] and n_active.item() == 4 and n_active.dim() == 0
    m = leave.shape[0]
    src = torch.arange(m * 3 * 5 * 3).reshape(m, 3, 5, 3).to(dtype).to(device)  # odd row bytes for uint8
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    src = src.contiguous(memory_format=fmt)
    index = torch.tensor([6, 0, 5, 1, 3, 2, 4], device=device)
    out = torch.full((8, 3, 5, 3), 7, dtype=dtype, device=device).contiguous(memory_format=fmt)
    out_ref = out.clone()
    packed = torch.empty((4, 3, 5, 3), dtype=dtype, device=device).contiguous(memory_format=fmt)
    packed_ref = torch.empty_like(packed)
    errors = library.error_flag(torch.device(device))
    native.compact_rows(src, dest, index, out, packed, errors)
    reference.compact_rows(src, dest, index, out_ref, packed_ref, errors)
    assert errors.item() == 0
    assert torch.equal(packed, packed_ref) and torch.equal(out, out_ref)
    assert torch.equal(packed, src[[0, 2, 3, 6]]) and torch.equal(out[[0, 3, 2]], src[[1, 4, 5]])
    native.compact_rows(src, dest, None, None, packed, errors)  # leavers dropped
    assert torch.equal(packed, src[[0, 2, 3, 6]])
    if not dtype.is_floating_point:
        return
    x, grad, x_nat, eps, alpha, noise = _step_inputs((m, 3, 5, 3), dtype, device, seed=2)
    x, grad, x_nat = (t.contiguous(memory_format=fmt) for t in (x, grad, x_nat))
    noise = noise.contiguous(memory_format=fmt)
    res = [torch.empty_like(packed), torch.empty_like(packed)]
    res_ref = [torch.empty_like(packed), torch.empty_like(packed)]
    out, out_ref = out.clone(), out.clone()
    x0 = x.clone()
    native.linf_step_compact(x, grad, x_nat, eps, alpha, noise, dest, index, out, *res, errors, 0.0, 1.0)
    reference.linf_step_compact(x, grad, x_nat, eps, alpha, noise, dest, index, out_ref, *res_ref, errors, 0.0, 1.0)
    assert errors.item() == 0
    assert torch.equal(x, x0)  # x itself is not modified
    assert torch.equal(out, out_ref) and torch.equal(res[1], res_ref[1])
    assert torch.equal(res[0], res_ref[0])  # values: see test_linf_step_bit_exact on signed zeros


@needs_native
def test_every_kernel_op_is_registered_for_the_cpu_and_for_cuda_when_built():
    """One namespace: the public ops are Python custom ops, the kernels ``fastadv::_*`` are C++ ops
    with a CPU kernel (and a CUDA kernel in a CUDA build)."""
    cuda = native.build_info()["cuda"]
    for kernel in native._KERNELS.values():
        name = f"fastadv::{kernel}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA") == cuda, name


@needs_native
def test_kernel_ops_guard_memory_against_a_raw_call():
    """The private kernel ops assume validated input (fastadv.ops checks it), but a raw call with
    bad shapes, layouts or plans must still never touch memory out of bounds."""
    x = torch.rand(2, 8)
    e, a = torch.full((2,), 0.1), torch.full((2,), 0.01)
    errors = torch.zeros(1, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="grad: expected shape"):
        native.linf_step(x, torch.rand(2, 9), x.clone(), e, a, None, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="x_nat: expected dtype"):
        native.linf_step(x, x.clone(), x.half(), e, a, None, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="eps: expected shape"):
        native.l2_step(x, x.clone(), x.clone(), torch.full((3,), 0.1), a, None, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="eps: expected dtype Double"):
        native.linf_step(x.double(), x.double(), x.double(), e, a, None, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="x: expected float64, float32, float16 or bfloat16"):
        native.linf_step(x.int(), x.int(), x.int(), e, a, None, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="x: rows must be dense"):
        xt = torch.rand(8, 2).t()
        native.linf_step(xt, xt.clone(), xt.clone(), e, a, None, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="x_nat: must have the memory layout of x"):
        x4 = torch.rand(2, 3, 4, 4)
        native.linf_step(x4, x4.clone(), x4.contiguous(memory_format=torch.channels_last), e, a, None, 0.0, 1.0)
    # Out-of-range plans: the rows are skipped (never written out of bounds) and the flag raised.
    storage = torch.full((6, 8), -7.0)
    for dest, index in (([0, 5], None), ([0, -1], [0, 9]), ([0, -2], None)):
        errors.zero_()
        leavers = None if index is None else storage[4:6]
        native.compact_rows(x, torch.tensor(dest), None if index is None else torch.tensor(index), leavers,
                            storage[1:2], errors)
        assert errors.item() == 1 and torch.equal(storage[1], x[0])
        assert bool((storage[0] == -7).all()) and bool((storage[2:4] == -7).all())
    with pytest.raises(RuntimeError, match="y: expected a contiguous int64/int32"):
        native.early_stop_update(torch.rand(2, 3), torch.zeros(2), torch.zeros(2, dtype=torch.long),
                                 torch.zeros(2, dtype=torch.long))
