"""Attack losses and GAIRAT's instance weights (SPEC §2, §2.3), against hand-computed values."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastadv.losses import ce_loss, cw_loss, gair_weights, kl_loss


# ---------------------------------------------------------------------------- attack losses
def test_ce_loss_is_summed_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    y = torch.tensor([0, 1])
    expected = sum(-math.log(math.exp(r[t]) / sum(math.exp(v) for v in r))
                   for r, t in zip(logits.tolist(), y.tolist()))
    assert ce_loss(logits, y).item() == pytest.approx(expected, rel=1e-6)


def test_cw_loss_is_the_fat_margin_loss_summed():
    # Official FAT cwloss: −clamp(z_y − max_{j≠y} z_j + confidence, min=0), summed.
    logits = torch.tensor([[5.0, 1.0, 2.0],      # margin 5 − 2 = 3   → −(3 + 50)
                           [0.0, 70.0, 1.0],     # margin 0 − 70      → −clamp(−20, 0) = 0
                           [1.0, 4.0, 4.0]])     # margin 4 − 4 = 0   → −50
    y = torch.tensor([0, 0, 1])
    assert cw_loss(logits, y).item() == pytest.approx(-(53.0 + 0.0 + 50.0))
    assert cw_loss(logits, y, confidence=0.0).item() == pytest.approx(-3.0)
    assert cw_loss(logits[:1], y[:1], confidence=10.0).item() == pytest.approx(-13.0)


def test_cw_loss_gradient_moves_the_margin():
    logits = torch.tensor([[5.0, 1.0, 2.0]], requires_grad=True)
    cw_loss(logits, torch.tensor([0])).backward()
    assert logits.grad.tolist() == [[-1.0, 0.0, 1.0]]


def test_kl_loss_is_trades_kl_summed():
    a = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.1, 2.0]])
    c = torch.tensor([[0.0, 1.0, 0.5], [2.0, 0.0, 0.0]])
    p, q = F.softmax(c, 1), F.softmax(a, 1)
    expected = (p * (p.log() - q.log())).sum().item()  # KL(f(x) ‖ f(x')), summed over the batch
    assert kl_loss(a, c).item() == pytest.approx(expected, rel=1e-5)
    assert kl_loss(c, c).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------- GAIR weights
KAPPA = torch.tensor([0, 2, 5, 7, 10])


def _normalised(ws):
    s = sum(ws)
    return [w * len(ws) / s for w in ws]


@pytest.mark.parametrize("lam", [-1.0, 0.0, 0.5])
def test_gair_tanh(lam):
    h = 5  # K = 10
    raw = [(1 + math.tanh(lam + 5 * (h - k) / h)) / 2 for k in KAPPA.tolist()]
    w = gair_weights(KAPPA, 10, lam, func="tanh")
    # abs: 1 + tanh(z) for z ≈ −6 loses digits to cancellation in float32 (weights ~1e-6).
    assert w.tolist() == pytest.approx(_normalised(raw), rel=1e-5, abs=1e-7)


def test_gair_tanh_odd_steps_uses_floor_half():
    h = 4  # K = 9: h = ⌊9/2⌋ = 4
    kappa = torch.tensor([0, 1, 4, 6, 9])
    raw = [(1 + math.tanh(-1 + 5 * (h - k) / h)) / 2 for k in kappa.tolist()]
    assert gair_weights(kappa, 9, -1.0).tolist() == pytest.approx(_normalised(raw), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("lam", [-1.0, 0.0])
def test_gair_sigmoid(lam):
    h = 5
    raw = [1 / (1 + math.exp(-(lam + 5 * (h - k) / h))) for k in KAPPA.tolist()]
    w = gair_weights(KAPPA, 10, lam, func="sigmoid")
    assert w.tolist() == pytest.approx(_normalised(raw), rel=1e-5)


def test_gair_discrete():
    raw = [(10 + 1 - k) / (10 + 1) for k in KAPPA.tolist()]  # 11/11, 9/11, 6/11, 4/11, 1/11
    w = gair_weights(KAPPA, 10, 0.0, func="discrete")
    assert w.tolist() == pytest.approx(_normalised(raw), rel=1e-6)
    # Σ raw = 31/11: normalised w = raw · 5 / (31/11) = (11 − κ) · 5 / 31.
    assert w.tolist() == pytest.approx([55 / 31, 45 / 31, 30 / 31, 20 / 31, 5 / 31], rel=1e-6)


@pytest.mark.parametrize("func", ["tanh", "sigmoid", "discrete"])
def test_gair_normalised_to_batch_size(func):
    kappa = torch.randint(0, 11, (37,), generator=torch.Generator().manual_seed(0))
    w = gair_weights(kappa, 10, -1.0, func=func)
    assert w.shape == (37,)
    assert w.sum().item() == pytest.approx(37.0, rel=1e-5)
    assert bool((w > 0).all())
    # Fewer correct checks (closer to the boundary) → at least as large a weight.
    order = torch.argsort(kappa)
    assert bool((w[order][1:] <= w[order][:-1] + 1e-6).all())


@pytest.mark.parametrize("func", ["tanh", "sigmoid", "discrete"])
def test_gair_lambda_inf_gives_ones(func):
    w = gair_weights(KAPPA, 10, math.inf, func=func)
    assert w.tolist() == [1.0] * 5


def test_gair_weights_carry_no_gradient():
    kappa = torch.tensor([1.0, 3.0, 8.0], requires_grad=True)  # even a float κ with a graph
    w = gair_weights(kappa, 10, -1.0)
    assert not w.requires_grad and w.grad_fn is None
    w2 = gair_weights(torch.tensor([1, 3, 8]), 10, -1.0)
    assert not w2.requires_grad
    torch.testing.assert_close(w, w2)


def test_gair_weighted_loss_is_mean_of_w_ce():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    w = gair_weights(torch.tensor([9, 1, 5]), 10, -1.0)
    per = F.cross_entropy(logits, y, reduction="none")
    assert (w * per).mean().item() == pytest.approx(
        sum(a * b for a, b in zip(w.tolist(), per.tolist())) / 3, rel=1e-6)
    assert w[1] > w[2] > w[0]  # κ = 1 weighs most, κ = 9 least


def test_gair_bad_input():
    with pytest.raises(ValueError, match="func"):
        gair_weights(KAPPA, 10, -1.0, func="linear")
    with pytest.raises(ValueError, match="steps"):
        gair_weights(KAPPA, 0, -1.0)
