"""The fused L∞ PGD step, per available backend, against the eager torch composite (SPEC §1).

    python -m pytest benchmarks/bench_kernels.py --benchmark-only -q

Cases, per device / dtype (fp32, bf16) / batch (128 and 512 × 3×32×32; on CUDA also 4096):

- ``eager``: what attack code writes without fastadv (sign, mul, add, max, min, clamp, in the tensor's
  dtype): the group's baseline;
- ``api:<backend>``: ``fastadv.ops.linf_step_`` with ``FASTADV_BACKEND=<backend>`` (validation, the
  ``torch.ops.fastadv`` custom op and the kernel);
- ``kernel:native``: ``torch.ops.fastadv._linf_step_`` alone (the C++/CUDA kernel and the
  dispatcher, no Python layer);
- ``copy`` (CUDA): ``x.copy_(y)`` of the same tensor, the bandwidth reference.

``extra_info`` holds the backend, the bytes moved (x, grad, x_nat read; x written) and the effective
GB/s at the median. CPU runs use 2 threads; CUDA timings synchronise inside the timed callable.
Triton on the CPU (the interpreter) is a correctness tool, not benchmarked.
"""
import pytest
import torch

import fastadv.ops as ops

SHAPE = (3, 32, 32)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
EPS, ALPHA = 8 / 255, 2 / 255


def _cases():
    for device in DEVICES:
        backends = [b for b in ops.available_backends(device) if not (device == "cpu" and b == "triton")]
        impls = ["eager"] + [f"api:{b}" for b in backends]
        impls += ["kernel:native"] if "native" in backends else []
        impls += ["copy"] if device == "cuda" else []
        for n in (128, 512) + ((4096,) if device == "cuda" else ()):
            for dname in DTYPES:
                for impl in impls:
                    yield pytest.param(device, n, dname, impl, id=f"{device}-{n}-{dname}-{impl}")


def _eager(x, grad, x_nat, eps, alpha):
    y = x + alpha * grad.sign()
    y = torch.min(torch.max(y, x_nat - eps), x_nat + eps)
    x.copy_(y.clamp_(0.0, 1.0))


@pytest.fixture(autouse=True)
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the CPU targets are stated for 2 threads
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("device,n,dname,impl", list(_cases()))
def test_linf_step(benchmark, monkeypatch, device, n, dname, impl):
    dtype = DTYPES[dname]
    g = torch.Generator().manual_seed(0)
    x_nat = torch.rand((n,) + SHAPE, generator=g).to(device=device, dtype=dtype)
    grad = torch.randn((n,) + SHAPE, generator=g).to(device=device, dtype=dtype)
    x = x_nat.clone()
    eps_t = torch.full((n,), EPS, device=device)
    alpha_t = torch.full((n,), ALPHA, device=device)
    eps_v, alpha_v = (t.to(dtype).view(-1, 1, 1, 1) for t in (eps_t, alpha_t))
    backend = impl.split(":")[-1]
    if impl.startswith("api:"):
        monkeypatch.setenv("FASTADV_BACKEND", backend)
        # check=False: the attack engine validates eps/alpha once per attack, not per step.
        call = lambda: ops.linf_step_(x, grad, x_nat, eps_t, alpha_t, check=False)
    elif impl == "kernel:native":
        call = lambda: torch.ops.fastadv._linf_step_(x, grad, x_nat, eps_t, alpha_t, None, 0.0, 1.0)
    elif impl == "copy":
        call = lambda: x.copy_(grad)
    else:
        call = lambda: _eager(x, grad, x_nat, eps_v, alpha_v)
    fn = call
    if device == "cuda":
        def fn():
            call()
            torch.cuda.synchronize()
    fn()  # warm-up (first-call costs: library loading, allocator)
    benchmark.group = f"linf_step {device} {dname} {n}x3x32x32"
    benchmark(fn)
    nbytes = x.numel() * x.element_size() * (2 if impl == "copy" else 4)
    benchmark.extra_info.update(backend=backend, bytes=nbytes, baseline=impl == "eager")
    if benchmark.stats is not None:  # None under --benchmark-disable (one plain call)
        med = benchmark.stats.stats.median
        benchmark.extra_info.update(gb_per_s=round(nbytes / med / 1e9, 2), images_per_sec=round(n / med))
    # The kernels must also be right where they are fast: one step from x_nat moves every pixel.
    if impl != "copy":
        assert not torch.equal(x, x_nat)
