"""The same, safe behaviour on every backend (issue #11, §3), checked on each CPU backend here
(reference, native C++, Triton under the interpreter) and on CUDA where there is one:

- an invalid compaction plan never writes out of bounds and always raises;
- inputs that partially overlap the tensor an op writes give the reference's result;
- float64 works in every op and in the attacks (computed in float64);
- the L2 step has one definition of the norm (a float64 sum): no float32 overflow;
- raw ``torch.ops.fastadv.*`` calls are validated the same way whatever the backend.
"""
import pytest
import torch

import fastadv.ops as ops
from fastadv.attacks import PGD, EarlyStopPGD

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BACKENDS = [(d, b) for d in DEVICES for b in ops.available_backends(d)]


@pytest.fixture
def backend(request, monkeypatch):
    device, name = request.param
    monkeypatch.setenv("FASTADV_BACKEND", name)
    return device, name


def _guarded(rows: int, width: int, device):
    """A [rows, width] view in the middle of a buffer whose guard rows must stay untouched."""
    storage = torch.full((rows + 4, width), -7.0, device=device)
    return storage, storage[2:rows + 2]


def _guards_intact(storage, rows):
    return bool((storage[:2] == -7).all()) and bool((storage[rows + 2:] == -7).all())


# ----------------------------------------------------------------------------- out-of-bounds plans
BAD_PLANS = [  # (dest, index): a dest past the packed rows; a leaver's index past leavers; dest < -1
    ([0, 5, -1, -1], [0, 1, 2, 3]),
    ([0, 1, -1, -1], [0, 1, 2, 9]),
    ([0, 1, -3, -1], [0, 1, 2, 3]),
]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True, ids=lambda v: "-".join(v))
@pytest.mark.parametrize("dest,index", BAD_PLANS)
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("check", [True, False])
def test_an_invalid_plan_raises_and_never_writes_out_of_bounds(backend, dest, index, fused, check):
    device, _ = backend
    src = torch.arange(8.0, device=device).reshape(4, 2) / 10
    dest, index = torch.tensor(dest, device=device), torch.tensor(index, device=device)
    storage, leavers = _guarded(4, 2, device)
    with pytest.raises(IndexError, match="dest|index|out of range"):
        if fused:
            ops.linf_step_compact(src, src, src, 0.1, 0.01, dest, 2, index, leavers, check=check)
        else:
            ops.compact_rows(src, dest, 2, index, leavers, check=check)
        if device != "cpu":  # on CUDA the flag is read with the next host read
            ops.compaction_plan(torch.zeros(3, dtype=torch.bool, device=device))
    assert _guards_intact(storage, 4)
    # The flag is cleared once reported: the next valid plan goes through.
    dest, n = ops.compaction_plan(torch.tensor([False, True, False, True], device=device))
    packed = ops.compact_rows(src, dest, n, torch.arange(4, device=device), leavers, check=False)
    assert torch.equal(packed, src[[0, 2]])


@pytest.mark.parametrize("backend", BACKENDS, indirect=True, ids=lambda v: "-".join(v))
def test_an_invalid_plan_for_rows_of_no_elements_raises_too(backend):
    device, _ = backend
    src = torch.empty(3, 0, device=device)
    with pytest.raises(IndexError, match="out of range"):
        ops.compact_rows(src, torch.tensor([0, 7, -1], device=device), 1)
        if device != "cpu":
            ops.compaction_plan(torch.zeros(3, dtype=torch.bool, device=device))


# ----------------------------------------------------------------------------- aliasing
@pytest.mark.parametrize("backend", BACKENDS, indirect=True, ids=lambda v: "-".join(v))
@pytest.mark.parametrize("op", ["linf", "l2"])
def test_inputs_overlapping_the_output_give_the_reference_result(backend, op, monkeypatch):
    device, _ = backend
    g = torch.Generator().manual_seed(0)
    buf = torch.rand(9, 3, 4, generator=g).to(device)
    grad_buf = torch.randn(9, 3, 4, generator=g).to(device)
    step = ops.linf_step_ if op == "linf" else ops.l2_step_
    cases = {  # x = buf[1:] written in place while reading ...
        "x_nat = buf[:-1]": lambda b, gb: (b[1:], gb[1:], b[:-1]),
        "grad = buf[:-1]": lambda b, gb: (b[1:], b[:-1], gb[:-1].abs()),
        "x_nat is x": lambda b, gb: (b[1:], gb[1:], b[1:]),  # the same view: no copy needed
    }
    for name, make in cases.items():
        b, gb = buf.clone(), grad_buf.clone()
        x, grad, x_nat = make(b, gb)
        want = x.clone()
        with monkeypatch.context() as m:
            m.setenv("FASTADV_BACKEND", "reference")
            step(want, grad.clone(), x_nat.clone(), 0.05, 0.02)
        step(x, grad, x_nat, 0.05, 0.02)
        torch.testing.assert_close(x, want, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True, ids=lambda v: "-".join(v))
