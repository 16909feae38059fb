"""DAT (issue #13 item 3): FOSCPGD against a plain loop of the reference formulas, its limits
(PGD-K and one step), the threshold schedule, the official loss weights, and `dat` end to end."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastadv
from fastadv import attacks, ops
from fastadv.training.methods import METHODS, FOSCAttack
from fastadv.training.objectives import DatCE, EpochPlan


def _model(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.Tanh(), nn.Linear(16, 10)).to(dtype)


def _data(n=13, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 4, 4, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


def dat_by_hand(model, x_nat, y, eps, alpha, steps, threshold, start, targets=None):
    """The official algorithm on the full batch (no compaction): from x⁰ = start, the first step
    always moves; at k >= 1 a row with c = ε‖g‖₁ − ⟨xᵏ − x⁰, g⟩ <= threshold stops for good.
    ``targets``: the targeted loss −CE(model(x), targets)."""
    x, x0 = start.clone(), start.clone()
    active = torch.ones(len(y), dtype=torch.bool)
    updates = torch.zeros(len(y), dtype=torch.int64)
    for k in range(steps):
        xr = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(xr), y if targets is None else targets, reduction="sum")
        (g,) = torch.autograd.grad(loss if targets is None else -loss, xr)
        c = eps * g.abs().flatten(1).sum(1) - ((x - x0) * g).flatten(1).sum(1)
        if k > 0:
            active &= c > threshold
        stepped = torch.min(torch.max(x + alpha * g.sign(), x_nat - eps), x_nat + eps).clamp(0, 1)
        x = torch.where(active.view(-1, 1, 1, 1), stepped, x)
        updates += active
    return x, updates


@pytest.mark.parametrize("threshold", [0.0, 0.02, 0.05])
def test_foscpgd_equals_the_official_loop(threshold):
    model = _model()
    x, y = _data()
    eps, alpha, K = 0.1, 0.025, 6
    atk = attacks.FOSCPGD(model, eps=eps, alpha=alpha, steps=K, threshold=threshold)
    torch.manual_seed(3)
    res = atk.run(x, y)
    torch.manual_seed(3)
    start = ops.random_start(x, eps, "uniform")  # the same draw as the attack's start
    want, updates = dat_by_hand(model, x, y, eps, alpha, K, threshold, start)
    assert res.updates.tolist() == updates.tolist()
    assert 0 < int((updates < K).sum()) < len(y) or threshold == 0.0, updates  # a mixed batch
    torch.testing.assert_close(res.x_adv, want, rtol=0, atol=1e-12)
    assert res.bp == int(updates.sum())
    assert res.checks.tolist() == torch.clamp(updates + 1, max=K).tolist()
    assert res.rows_computed == res.bp_executed  # compacted: stopped rows are never computed


@pytest.mark.parametrize("threshold", [0.03, 0.05])
def test_targeted_foscpgd_equals_the_official_loop_on_the_targeted_loss(threshold):
    """The targets travel with the compacted rows: each row keeps pulling towards its own."""
    model = _model()
    x, y = _data()
    targets = (y + 1 + torch.arange(len(y)) % 9) % 10
    eps, alpha, K = 0.1, 0.025, 6
    torch.manual_seed(3)
    res = attacks.FOSCPGD(model, eps=eps, alpha=alpha, steps=K, threshold=threshold).run(
        x, y, targets=targets)
    torch.manual_seed(3)
    start = ops.random_start(x, eps, "uniform")
    want, updates = dat_by_hand(model, x, y, eps, alpha, K, threshold, start, targets)
    assert res.updates.tolist() == updates.tolist()
    assert int((updates < K).sum()) < len(y), updates
    assert int((updates < K - 1).sum()) > 0, updates  # stopped before the last check: the
    # remaining rows' targets were compacted and used again
    torch.testing.assert_close(res.x_adv, want, rtol=0, atol=1e-12)
    untargeted = attacks.FOSCPGD(model, eps=eps, alpha=alpha, steps=K, threshold=threshold)
    torch.manual_seed(3)
    assert not torch.equal(untargeted.run(x, y).x_adv, res.x_adv)  # the targets changed the loss


def test_limits_pgd_and_one_step():
    model = _model()
    x, y = _data()
    never = attacks.FOSCPGD(model, eps=0.1, alpha=0.025, steps=5, threshold=-1e9)
    torch.manual_seed(4)
    a = never.run(x, y)
    torch.manual_seed(4)
    b = attacks.PGD(model, eps=0.1, alpha=0.025, steps=5).run(x, y)
    assert torch.equal(a.x_adv, b.x_adv) and a.updates.tolist() == [5] * len(y)
    at_once = attacks.FOSCPGD(model, eps=0.1, alpha=0.025, steps=5, threshold=1e9).run(x, y)
    assert at_once.updates.tolist() == [1] * len(y) and at_once.bp_executed == 2 * len(y)


def test_the_threshold_falls_to_zero_at_five_sixths_of_the_run():
    rec = FOSCAttack()
    assert [rec.threshold_at(e, 120) for e in (0, 50, 99, 100, 119)] == pytest.approx(
        [0.5, 0.25, 0.005, 0.0, 0.0])
    assert rec.threshold_at(6, 12) == pytest.approx(0.5 * (1 - 6 / 10))


def test_official_loss_weights():
    model = _model(torch.float32)
    x, y = _data(dtype=torch.float32)

    class Res:
        x_adv = x
    plan = EpochPlan(settings={"loss_weights": True}, values={"loss_weights": True})
    loss, logits = DatCE()(model, x, y, Res, plan)
    p = F.softmax(model(x), dim=1)
    w = -torch.log(p.gather(1, y[:, None]).squeeze(1) + 1e-12)
    assert loss.item() == pytest.approx((w * F.cross_entropy(logits, y, reduction="none")).mean().item(),
                                        rel=1e-6)
    off = EpochPlan(settings={"loss_weights": True}, values={"loss_weights": False})
    assert DatCE()(model, x, y, Res, off)[0].item() == pytest.approx(F.cross_entropy(logits, y).item())
    # The weights start in the second epoch, as the official `if ep == 0` says.
    assert DatCE().epoch_values({"loss_weights": True}, 0, 10) == {"loss_weights": False}
    assert DatCE().epoch_values({"loss_weights": True}, 1, 10) == {"loss_weights": True}


@pytest.mark.parametrize("weights", [False, True])
def test_dat_trains_end_to_end(weights):
    r = fastadv.train("dat", dataset="digits", epochs=3, train_samples=200, eval_samples=32,
                      steps=4, out_dir=False, verbose=False, progress=False, loss_weights=weights)
    rows = r.history
    assert [row["fosc_threshold"] for row in rows] == pytest.approx(
        [FOSCAttack().threshold_at(e, 3) for e in range(3)])
    assert all(1.0 <= row["bp_avg"] <= 4.0 for row in rows)  # the first step always moves
    assert r.config.loss_weights is weights and "tau" not in METHODS["dat"].options
