"""Every backend of every kernel against the plain-PyTorch reference (SPEC §1).

The reference (``fastadv.ops.reference``) is the executable spec. Each fast backend available on
this machine (native C++, Triton under ``TRITON_INTERPRET=1``, CUDA when present) must reproduce it:
bit for bit for the L∞ step, the random start, the early-stop update and compaction (every operation
in them is exactly rounded in the compute dtype), and to rounding for the L2 step (a reduction).
Inputs cover float64/fp32/fp16/bf16, contiguous and channels_last, N = 0 and 1, sizes that are no
multiple of any block, per-sample eps, and FAT's ω noise. tests/test_ops_safety.py covers bad plans,
overlapping inputs, float64 attacks, the L2 norm's range and the one validation of raw op calls.
"""
import math

import pytest
import torch

import fastadv.ops as ops
from fastadv.ops import reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FAST = [(d, b) for d in DEVICES for b in ops.available_backends(d) if b != "reference"]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# (shape, channels_last): odd sizes that are multiples of no block, N = 0 and 1, any rank.
SHAPES = [((0, 3, 8, 8), False), ((1, 3, 5, 5), False), ((3, 7, 13), False), ((2, 1023), False),
          ((5, 3, 9, 11), True), ((4, 3, 32, 32), False), ((4, 3, 32, 32), True)]


def _ids(v):
    return str(v).replace("torch.", "")


def make(shape, dtype, device, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_nat = torch.rand(shape, generator=g).to(dtype)
    x = (x_nat.float() + (torch.rand(shape, generator=g) - 0.5) * 0.06).clamp(0, 1).to(dtype)
    grad = torch.randn(shape, generator=g).to(dtype)
    if grad.numel():
        grad.view(-1)[::7] = 0  # sign(0) = 0 must hold
        grad.view(-1)[3::11] = -0.0
    ts = [t.to(device) for t in (x, grad, x_nat)]
    if channels_last:
        ts = [t.contiguous(memory_format=torch.channels_last) for t in ts]
    return ts


def per_sample_eps(n, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=g) * 0.05).to(device)


def run_as(name, fn, monkeypatch):
    monkeypatch.setenv("FASTADV_BACKEND", name)
    try:
        return fn()
    finally:
        monkeypatch.delenv("FASTADV_BACKEND")