def test_compaction_source_overlapping_leavers_is_read_before_written(backend):
    device, _ = backend
    buf = torch.arange(10.0, device=device).reshape(5, 2)
    src, leavers = buf[1:], buf[:4]  # leavers[index] would overwrite rows of src still to be read
    want_src = src.clone()
    dest = torch.tensor([-1, 0, -1, 1], device=device)
    packed = ops.compact_rows(src, dest, 2, torch.tensor([1, 0, 2, 3], device=device), leavers)
    assert torch.equal(packed, want_src[[1, 3]])
    assert torch.equal(buf[1], want_src[0]) and torch.equal(buf[2], want_src[2])


@pytest.mark.parametrize("backend", BACKENDS, indirect=True, ids=lambda v: "-".join(v))
def test_compaction_into_its_own_source_reads_every_row_first(backend):
    # leavers is src itself (the same view): the scatter writes rows it has yet to read.
    device, _ = backend
    b = torch.arange(6.0, device=device).reshape(3, 2)
    ops.compact_rows(b, torch.full((3,), -1, device=device), 0, torch.tensor([1, 2, 0], device=device), b)
    assert b.tolist() == [[4.0, 5.0], [0.0, 1.0], [2.0, 3.0]]
    x = torch.arange(6.0, device=device).reshape(3, 2) / 10
    want = x.clone()
    ops.linf_step_compact(x, x.clone(), x.clone(), 0.0, 0.0, torch.full((3,), -1, device=device), 0,
                          torch.tensor([2, 0, 1], device=device), x)
    assert torch.equal(x, want[[1, 2, 0]])


# ----------------------------------------------------------------------------- float64
@pytest.mark.parametrize("backend", BACKENDS, indirect=True, ids=lambda v: "-".join(v))
def test_float64_is_computed_in_float64(backend):
    device, _ = backend
    # 1e-10 steps vanish in float32 around 0.5 (its ulp there is 6e-8) but not in float64.
    x_nat = torch.full((2, 5), 0.5, dtype=torch.float64, device=device)
    grad = torch.tensor([[1.0, -1.0, 0.0, 1.0, -1.0]] * 2, dtype=torch.float64, device=device)
    x = ops.linf_step_(x_nat.clone(), grad, x_nat, eps=3e-10, alpha=1e-10, clip_min=0.1, clip_max=0.9)
    assert x.dtype == torch.float64
    assert (x - x_nat).tolist()[0] == pytest.approx([1e-10, -1e-10, 0.0, 1e-10, -1e-10], abs=1e-15)
    y = ops.l2_step_(x_nat.clone(), grad, x_nat, eps=1.0, alpha=2e-10)
    assert (y - x_nat).norm(dim=1).tolist() == pytest.approx([2e-10, 2e-10], rel=1e-9)
    start = ops.random_start(x_nat, 1e-9)
    assert start.dtype == torch.float64 and 0 < (start - x_nat).abs().max() <= 1e-9
    # Clip bounds are not rounded to float32 either.
    z = ops.linf_step_(x_nat.clone(), grad, x_nat, 0.5, 0.5, clip_min=0.1, clip_max=0.7)
    assert z.max().item() == 0.7 and z.min().item() == 0.1


