"""The CUDA paths at the sizes where GPU kernels go wrong (marked ``gpu``; skipped without a GPU).

Every fast CUDA backend (native CUDA C++, Triton) against the reference, bit for bit where the
reference is exact: batches of 4096 at 3×32×32 and 3×224×224 (more elements than one grid-stride
pass of the native kernels covers: 65535 blocks × 256 threads × one 16-byte pack), storage offsets
that break 16-byte alignment (the scalar paths), L2 rows of 150k elements, 100 and 1000 classes in
the early-stop update, compaction of 4096 rows; then the attacks and one training epoch on CUDA.
``scripts/gpu_check.sh`` runs this file, and the op tests under compute-sanitizer.
"""
import pytest
import torch

import fastadv.ops as ops

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEV = "cuda"
FAST = [b for b in (ops.available_backends(DEV) if torch.cuda.is_available() else []) if b != "reference"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _backend(monkeypatch, name):
    monkeypatch.setenv("FASTADV_BACKEND", name)


def _inputs(shape, dtype, seed=0, offset=0):
    """x, grad, x_nat on the GPU; with ``offset`` > 0 each is a view starting ``offset`` elements
    into its storage (misaligned for the 128-bit paths)."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    n = 1
    for s in shape:
        n *= s
    out = []
    for kind in ("x", "grad", "x_nat"):
        buf = torch.empty(n + offset, device=DEV, dtype=torch.float32)
        if kind == "grad":
            buf.normal_(generator=g)
        else:
            buf.uniform_(generator=g)
        t = buf.to(dtype)[offset:].view(shape)
        out.append(t)
    x, grad, x_nat = out
    grad.view(-1)[::7] = 0
    return x, grad, x_nat


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b), (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(4096, 3, 32, 32), (4096, 3, 224, 224)], ids=["cifar", "imagenet"])
def test_linf_step_and_fused_compaction_at_scale(monkeypatch, name, dtype, shape):
    x, grad, x_nat = _inputs(shape, dtype)
    eps = torch.rand(shape[0], device=DEV) * 0.05
    _backend(monkeypatch, "reference")
    want = ops.linf_step_(x.clone(), grad, x_nat, eps, 0.01)
    _backend(monkeypatch, name)
    _same(ops.linf_step_(x.clone(), grad, x_nat, eps, 0.01), want)
    leave = torch.rand(shape[0], device=DEV) < 0.3
    dest, n = ops.compaction_plan(leave)
    index = torch.randperm(shape[0], device=DEV)
    outs = {}
    for backend in ("reference", name):
        _backend(monkeypatch, backend)
        leavers = torch.zeros_like(x)
        outs[backend] = (*ops.linf_step_compact(x, grad, x_nat, eps, 0.01, dest, n, index, leavers), leavers)
    for a, b in zip(outs["reference"], outs[name]):
        _same(a, b)
    del x, grad, x_nat, outs
    torch.cuda.empty_cache()


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("offset", [1, 3])
def test_misaligned_storage_takes_the_scalar_path(monkeypatch, name, dtype, offset):
    shape = (33, 3, 7, 9)
    x, grad, x_nat = _inputs(shape, dtype, offset=offset)
    assert x.data_ptr() % 16 != 0
    _backend(monkeypatch, "reference")
    want = ops.linf_step_(x.clone(), grad, x_nat, 0.03, 0.01)
    _backend(monkeypatch, name)
    got = torch.empty(x.numel() + offset, dtype=dtype, device=DEV)[offset:].view(shape).copy_(x)
    assert got.data_ptr() % 16 != 0  # the written tensor misaligned too (x.clone() would not be)
    _same(ops.linf_step_(got, grad, x_nat, 0.03, 0.01), want)
    dest, n = ops.compaction_plan(torch.arange(33, device=DEV) % 3 == 0)
    res = {}
    for backend in ("reference", name):
        _backend(monkeypatch, backend)
        leavers = torch.zeros_like(x)
        res[backend] = (ops.compact_rows(x, dest, n, torch.arange(33, device=DEV), leavers), leavers)
    for a, b in zip(res["reference"], res[name]):
        _same(a, b)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_l2_rows_of_150k_elements(monkeypatch, name, dtype):
    x, grad, x_nat = _inputs((6, 150_000), dtype)
    eps = torch.tensor([1e-3, 0.5, 5.0, 50.0, 500.0, 1e4], device=DEV)
    _backend(monkeypatch, "reference")
    want = ops.l2_step_(x.clone(), grad, x_nat, eps, 2.0)
    _backend(monkeypatch, name)
    got = ops.l2_step_(x.clone(), grad, x_nat, eps, 2.0)
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=0, atol=tol)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("classes", [10, 100, 1000])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_early_stop_update_many_classes(monkeypatch, name, classes, dtype):
    m = 4096
    logits = torch.randn(m, classes, device=DEV).to(dtype)
    logits[::17, 3] = logits[::17].amax(1)  # ties: the first index wins
    logits[::101, 5] = float("nan")  # NaN is the maximum
    y = torch.randint(0, classes, (m,), device=DEV)
    budget = torch.randint(0, 3, (m,), device=DEV)
    kappa = torch.randint(0, 5, (m,), device=DEV)
    res = {}
    for backend in ("reference", name):
        _backend(monkeypatch, backend)
        b, k = budget.clone(), kappa.clone()
        res[backend] = (ops.early_stop_update_(logits, y, b, k), b, k)
    for a, b in zip(res["reference"], res[name]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_random_start_and_plan_at_scale(monkeypatch, name, dtype):
    x_nat = torch.rand(4096, 3, 32, 32, device=DEV).to(dtype)
    for kind in ("uniform", "normal"):
        outs = []
        for backend in ("reference", name):
            _backend(monkeypatch, backend)
            outs.append(ops.random_start(x_nat, 0.03, kind, generator=torch.Generator(DEV).manual_seed(1)))
        _same(outs[1], outs[0])
    leave = torch.rand(4096, device=DEV) < 0.5
    plans = []
    for backend in ("reference", name):
        _backend(monkeypatch, backend)
        plans.append(ops.compaction_plan(leave))
    assert torch.equal(plans[0][0], plans[1][0]) and plans[0][1] == plans[1][1]


def test_an_invalid_plan_on_cuda_raises_at_the_next_host_read():
    src = torch.rand(8, 5, device=DEV)
    storage = torch.full((12, 5), -7.0, device=DEV)
    leavers = storage[2:10]
    dest = torch.tensor([0, 1, 9, -1, -1, -1, -1, -1], device=DEV)
    ops.compact_rows(src, dest, 2, torch.arange(8, device=DEV), leavers, check=False)  # no sync here
    with pytest.raises(IndexError, match="out of range"):
        ops.compaction_plan(torch.zeros(4, dtype=torch.bool, device=DEV))
    assert bool((storage[:2] == -7).all()) and bool((storage[10:] == -7).all())


def test_attacks_and_one_training_epoch_on_cuda():
    from fastadv.attacks import PGD, EarlyStopPGD
    from fastadv.models import create

    torch.manual_seed(0)
    model = create("preact_resnet18", num_classes=10).to(DEV).to(memory_format=torch.channels_last)
    x = torch.rand(256, 3, 32, 32, device=DEV).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (256,), device=DEV)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        pgd = PGD(model, eps=8 / 255, alpha=2 / 255, steps=10).run(x, y)
        fat = EarlyStopPGD(model, eps=8 / 255, alpha=2 / 255, steps=10, tau=1).run(x, y)
    for res in (pgd, fat):
        assert (res.x_adv - x).abs().max().item() <= 8 / 255 + 1e-6
    assert pgd.bp == 2560 and fat.bp <= pgd.bp
    import fastadv
    res = fastadv.train(method="fat", tau=1, dataset="digits", epochs=1, device=DEV, out_dir=False,
                        progress=False)
    assert len(res.history) == 1 and next(res.model.parameters()).is_cuda
    assert 0 < res.history[0]["bp_avg"] < 10  # FAT τ = 1 saves backward passes


def test_autoattack_keeps_the_points_where_the_caller_has_them():
    """The official habit: the set stays on the CPU, each batch of 250 goes to the model's GPU;
    the verdicts equal those of the same run with the points already on the GPU."""
    from fastadv.attacks import AutoAttack

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10)).to(DEV).eval()
    x = torch.rand(300, 3, 4, 4)
    y = torch.randint(0, 10, (300,))
    on_host = AutoAttack(model, eps=0.1, version="lite", batch_size=128).run(x, y)
    on_gpu = AutoAttack(model, eps=0.1, version="lite", batch_size=128).run(x.to(DEV), y.to(DEV))
    assert on_host.x_adv.device.type == "cpu" and on_host.robust.device.type == "cpu"
    assert torch.equal(on_host.robust, on_gpu.robust.cpu())
    assert torch.equal(on_host.forward, on_gpu.forward.cpu())
    torch.testing.assert_close(on_host.x_adv, on_gpu.x_adv.cpu(), rtol=0, atol=0)