@pytest.mark.parametrize("device,name", FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("shape,cl", SHAPES, ids=_ids)
@pytest.mark.parametrize("eps_kind", ["float", "tensor"])
def test_linf_step_matches_reference(device, name, dtype, shape, cl, eps_kind, monkeypatch):
    x, grad, x_nat = make(shape, dtype, device, cl)
    eps = 8 / 255 if eps_kind == "float" else per_sample_eps(shape[0], device)
    alpha = 2 / 255 if eps_kind == "float" else per_sample_eps(shape[0], device, seed=2)
    want = run_as("reference", lambda: ops.linf_step_(x.clone(), grad, x_nat, eps, alpha), monkeypatch)
    got = x.clone()
    ret = run_as(name, lambda: ops.linf_step_(got, grad, x_nat, eps, alpha), monkeypatch)
    assert ret is got and got.dtype == dtype and got.stride() == x.stride()
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("device,name", FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("shape,cl", SHAPES[1:5], ids=_ids)
def test_linf_step_with_noise_and_clip_bounds(device, name, dtype, shape, cl, monkeypatch):
    x, grad, x_nat = make(shape, dtype, device, cl)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to(device) * 1e-3
    args = dict(eps=0.03, alpha=0.01, clip_min=0.1, clip_max=0.9, noise=noise)
    want = run_as("reference", lambda: ops.linf_step_(x.clone(), grad, x_nat, **args), monkeypatch)
    got = run_as(name, lambda: ops.linf_step_(x.clone(), grad, x_nat, **args), monkeypatch)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # The bounds as the storage dtype rounds them (0.1 is 0.09998 in float16).
    lo, hi = (torch.tensor(v, dtype=torch.float64).to(dtype).item() for v in (0.1, 0.9))
    assert got.min().item() >= lo and got.max().item() <= hi


def test_reference_linf_step_semantics():
    """The reference itself, on hand-checked numbers: sign(0) = 0, projection, then clipping."""
    x_nat = torch.tensor([[0.50, 0.50, 0.50, 0.99, 0.01]])
    x = torch.tensor([[0.52, 0.50, 0.49, 0.99, 0.01]])
    grad = torch.tensor([[1.0, 0.0, -1.0, 1.0, -1.0]])
    ops.linf_step_(x, grad, x_nat, eps=0.03, alpha=0.02)
    # 0.54 -> projected to 0.53; 0.50 stays (sign 0); 0.47; 0.99+0.02 -> clipped to 1; 0.01-0.02 -> 0.
    torch.testing.assert_close(x, torch.tensor([[0.53, 0.50, 0.47, 1.0, 0.0]]))


@pytest.mark.parametrize("device,name", FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("shape,cl", SHAPES, ids=_ids)
def test_l2_step_matches_reference(device, name, dtype, shape, cl, monkeypatch):
    x, grad, x_nat = make(shape, dtype, device, cl)
    if grad.shape[0] > 1:
        grad[1] = 0  # a zero gradient row: guarded norm, no nan
    eps = per_sample_eps(shape[0], device) * 10
    want = run_as("reference", lambda: ops.l2_step_(x.clone(), grad, x_nat, eps, 0.05), monkeypatch)
    got = run_as(name, lambda: ops.l2_step_(x.clone(), grad, x_nat, eps, 0.05), monkeypatch)
    assert torch.isfinite(got.float()).all()
    # One storage-dtype rounding step apart at most (different summation order in the norm).
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=0, atol=tol)


def _fosc_case(shape, dtype, device, cl):
    """x, grad, x_nat, x_start (the start: x moved back a little) and a threshold at the
    median FOSC of the rows, so that some rows step and some stop."""
    x, grad, x_nat = make(shape, dtype, device, cl)
    g = torch.Generator().manual_seed(2)
    x_start = (x.float().cpu() - torch.rand(x.shape, generator=g) * 0.02).clamp(0, 1).to(dtype)
    x_start = x_start.to(device)
    if cl:
        x_start = x_start.contiguous(memory_format=torch.channels_last)
    return x, grad, x_nat, x_start


@pytest.mark.parametrize("device,name", FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("shape,cl", SHAPES, ids=_ids)
@pytest.mark.parametrize("always", [False, True])
def test_linf_fosc_step_matches_reference(device, name, dtype, shape, cl, always, monkeypatch):
    x, grad, x_nat, x_start = _fosc_case(shape, dtype, device, cl)
    eps = per_sample_eps(shape[0], device) + 0.01
    c_ref = reference.linf_fosc_step(x.clone(), grad, x_nat, x_start,
                                     eps.to(v_dtype(x)), eps.to(v_dtype(x)) / 4, 0.0, always, 0.0, 1.0)
    thr = float(c_ref.median()) if c_ref.numel() else 0.0
    # A threshold exactly at one row's FOSC would test rounding, not the kernel: move it off.
    thr = thr + 1e-3 * max(abs(thr), 1e-3)
    want_x = x.clone()
    want = run_as("reference", lambda: ops.linf_fosc_step_(want_x, grad, x_nat, x_start, eps, eps / 4,
                                                           thr, always), monkeypatch)
    got_x = x.clone()
    got = run_as(name, lambda: ops.linf_fosc_step_(got_x, grad, x_nat, x_start, eps, eps / 4, thr,
                                                   always), monkeypatch)
    assert got.dtype == v_dtype(x) and got.shape == (shape[0],)
    tol = {torch.float64: 1e-12}.get(dtype, 1e-5)  # float64 sums in another order
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert torch.equal(got_x, want_x)  # the same rows stepped, bit for bit
    if shape[0] > 1 and not always:
        moved = (got_x != x).flatten(1).any(1)
        assert moved.tolist() == (want > thr).tolist() and 0 < int(moved.sum()) < shape[0]


def v_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def test_reference_fosc_is_the_first_order_stationary_condition():
    """c = ε‖g‖₁ − ⟨x − x⁰, g⟩ on a hand-made row; c <= threshold stops the row."""
    x_start = torch.tensor([[0.5, 0.5, 0.5]])
    x = torch.tensor([[0.6, 0.4, 0.5]])
    g = torch.tensor([[1.0, -2.0, 0.5]])
    x_nat = torch.full((1, 3), 0.5)
    e = torch.tensor([0.1])
    # ε‖g‖₁ = 0.35; ⟨x − x⁰, g⟩ = 0.1·1 + (−0.1)(−2) + 0 = 0.3; c = 0.05.
    y = x.clone()
    c = ops.linf_fosc_step_(y, g, x_nat, x_start, e, 0.05, threshold=0.06)
    assert c.item() == pytest.approx(0.05, abs=1e-7) and torch.equal(y, x)  # stopped
    c = ops.linf_fosc_step_(y, g, x_nat, x_start, e, 0.05, threshold=0.04)
    assert torch.allclose(y, torch.tensor([[0.6, 0.4, 0.55]]))  # stepped, projected onto x_nat ± ε
    z = x.clone()
    ops.linf_fosc_step_(z, g, x_nat, x_start, e, 0.05, threshold=1.0, always=True)
    assert torch.equal(z, y)


def test_reference_l2_step_projects_onto_the_ball():
    x_nat = torch.full((2, 4), 0.5)
    x = x_nat.clone()
    grad = torch.tensor([[3.0, 4.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    ops.l2_step_(x, grad, x_nat, eps=torch.tensor([0.5, 0.1]), alpha=torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(x[0], torch.tensor([0.65, 0.70, 0.5, 0.5]))  # inside the ball: α·g/‖g‖
    torch.testing.assert_close((x[1] - 0.5).norm(), torch.tensor(0.1))  # projected to radius ε


@pytest.mark.parametrize("device,name", FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("shape,cl", SHAPES, ids=_ids)
@pytest.mark.parametrize("kind", ["uniform", "normal"])
def test_random_start_matches_reference(device, name, dtype, shape, cl, kind, monkeypatch):
    _, _, x_nat = make(shape, dtype, device, cl)
    eps = per_sample_eps(shape[0], device)

    def start():
        gen = torch.Generator(device=device).manual_seed(7)
        return ops.random_start(x_nat, eps, kind=kind, sigma=0.01, generator=gen)
    want, got = run_as("reference", start, monkeypatch), run_as(name, start, monkeypatch)
    assert got.dtype == dtype and got.shape == x_nat.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_random_start_statistics_and_none():
    x = torch.full((64, 3, 16, 16), 0.5)
    u = ops.random_start(x, 0.1, kind="uniform", generator=torch.Generator().manual_seed(0))
    d = u - x
    assert float(d.abs().max()) <= 0.1 + 1e-7 and abs(float(d.mean())) < 2e-3
    assert abs(float(d.std()) - 0.1 / math.sqrt(3)) < 2e-3  # U(-ε, ε) has std ε/√3
    n = ops.random_start(x, 0.1, kind="normal", sigma=0.001, generator=torch.Generator().manual_seed(0))
    assert abs(float((n - x).std()) - 0.001) < 5e-5
    same = ops.random_start(x, 0.1, kind=None)
    assert torch.equal(same, x) and same.data_ptr() != x.data_ptr()
    clipped = ops.random_start(torch.ones(8, 100), 0.5, generator=torch.Generator().manual_seed(0))
    assert float(clipped.max()) <= 1.0


def _logits_case(m, c, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(m, c, generator=g)
    if m > 2:
        logits[1] = 0.0  # a full tie: argmax is the first index
        logits[2, [0, 2]] = 5.0  # a tie between two classes
    y = torch.randint(0, c, (m,), generator=g)
    if m > 1:
        y[0] = int(logits[0].argmax())  # at least one correct row
    budget = torch.randint(0, 3, (m,), generator=g)
    kappa = torch.randint(0, 5, (m,), generator=g)
    return logits.to(dtype).to(device), y.to(device), budget.to(device), kappa.to(device)


@pytest.mark.parametrize("device,name", FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("m,c", [(0, 10), (1, 10), (7, 3), (130, 10), (33, 100)])
def test_early_stop_update_matches_reference(device, name, dtype, m, c, monkeypatch):
    logits, y, budget, kappa = _logits_case(m, c, dtype, device)
    b_ref, k_ref = budget.clone(), kappa.clone()
    want = run_as("reference", lambda: ops.early_stop_update_(logits, y, b_ref, k_ref), monkeypatch)
    got = run_as(name, lambda: ops.early_stop_update_(logits, y, budget, kappa), monkeypatch)
    assert got.dtype == torch.bool
    assert torch.equal(got, want) and torch.equal(budget, b_ref) and torch.equal(kappa, k_ref)


def test_early_stop_update_rules():
    # rows: correct; wrong with budget 0 (leaves); wrong with budget 2 (spends one); correct, budget 0.
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 1, 1, 1])
    budget, kappa = torch.tensor([1, 0, 2, 0]), torch.tensor([3, 0, 1, 0])
    leave = ops.early_stop_update_(logits, y, budget, kappa)
    assert leave.tolist() == [False, True, False, False]
    assert budget.tolist() == [1, 0, 1, 0]  # a correct check does not restore the budget
    assert kappa.tolist() == [4, 0, 1, 1]


@pytest.mark.parametrize("device,name", FAST)
@pytest.mark.parametrize("m", [0, 1, 5, 257, 1500])
def test_compaction_plan_matches_reference(device, name, m, monkeypatch):
    leave = torch.rand(m, generator=torch.Generator().manual_seed(m)) < 0.4
    leave = leave.to(device)
    d_ref, n_ref = run_as("reference", lambda: ops.compaction_plan(leave), monkeypatch)
    dest, n = run_as(name, lambda: ops.compaction_plan(leave), monkeypatch)
    assert n == n_ref == int((~leave).sum()) and torch.equal(dest, d_ref)
    if m:
        assert dest[~leave].tolist() == list(range(n))  # stable order
        assert (dest[leave] == -1).all()


@pytest.mark.parametrize("device,name", FAST)
@pytest.mark.parametrize("dtype", DTYPES + [torch.int64, torch.bool], ids=_ids)
@pytest.mark.parametrize("shape,cl", [((0, 4), False), ((1, 3, 5, 5), False), ((9, 7, 13), False),
                                      ((9,), False), ((6, 3, 4, 5), True)], ids=_ids)
def test_compact_rows_matches_reference(device, name, dtype, shape, cl, monkeypatch):
    n = shape[0]
    g = torch.Generator().manual_seed(n)
    src = (torch.rand(shape, generator=g) * 100).to(dtype).to(device)
    if cl:
        src = src.contiguous(memory_format=torch.channels_last)
    leave = (torch.rand(n, generator=g) < 0.5).to(device)
    index = torch.randperm(n + 3, generator=g)[:n].to(device)  # rows' positions in a larger output
    dest, n_active = ops.compaction_plan(leave)
    out_ref = torch.zeros((n + 3,) + shape[1:], dtype=dtype, device=device)
    out = out_ref.clone()
    want = run_as("reference", lambda: ops.compact_rows(src, dest, n_active, index, out_ref), monkeypatch)
    got = run_as(name, lambda: ops.compact_rows(src, dest, n_active, index, out), monkeypatch)
    assert torch.equal(got, want) and torch.equal(out, out_ref)
    assert torch.equal(got, src[~leave])  # the spec, said plainly
    assert torch.equal(out[index[leave]], src[leave])


@pytest.mark.parametrize("device,name", FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("shape,cl", SHAPES, ids=_ids)
def test_linf_step_compact_matches_reference(device, name, dtype, shape, cl, monkeypatch):
    x, grad, x_nat = make(shape, dtype, device, cl)
    n = shape[0]
    leave = (torch.rand(n, generator=torch.Generator().manual_seed(5)) < 0.4).to(device)
    index = torch.arange(n, device=device).flip(0)
    eps = per_sample_eps(n, device)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(4)).to(device) * 1e-3
    dest, n_active = ops.compaction_plan(leave)
    x_before = x.clone()

    def call(out):
        return ops.linf_step_compact(x, grad, x_nat, eps, 0.01, dest, n_active, index, out, noise=noise)
    out_ref, out = torch.zeros_like(x), torch.zeros_like(x)
    xr, xnr = run_as("reference", lambda: call(out_ref), monkeypatch)
    xg, xng = run_as(name, lambda: call(out), monkeypatch)
    assert torch.equal(x, x_before)  # x itself is not modified
    torch.testing.assert_close(xg, xr, rtol=0, atol=0)
    assert torch.equal(xng, xnr) and torch.equal(out, out_ref)
    # And the contract, said plainly: leavers keep their iterate; the others are stepped and packed.
    stepped = ops.linf_step_(x.clone(), grad, x_nat, eps, 0.01, noise=noise)
    assert torch.equal(xg, stepped[~leave]) and torch.equal(xng, x_nat[~leave])
    assert torch.equal(out[index[leave]], x[leave])


def test_compaction_round_trip_restores_input_order():
    """Pack, pack again, then scatter the survivors: every row lands at its original position."""
    n = 11
    src = torch.arange(n * 2, dtype=torch.float32).view(n, 2)
    out = torch.full_like(src, -1)
    index = torch.arange(n)
    rows = src
    for mask in ([0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0], [1, 0, 0, 1, 0, 0, 0, 0]):
        dest, m = ops.compaction_plan(torch.tensor(mask, dtype=torch.bool))
        new_rows = ops.compact_rows(rows, dest, m, index, out)
        index = ops.compact_rows(index, dest, m)
        rows = new_rows
    everyone = torch.full((rows.shape[0],), -1, dtype=torch.int64)
    ops.compact_rows(rows, everyone, 0, index, out)
    assert torch.equal(out, src)


# ----------------------------------------------------------------------------- bad input
def _step_inputs():
    return torch.rand(2, 3), torch.randn(2, 3), torch.rand(2, 3)


@pytest.mark.parametrize("fn", [ops.linf_step_, ops.l2_step_])
@pytest.mark.parametrize("change,exc,word", [
    (dict(grad=torch.randn(2, 4)), ValueError, "grad"),
    (dict(x_nat=torch.rand(3, 3)), ValueError, "x_nat"),
    (dict(grad=torch.randn(2, 3, dtype=torch.float64)), TypeError, "grad"),
    (dict(x_nat=torch.rand(2, 3).half()), TypeError, "x_nat"),
    (dict(x=torch.ones(2, 3, dtype=torch.int64)), TypeError, "x"),
    (dict(grad=[1.0, 2.0]), TypeError, "grad"),
    (dict(eps=-0.1), ValueError, "eps"),
    (dict(eps=float("nan")), ValueError, "eps"),
    (dict(eps=float("inf")), ValueError, "eps"),
    (dict(eps=torch.tensor([0.1, float("nan")])), ValueError, "eps"),
    (dict(eps=torch.tensor([0.1, -0.2])), ValueError, "eps"),
    (dict(eps=torch.tensor([0.1, 0.2, 0.3])), ValueError, "eps"),
    (dict(eps="big"), TypeError, "eps"),
    (dict(alpha=-1.0), ValueError, "alpha"),
    (dict(alpha=torch.tensor([float("inf"), 1.0])), ValueError, "alpha"),
    (dict(clip_min=1.0, clip_max=0.0), ValueError, "clip_min"),
    (dict(noise=torch.randn(2, 2)), ValueError, "noise"),
    (dict(x=torch.tensor(0.5), grad=torch.tensor(1.0), x_nat=torch.tensor(0.5)), ValueError, "x"),
])
def test_step_bad_input_names_the_argument(fn, change, exc, word):
    x, grad, x_nat = _step_inputs()
    args = dict(x=x, grad=grad, x_nat=x_nat, eps=0.1, alpha=0.01, clip_min=0.0, clip_max=1.0)
    args.update(change)
    before = args["x"].clone() if isinstance(args["x"], torch.Tensor) else None
    with pytest.raises(exc, match=word):
        fn(**args)
    assert before is None or torch.equal(args["x"], before)  # nothing was written


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_step_device_mismatch_names_the_argument():
    x, grad, x_nat = _step_inputs()
    with pytest.raises(ValueError, match="grad"):
        ops.linf_step_(x, grad.cuda(), x_nat, 0.1, 0.01)


def test_device_mismatch_of_eps_names_it():
    x, grad, x_nat = _step_inputs()
    with pytest.raises(ValueError, match="eps"):
        ops.linf_step_(x, grad, x_nat, torch.tensor([0.1, 0.1], device="meta"), 0.01)


def test_step_refuses_a_leaf_that_requires_grad():
    x, grad, x_nat = _step_inputs()
    with pytest.raises(ValueError, match="x requires grad"):
        ops.linf_step_(x.requires_grad_(), grad, x_nat, 0.1, 0.01)


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(kind="gaussian"), ValueError, "kind"),
    (dict(eps=-1.0), ValueError, "eps"),
    (dict(kind="normal", sigma=-0.1), ValueError, "sigma"),
    (dict(x_nat=torch.zeros(2, 3, dtype=torch.int32)), TypeError, "x_nat"),
])
def test_random_start_bad_input(kwargs, exc, word):
    args = dict(x_nat=torch.rand(2, 3), eps=0.1)
    args.update(kwargs)
    with pytest.raises(exc, match=word):
        ops.random_start(**args)


@pytest.mark.parametrize("change,exc,word", [
    (dict(logits=torch.randn(3)), ValueError, "logits"),
    (dict(y=torch.zeros(4, dtype=torch.int64)), ValueError, "y"),
    (dict(y=torch.zeros(3)), TypeError, "y"),
    (dict(budget=torch.zeros(3, dtype=torch.int32)), TypeError, "budget"),
    (dict(kappa=torch.zeros(2, dtype=torch.int64)), ValueError, "kappa"),
])
def test_early_stop_update_bad_input(change, exc, word):
    args = dict(logits=torch.randn(3, 5), y=torch.zeros(3, dtype=torch.int64),
                budget=torch.zeros(3, dtype=torch.int64), kappa=torch.zeros(3, dtype=torch.int64))
    args.update(change)
    with pytest.raises(exc, match=word):
        ops.early_stop_update_(**args)


def test_compaction_bad_input():
    with pytest.raises(TypeError, match="leave"):
        ops.compaction_plan(torch.zeros(3, dtype=torch.int64))
    src = torch.rand(3, 2)
    dest, n = ops.compaction_plan(torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match="n_active"):
        ops.compact_rows(src, dest, 5)
    with pytest.raises(ValueError, match="dest"):
        ops.compact_rows(src, dest[:2], n)
    with pytest.raises(ValueError, match="index"):
        ops.compact_rows(src, dest, n, leavers=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="leavers"):
        ops.compact_rows(src, dest, n, torch.arange(3), torch.zeros(3, 5))


# ----------------------------------------------------------------------------- dispatch, library
def test_available_backends_and_forcing(monkeypatch):
    names = ops.available_backends("cpu")
    assert "reference" in names
    # Fastest first: the Triton interpreter (if on) is slower than the reference, never the default.
    assert names[-1] == ("triton" if "triton" in names else "reference")
    monkeypatch.setenv("FASTADV_BACKEND", "reference")
    assert ops.get_backend("cpu").__name__ == "fastadv.ops.reference"
    monkeypatch.setenv("FASTADV_BACKEND", "fastest")
    with pytest.raises(ValueError, match="FASTADV_BACKEND"):
        ops.linf_step_(*_step_inputs(), 0.1, 0.01)


def test_default_backend_is_the_first_available(monkeypatch):
    monkeypatch.delenv("FASTADV_BACKEND", raising=False)
    first = ops.available_backends("cpu")[0]
    assert ops.get_backend("cpu").__name__.rsplit(".", 1)[-1] == {
        "native": "native", "triton": "triton_kernels", "reference": "reference"}[first]


def test_torch_ops_are_registered():
    for name in ("linf_step_", "l2_step_", "start_from_noise", "early_stop_update_",
                 "compaction_plan", "compact_rows", "linf_step_compact", "linf_fosc_step_"):
        assert hasattr(torch.ops.fastadv, name), name


def test_opcheck_every_op():
    x, grad, x_nat = make((3, 2, 5, 5), torch.float32, "cpu")
    e, a = torch.full((3,), 0.03), torch.full((3,), 0.01)
    leave = torch.tensor([True, False, False])
    dest = torch.tensor([-1, 0, 1])
    logits, y, budget, kappa = _logits_case(6, 4, torch.float32, "cpu")
    cases = [
        (torch.ops.fastadv.linf_step_.default, (x.clone(), grad, x_nat, e, a, None, 0.0, 1.0)),
        (torch.ops.fastadv.l2_step_.default, (x.clone(), grad, x_nat, e, a, None, 0.0, 1.0)),
        (torch.ops.fastadv.start_from_noise.default, (x_nat, torch.rand_like(x_nat), e, True, 0.0, 1.0)),
        (torch.ops.fastadv.early_stop_update_.default, (logits, y, budget, kappa)),
        (torch.ops.fastadv.compaction_plan.default, (leave,)),
        (torch.ops.fastadv.compact_rows.default, (x, dest, 2, torch.arange(3), torch.zeros_like(x))),
        (torch.ops.fastadv.linf_step_compact.default,
         (x, grad, x_nat, e, a, dest, 2, torch.arange(3), torch.zeros_like(x), None, 0.0, 1.0)),
        (torch.ops.fastadv.linf_fosc_step_.default, (x.clone(), grad, x_nat, x_nat, e, a, 0.1)),
    ]
    x_cl = x_nat.contiguous(memory_format=torch.channels_last)  # x contiguous, x_nat channels_last
    cases.append((torch.ops.fastadv.linf_step_compact.default,
                  (x, grad, x_cl, e, a, dest, 2, torch.arange(3), torch.zeros_like(x), None, 0.0, 1.0)))
    for channels_last in (False, True):  # the fakes' outputs have the real ops' strides
        for op, args in cases:
            if channels_last:
                args = tuple(t.contiguous(memory_format=torch.channels_last)
                             if isinstance(t, torch.Tensor) and t.dim() == 4 else t for t in args)
            # No autograd formula by design (the steps run under no_grad), so skip that check.
            torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph_on_cpu():
    """A PGD step written with torch.ops.fastadv compiles as one graph and matches eager."""
    def pgd_update(x, grad, x_nat, eps, alpha, logits, y, budget, kappa, index, out):
        torch.ops.fastadv.linf_step_(x, grad, x_nat, eps, alpha, None, 0.0, 1.0)
        leave = torch.ops.fastadv.early_stop_update_(logits, y, budget, kappa)
        dest, count = torch.ops.fastadv.compaction_plan(leave)
        packed = torch.ops.fastadv.compact_rows(x, dest, 3, index, out)  # one of the 4 rows leaves
        packed = packed.reshape(3, -1)  # needs the fake's strides to be the real ones
        start = torch.ops.fastadv.start_from_noise(x_nat, torch.zeros_like(x_nat), eps, True, 0.0, 1.0)
        return x * 1.0, packed, count, start

    x, grad, x_nat = make((4, 3, 6, 6), torch.float32, "cpu")
    e, a = torch.full((4,), 0.03), torch.full((4,), 0.01)
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 0, 1])
    state = (torch.zeros(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64))
    args = lambda: (x.clone(), grad, x_nat, e, a, logits, y, state[0].clone(), state[1].clone(),
                    torch.arange(4), torch.zeros_like(x))
    for channels_last in (False, True):
        to_layout = (lambda t: t.contiguous(memory_format=torch.channels_last)) if channels_last else (lambda t: t)
        make_args = lambda: tuple(to_layout(t) if t.dim() == 4 else t for t in args())
        eager = pgd_update(*make_args())
        for backend in ("eager", "aot_eager", "inductor"):
            torch._dynamo.reset()
            compiled = torch.compile(pgd_update, fullgraph=True, backend=backend)(*make_args())
            for a_, b_ in zip(eager, compiled):
                assert torch.equal(a_, b_), (backend, channels_last)


def test_fast_backends_are_tested_on_ci():
    """On CI the parity tests above must not be empty: native is built and Triton is interpreted."""
    import os
    if not os.environ.get("CI"):
        pytest.skip("only CI guarantees a native build (set CI=1 to check a local build)")
    assert ("cpu", "native") in FAST and ("cpu", "triton") in FAST, FAST


def test_public_functions_compile_through_the_registered_ops(monkeypatch):
    """In eager the public functions run the op bodies directly; under torch.compile they must go
    through torch.ops.fastadv (one opaque node each) and give the same result."""
    from fastadv.ops import library

    calls = []
    body = library.EAGER["linf_step_"]
    monkeypatch.setitem(library.EAGER, "linf_step_", lambda *a: calls.append("eager") or body(*a))

    def attack_step(x, grad, x_nat):
        ops.linf_step_(x, grad, x_nat, 0.03, 0.01)
        return x * 1.0

    x, grad, x_nat = make((4, 3, 6, 6), torch.float32, "cpu")
    eager = attack_step(x.clone(), grad, x_nat)
    assert calls == ["eager"]
    torch._dynamo.reset()
    compiled = torch.compile(attack_step, fullgraph=True, backend="eager")(x.clone(), grad, x_nat)
    assert calls == ["eager"]  # the compiled graph called torch.ops.fastadv.linf_step_
    assert torch.equal(eager, compiled)