@pytest.mark.parametrize("device", DEVICES)
def test_a_float64_model_can_be_attacked(device):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).double().to(device)
    x = torch.rand(6, 3, 2, 2, dtype=torch.float64, device=device)
    y = torch.randint(0, 3, (6,), device=device)
    for atk in (PGD(model, eps=0.1, alpha=0.02, steps=5), EarlyStopPGD(model, eps=0.1, alpha=0.02, steps=5, tau=1),
                PGD(model, eps=0.5, alpha=0.2, steps=3, norm="l2")):
        res = atk.run(x, y)
        assert res.x_adv.dtype == torch.float64
        delta = (res.x_adv - x).flatten(1)
        bound = delta.abs().amax(1) if atk.norm == "linf" else delta.norm(dim=1)
        assert bool((bound <= atk.eps + 1e-12).all()) and bool((delta != 0).any())


# ----------------------------------------------------------------------------- the L2 norm
@pytest.mark.parametrize("backend", BACKENDS, indirect=True, ids=lambda v: "-".join(v))
def test_l2_norm_does_not_overflow_in_float32(backend):
    device, _ = backend
    # ||g||^2 = 2.5e41 overflows a float32 sum of squares (max 3.4e38): g/||g|| must still be (0.6, 0.8).
    grad = torch.tensor([[3e20, 4e20, 0.0]], device=device)
    x_nat = torch.zeros(1, 3, device=device)
    x = ops.l2_step_(x_nat.clone(), grad, x_nat, eps=10.0, alpha=1.0, clip_min=-5.0, clip_max=5.0)
    torch.testing.assert_close(x, torch.tensor([[0.6, 0.8, 0.0]], device=device), rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- one validation
def _raw_calls(device):
    x = torch.rand(4, 3, device=device)
    e = torch.full((4,), 0.1, device=device)
    z = torch.zeros(4, dtype=torch.int64, device=device)
    logits = torch.rand(4, 5, device=device)
    return {
        "eps of shape [1]": (ValueError, "eps", lambda: torch.ops.fastadv.linf_step_(
            x.clone(), x, x, e[:1], e, None, 0.0, 1.0)),
        "nan clip_max": (ValueError, "clip_max", lambda: torch.ops.fastadv.l2_step_(
            x.clone(), x, x, e, e, None, 0.0, float("nan"))),
        "clip_min > clip_max": (ValueError, "clip_min", lambda: torch.ops.fastadv.linf_step_(
            x.clone(), x, x, e, e, None, 1.0, 0.0)),
        "negative eps": (ValueError, "eps", lambda: torch.ops.fastadv.linf_step_(
            x.clone(), x, x, -e, e, None, 0.0, 1.0)),
        "int32 budget": (TypeError, "budget", lambda: torch.ops.fastadv.early_stop_update_(
            logits, z, z.int(), z.clone())),
        "int x": (TypeError, "x must be", lambda: torch.ops.fastadv.linf_step_(
            z.view(4, 1), z.view(4, 1), z.view(4, 1), e, e, None, 0.0, 1.0)),
        "dest out of range": (IndexError, "dest", lambda: torch.ops.fastadv.compact_rows(
            x, torch.tensor([0, 1, 2, 3], device=device), 2, None, None)),
        "index without leavers": (ValueError, "index is given without leavers", lambda: torch.ops.fastadv.compact_rows(
            x, torch.tensor([0, 1, -1, -1], device=device), 2, torch.arange(4, device=device), None)),
    }


@pytest.mark.parametrize("device", DEVICES)
def test_raw_op_calls_are_validated_alike_on_every_backend(device, monkeypatch):
    seen = {}
    for name in ops.available_backends(device):
        monkeypatch.setenv("FASTADV_BACKEND", name)
        for case, (exc, word, call) in _raw_calls(device).items():
            with pytest.raises(exc, match=word) as info:
                call()
            seen.setdefault(case, set()).add(str(info.value))
    assert all(len(messages) == 1 for messages in seen.values()), seen  # the very same message


@pytest.mark.parametrize("backend", BACKENDS, indirect=True, ids=lambda v: "-".join(v))
def test_a_float64_eps_is_accepted_for_float32_tensors(backend):
    device, _ = backend
    x = torch.zeros(2, 3, device=device)
    e = torch.full((2,), 0.25, dtype=torch.float64, device=device)
    torch.ops.fastadv.linf_step_(x, torch.ones_like(x), torch.zeros_like(x), e, e, None, 0.0, 1.0)
    assert torch.equal(x, torch.full_like(x, 0.25))
