"""AutoAttack and its attacks (issue #12): losses by formula, APGD's schedule and halving rule on
scripted losses, FAB's projections against linear programs, target orders, compaction equal to the
full-batch run point for point, seeds, the log, the sanity checks and the torchattacks habits."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import fastadv
from fastadv.attacks import APGD, APGDT, FAB, AutoAttack, Square
from fastadv.attacks.apgd import apgd_schedule, halve_step, oscillates
from fastadv.attacks.fab import project_l2, project_linf
from fastadv.attacks.square import p_schedule
from fastadv.losses import dlr_loss, dlr_targeted_loss


def small_model(in_ch=1, side=12, classes=10, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(in_ch, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * (side - 2) ** 2, 32), nn.ReLU(), nn.Linear(32, classes)).eval()


@pytest.fixture(scope="module")
def batch():
    model = small_model()
    torch.manual_seed(1)
    x = torch.rand(48, 1, 12, 12)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10  # four points misclassified from the start
    return model, x, y


# ---------------------------------------------------------------------------- losses
def test_dlr_by_formula():
    z = torch.tensor([[3.0, 1.0, 0.5, -2.0], [0.0, 4.0, 2.0, 1.0]])
    y = torch.tensor([0, 2])
    # row 0: y on top: −(3 − 1)/(3 − 0.5); row 1: y third: −(2 − 4)/(4 − 1)
    assert torch.allclose(dlr_loss(z, y), torch.tensor([-2 / 2.5, 2 / 3]))
    t = torch.tensor([1, 3])
    # −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2)
    want = torch.tensor([-(3 - 1) / (3 - (0.5 - 2) / 2), -(2 - 1) / (4 - (1 + 0) / 2)])
    assert torch.allclose(dlr_targeted_loss(z, y, t), want)
    # invariant to shifting and (positive) scaling of the logits
    assert torch.allclose(dlr_loss(7 * z + 3, y), dlr_loss(z, y), atol=1e-6)
    assert torch.allclose(dlr_targeted_loss(7 * z - 1, y, t), dlr_targeted_loss(z, y, t), atol=1e-6)


# ---------------------------------------------------------------------------- APGD's schedule
def test_apgd_checkpoints():
    assert apgd_schedule(100) == {21: 22, 40: 19, 56: 16, 69: 13, 79: 10, 86: 7, 92: 6, 98: 6}
    assert apgd_schedule(1) == {0: 1}
    assert list(apgd_schedule(10).items())[:3] == [(1, 2), (2, 1), (3, 1)]


def test_halving_rule_on_scripted_losses():
    k = 10
    rising = torch.arange(1.0, k + 1)            # rose at every step
    flat = torch.full((k,), 2.0)                  # never rose
    mixed = torch.tensor([1.0, 2, 1, 2, 1, 2, 1, 2, 3, 4])  # rose at 6 of the 5 + … comparisons
    hist = torch.stack([rising, flat, mixed])
    osc = oscillates(hist, i=4, period=5, rho=0.75)
    # rising: 4 rises among columns 0..4 plus column 0 against column 9 (wrap, 10 > 1: no rise)
    # → 4 ≤ 3.75? no; flat: 0 rises → yes; mixed (1,2,1,2,1 vs prev 4,1,2,1,2): rises at 1, 3 → yes
    assert osc.tolist() == [False, True, True]
    # At the first checkpoint the column before 0 is the last one, still 0: a positive first loss
    # counts as a rise, as in the official code.
    first = torch.zeros(1, 10)
    first[0, :3] = torch.tensor([1.0, 1.0, 1.0])
    assert oscillates(first, i=2, period=3, rho=0.34).tolist() == [True]   # 1 rise ≤ 1.02
    assert oscillates(first, i=2, period=3, rho=0.3).tolist() == [False]   # 1 rise > 0.9
    # Condition 2: not halved at the last checkpoint and no better loss since.
    best = torch.tensor([1.0, 1.0, 2.0])
    last = torch.tensor([1.0, 1.0, 1.0])
    halved_last = torch.tensor([False, True, False])
    got = halve_step(torch.arange(1.0, 11).repeat(3, 1), 9, 5, 0.75, best, last, halved_last)
    assert got.tolist() == [True, False, False]


# ---------------------------------------------------------------------------- FAB's projections
def _lp_linf(t, w, b):
    """min ‖d‖∞ s.t. w·(t + d) = b, 0 ≤ t + d ≤ 1, by scipy's linprog (None if infeasible)."""
    from scipy.optimize import linprog
    n = t.size
    c = np.zeros(n + 1)
    c[-1] = 1
    a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
    bounds = [(-ti, 1 - ti) for ti in t] + [(0, None)]
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(2 * n), A_eq=np.append(w, 0)[None], b_eq=[b - w @ t],
                  bounds=bounds, method="highs")
    return res.x[-1] if res.status == 0 else None


def test_projection_linf_is_the_least_linf_step():
    rng = np.random.default_rng(0)
    hits = corners = 0
    for trial in range(60):
        d = int(rng.integers(2, 9))
        t = rng.random(d)
        w = rng.normal(size=d)
        w[rng.random(d) < 0.2] = 0.0  # some coordinates do not matter
        b = float(w @ rng.random(d) * rng.uniform(0, 2))
        step = project_linf(torch.tensor(t)[None], torch.tensor(w)[None], torch.tensor([b], dtype=torch.float64))[0].numpy()
        assert np.all(t + step >= -1e-12) and np.all(t + step <= 1 + 1e-12)
        assert np.all(step[w == 0] == 0)
        best = _lp_linf(t, w, b)
        if best is None:  # the box does not reach the hyperplane: its closest corner
            corners += 1
            sw = w * (1.0 if w @ t - b >= 0 else -1.0)
            assert np.allclose(t + step, np.where(sw > 0, 0.0, np.where(sw < 0, 1.0, t)))
        else:
            hits += 1
            assert abs(w @ (t + step) - b) < 1e-9
            assert np.abs(step).max() == pytest.approx(best, abs=1e-8)
    assert hits > 20 and corners > 0


def test_projection_l2_is_the_least_l2_step():
    from scipy.optimize import minimize
    rng = np.random.default_rng(1)
    checked = 0
    for trial in range(40):
        d = int(rng.integers(2, 7))
        t = rng.random(d)
        w = rng.normal(size=d)
        b = float(w @ rng.random(d))
        step = project_l2(torch.tensor(t)[None], torch.tensor(w)[None], torch.tensor([b], dtype=torch.float64))[0].numpy()
        assert np.all(t + step >= -1e-12) and np.all(t + step <= 1 + 1e-12)
        assert abs(w @ (t + step) - b) < 1e-9  # b is reachable here by construction
        res = minimize(lambda v: v @ v, np.zeros(d), jac=lambda v: 2 * v, method="SLSQP",
                       bounds=[(-ti, 1 - ti) for ti in t],
                       constraints=[{"type": "eq", "fun": lambda v: w @ (t + v) - b, "jac": lambda v: w}],
                       options={"ftol": 1e-14, "maxiter": 500})
        assert res.success
        assert np.linalg.norm(step) == pytest.approx(np.linalg.norm(res.x), rel=1e-5, abs=1e-7)
        checked += 1
    assert checked == 40


# ---------------------------------------------------------------------------- compaction
ATTACKS = [
    ("apgd-ce-linf", lambda m, c: APGD(m, eps=0.02, steps=20, compact=c)),
    ("apgd-dlr-l2", lambda m, c: APGD(m, norm="l2", eps=0.15, steps=20, loss="dlr", restarts=2, compact=c)),
    ("apgd-t", lambda m, c: APGDT(m, eps=0.02, steps=10, n_target_classes=3, compact=c)),
    ("fab", lambda m, c: FAB(m, eps=0.02, steps=10, restarts=2, compact=c)),
    ("fab-t-l2", lambda m, c: FAB(m, norm="l2", eps=0.15, steps=10, targeted=True, n_target_classes=3, compact=c)),
    ("square-linf", lambda m, c: Square(m, eps=0.03, queries=150, compact=c)),
]


@pytest.mark.parametrize("name,make", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_compacted_run_equals_full_batch_run(batch, name, make):
    model, x, y = batch
    a = make(model, True).run(x, y)
    b = make(model, False).run(x, y)
    assert torch.equal(a.robust, b.robust)
    assert 0 < int(a.robust.sum()) < 44  # some broken, some robust: the test can fail
    assert torch.equal(a.x_adv, b.x_adv)  # the same breaking iterate
    assert not a.robust[:4].any()  # misclassified from the start
    assert int(a.forward.sum()) < int(b.forward.sum())  # fewer rows computed
    # every broken point's x_adv is misclassified and inside the ball and the box
    broken = ~a.robust
    with torch.no_grad():
        assert (model(a.x_adv[broken]).argmax(1) != y[broken]).all()
    d = (a.x_adv - x).flatten(1)
    radius = d.abs().amax(1) if "l2" not in name else d.norm(dim=1)
    assert float(radius.max()) <= (0.15 if "l2" in name else 0.03 if "square" in name else 0.02) + 1e-6
    assert float(a.x_adv.min()) >= 0 and float(a.x_adv.max()) <= 1


class RowByRow(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.cat([self.net(row[None]) for row in x])


@pytest.mark.parametrize("name,make", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_rows_per_pass_changes_nothing_but_the_passes(batch, name, make):
    net, x, y = batch
    # Each row alone through the net: bits that cannot depend on the pass's row count (a GEMM's
    # rounding may), so any difference is the splitting's.
    model = RowByRow(net)
    whole = make(model, True).run(x, y)  # 48 rows: one pass on the CPU
    atk = make(model, True)
    atk.rows_per_pass = 5
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    try:
        split = atk.run(x, y)
    finally:
        hook.remove()
    assert max(seen) == 5 and max(seen) - min(n for n in seen if n > 1) <= 1  # equal passes
    for field in ("robust", "x_adv", "forward", "backward"):
        assert torch.equal(getattr(split, field), getattr(whole, field)), field


def test_rows_per_pass_default_and_checks(batch):
    from fastadv.attacks.base import default_rows_per_pass
    # On the CPU, passes of about 50k input values, at least 16 rows; one pass on an accelerator.
    assert [default_rows_per_pass(torch.empty(2, *s)) for s in ((1, 28, 28), (3, 32, 32), (1, 8, 8),
                                                               (3, 224, 224), (20,))] == [64, 16, 784, 16, 2508]
    assert default_rows_per_pass(torch.empty(0, 1, 28, 28)) == 64
    assert default_rows_per_pass(torch.empty(2, 1, 28, 28, device="meta")) is None
    model = small_model(side=28)
    x = torch.rand(130, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    try:
        APGD(model, eps=0.02, steps=1).run(x, y)  # the CPU default for MNIST-sized rows: 64 a pass
        first = seen[:3]
        seen.clear()
        APGD(model, eps=0.02, steps=1, rows_per_pass=200).run(x, y)
    finally:
        hook.remove()
    assert first == [44, 43, 43]  # 130 rows: three equal passes, no small remainder
    assert seen[0] == 130
    aa = AutoAttack(model, eps=0.02, version="lite", rows_per_pass=9)
    assert all(sub.rows_per_pass == 9 for sub in aa.subattacks.values())
    for bad in (0, -3, 2.5, "64", True):
        with pytest.raises((ValueError, TypeError), match="rows_per_pass"):
            Square(model, rows_per_pass=bad)


def test_square_l2_compacts_without_changing_results():
    model = small_model(in_ch=3, side=16)
    torch.manual_seed(3)
    x = torch.rand(24, 3, 16, 16)
    with torch.no_grad():
        y = model(x).argmax(1)
    a = Square(model, norm="l2", eps=0.5, queries=200, compact=True).run(x, y)
    b = Square(model, norm="l2", eps=0.5, queries=200, compact=False).run(x, y)
    assert torch.equal(a.robust, b.robust) and torch.equal(a.x_adv, b.x_adv)
    assert 0 < int(a.robust.sum()) < 24
    assert float((a.x_adv - x).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5


def test_same_seed_same_result_other_seed_other_start(batch):
    model, x, y = batch
    a = APGD(model, eps=0.02, steps=10, seed=5).run(x, y)
    b = APGD(model, eps=0.02, steps=10, seed=5).run(x, y)
    c = APGD(model, eps=0.02, steps=10, seed=6).run(x, y)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.robust, b.robust)
    assert not torch.equal(a.x_adv, c.x_adv)
    state = torch.random.get_rng_state()
    Square(model, eps=0.03, queries=20).run(x, y)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched


# ---------------------------------------------------------------------------- targets
def test_apgd_t_and_fab_t_target_order(batch):
    model, x, y = batch
    x, y = x[4:12], y[4:12]
    with torch.no_grad():
        order = model(x).sort(dim=1)[1]
    seen = []

    def loss(logits, y_, tgt):
        seen.append(tgt.clone())
        from fastadv.losses import dlr_targeted_loss
        return dlr_targeted_loss(logits, y_, tgt)
    APGDT(model, eps=1e-4, steps=1, n_target_classes=4, loss=loss).run(x, y)
    firsts = [t for t in seen if t.numel() == 8][::2]  # each run: the start and one step
    assert [t.tolist() for t in firsts] == [order[:, -r].tolist() for r in range(2, 6)]

    fab = FAB(model, eps=1e-4, steps=1, targeted=True, n_target_classes=4)
    real, got = fab._boundary, []

    def spy(xx, yy, tgt, rows):
        got.append(tgt.clone())
        return real(xx, yy, tgt, rows)
    fab._boundary = spy
    fab.run(x, y)
    assert [t.tolist() for t in got] == [order[:, -r].tolist() for r in range(2, 6)]


def test_targeted_modes_hit_their_targets(batch):
    model, x, y = batch
    x, y = x[4:], y[4:]
    with torch.no_grad():
        target = model(x).sort(dim=1)[1][:, -2]  # the runner-up class
    for atk in (APGD(model, eps=0.05, steps=20), Square(model, eps=0.05, queries=100),
                FAB(model, eps=0.05, steps=20)):
        atk.set_mode_targeted_by_label()
        res = atk.run(x, target)  # the labels given are the targets
        hit = ~res.robust
        assert hit.any(), type(atk).__name__
        with torch.no_grad():
            assert (model(res.x_adv[hit]).argmax(1) == target[hit]).all()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 10)).eval()  # every class reachable
    atk = APGD(model, eps=1.0, steps=50).set_mode_targeted_least_likely()
    with torch.no_grad():
        least = model(x).argmin(1)
    res = atk.run(x, y)
    hit = ~res.robust
    assert hit.any()
    with torch.no_grad():
        assert (model(res.x_adv[hit]).argmax(1) == least[hit]).all()
    res = APGD(model, eps=1.0, steps=50, seed=3).set_mode_targeted_random().run(x, y)
    g = torch.Generator().manual_seed(3)  # the attack's first draw: one class among the 9 others
    r = (torch.rand(x.shape[0], generator=g) * 9).long()
    want = r + (r >= y).long()
    assert (want != y).all()
    hit = ~res.robust
    assert hit.any()
    with torch.no_grad():
        assert (model(res.x_adv[hit]).argmax(1) == want[hit]).all()


def test_normalization_hook_equals_the_wrapper(batch):
    model, x, y = batch
    mean, std = [0.4], [0.3]
    wrapped = fastadv.models.Normalized(model, mean, std)
    inner = APGD(model, eps=0.02, steps=10).set_normalization_used(mean, std).run(x, y)
    outer = APGD(wrapped, eps=0.02, steps=10).run(x, y)
    assert torch.equal(inner.robust, outer.robust)
    assert torch.allclose(inner.x_adv, outer.x_adv, atol=1e-6)


# ---------------------------------------------------------------------------- AutoAttack
class Threshold(nn.Module):
    """Class 1 iff the mean pixel exceeds 0.5: robust iff |mean − 0.5| > ε (closed form)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(50.0))

    def forward(self, x):
        z = self.scale * (x.flatten(1).mean(1) - 0.5)
        return torch.stack([-z, z], 1)


def test_autoattack_finds_the_closed_form_robust_accuracy():
    m = torch.linspace(0.05, 0.95, 30)
    x = m.view(-1, 1, 1, 1).expand(-1, 1, 6, 6).contiguous()
    y = (m > 0.5).long()
    eps = 0.1
    want = ((m - 0.5).abs() > eps)
    aa = AutoAttack(Threshold(), eps=eps, attacks=("apgd-ce", "fab", "square"), version="custom")
    res = aa.run(x, y)
    assert torch.equal(res.robust, want)
    assert res.broken_by[int((~want).nonzero()[0])] == "apgd-ce"
    assert all(b is None for b, r in zip(res.broken_by, res.robust.tolist()) if r)


def test_autoattack_log_costs_and_versions(batch, tmp_path):
    model, x, y = batch
    log = tmp_path / "aa.log"
    aa = AutoAttack(model, eps=0.02, version="lite", log_path=str(log))
    res = aa.run(x, y)
    lines = log.read_text().splitlines()
    assert lines[0] == "using lite version including apgd-ce, apgd-t."
    assert lines[1].startswith("initial accuracy: ")
    assert any(line.startswith("robust accuracy after APGD-CE: ") and "total time" in line for line in lines)
    assert lines[-2].startswith("max Linf perturbation: ") and "nan in tensor: 0" in lines[-2]
    assert lines[-1] == f"robust accuracy: {res.robust_accuracy:.2%}"
    assert res.accuracy["clean"] >= res.accuracy["apgd-ce"] >= res.accuracy["apgd-t"]
    assert set(res.broken_by) <= {"clean", "apgd-ce", "apgd-t", None}
    assert res.broken_by[:4] == ["clean"] * 4
    # costs: a point misclassified from the start cost one forward pass; a robust one the most
    assert res.forward[:4].tolist() == [1] * 4 and int(res.backward[:4].sum()) == 0
    assert int(res.backward[res.robust].min()) > int(res.backward[~res.robust].max())
    assert torch.equal(aa(x, y), res.x_adv)
    with pytest.raises(ValueError, match="version"):
        AutoAttack(model, version="fast")
    with pytest.raises(ValueError, match="attacks"):
        AutoAttack(model, attacks=("apgd-ce", "pgd"), version="custom")


def test_autoattack_sanity_check_warnings(batch):
    model, x, y = batch
    x, y = x[:8], y[:8]
    soft = nn.Sequential(model, nn.Softmax(dim=1))
    noisy = lambda v: model(v) + 0.1 * torch.randn(v.shape[0], 10)  # noqa: E731

    class Dynamic(nn.Module):
        def forward(self, v):
            with torch.enable_grad():
                v2 = v.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(model(v2).sum(), v2)
            return model(v + 0.0 * g)
    for m, text in ((soft, "probabilities"), (noisy, "randomized"), (Dynamic(), "dynamic")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = AutoAttack(m, eps=0.01, attacks=("apgd-ce",), version="custom").run(x, y)
        assert any(text in w for w in res.warnings), (text, res.warnings)
        assert any(text in str(c.message) for c in caught)


def test_inputs_checked(batch):
    model, x, y = batch
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        APGD(model).run(x * 255, y)
    with pytest.raises(ValueError, match="y must have shape"):
        APGD(model).run(x, y[:3])
    with pytest.raises(ValueError, match="norm"):
        APGD(model, norm="l1")
    with pytest.raises(ValueError, match="loss"):
        APGD(model, loss="cw")
    with pytest.raises(ValueError, match="labels outside"):
        APGD(model).run(x, y + 20)
    with pytest.raises(ValueError, match="n_target_classes"):
        APGDT(model, n_target_classes=10).run(x, y)
    empty = APGD(model).run(x[:0], y[:0])
    assert empty.x_adv.shape == (0, 1, 12, 12) and empty.robust.numel() == 0
    one = AutoAttack(model, eps=0.02, version="lite").run(x[5:6], y[5:6])
    assert one.robust.shape == (1,)


def test_dtypes_and_channels_last(batch):
    model, x, y = batch
    ref = APGD(model, eps=0.02, steps=10).run(x, y)
    cl = APGD(model, eps=0.02, steps=10).run(x.to(memory_format=torch.channels_last), y)
    assert torch.equal(ref.robust, cl.robust)
    m64 = small_model().double()
    r64 = APGD(m64, eps=0.02, steps=10).run(x.double(), y)
    assert r64.x_adv.dtype == torch.float64 and torch.equal(r64.robust, ref.robust)
    # A channels_last model (the README's advice for Square on the CPU): the same verdicts up to a
    # point whose logits tie within rounding, and x_adv inside the ball.
    model_cl = small_model().to(memory_format=torch.channels_last)
    assert model_cl[0].weight.is_contiguous(memory_format=torch.channels_last)
    for make in (lambda m: Square(m, eps=0.03, queries=100), lambda m: AutoAttack(m, eps=0.02, version="lite")):
        a, b = make(model).run(x, y), make(model_cl).run(x, y)
        assert int((a.robust != b.robust).sum()) <= 1 and 0 < int(b.robust.sum()) < 44
        assert float((b.x_adv - x).abs().max()) <= 0.03 + 1e-6


def test_square_schedule():
    assert [p_schedule(0.8, i, 5000, False) for i in (0, 10, 11, 50, 51, 8001)] == \
        [0.8, 0.8, 0.4, 0.4, 0.2, 0.8 / 512]
    assert p_schedule(0.8, 2500, 5000, True) == 0.8 / 128  # rescaled: query 5000 of 10000


@pytest.mark.filterwarnings("ignore:apgd-ce.*evaluated again")  # bf16 verdicts re-checked in fp32
def test_bf16_autocast_is_checked_against_fp32_first(batch):
    model, x, y = batch
    res = AutoAttack(model, eps=0.02, attacks=("apgd-ce",), version="custom", autocast="bf16",
                     autocast_check=24).run(x, y)
    line = next(line for line in res.log if line.startswith("autocast bf16: APGD-CE on 24 points"))
    assert "in fp32" in line
    ref = AutoAttack(model, eps=0.02, attacks=("apgd-ce",), version="custom").run(x, y)
    # bf16 is trusted only when it agreed; either way the verdicts are verified ones
    assert abs(int(res.robust.sum()) - int(ref.robust.sum())) <= 2
    with pytest.raises(ValueError, match="autocast"):
        AutoAttack(model, autocast="int8")


def test_low_precision_inputs_stay_in_the_ball(batch):
    model, x, y = batch
    mb = small_model().to(torch.bfloat16)
    xb = x.to(torch.bfloat16)
    for norm, eps in (("linf", 8 / 255), ("l2", 0.3)):
        res = APGD(mb, norm=norm, eps=eps, steps=20).run(xb, y)
        assert res.x_adv.dtype == torch.bfloat16
        d = (res.x_adv.double() - xb.double()).flatten(1)
        radius = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert float(radius.max()) <= eps + 1e-12
        broken = ~res.robust
        assert broken.any()
        with torch.no_grad():
            assert (mb(res.x_adv[broken]).argmax(1) != y[broken]).all()


def test_square_l2_on_sizes_the_official_grid_overruns():
    model = small_model(in_ch=1, side=12)
    torch.manual_seed(4)
    x = torch.rand(6, 1, 12, 12)
    with torch.no_grad():
        y = model(x).argmax(1)
    res = Square(model, norm="l2", eps=0.5, queries=30).run(x, y)
    assert float((res.x_adv - x).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5


def test_square_callable_loss_is_maximised(batch):
    model, x, y = batch
    seen = []

    def margin(logits, labels):  # the negated built-in margin: maximising it = the built-in search
        seen.append(logits.shape[0])
        z = logits.gather(1, labels[:, None]).squeeze(1)
        return -(z - logits.scatter(1, labels[:, None], float("-inf")).amax(1))
    a = Square(model, eps=0.03, queries=60, loss=margin).run(x, y)
    b = Square(model, eps=0.03, queries=60).run(x, y)
    assert seen and torch.equal(a.robust, b.robust) and torch.equal(a.x_adv, b.x_adv)


# ---------------------------------------------------------------------------- the official settings
def test_version_settings_are_the_official_ones(batch):
    model = batch[0]
    def settings(aa):
        s = aa.subattacks
        return (s["apgd-ce"].restarts, s["apgd-dlr"].restarts, s["apgd-ce"].eot_iter, s["fab"].restarts,
                s["fab-t"].restarts, s["apgd-t"].n_target_classes, s["square"].queries)
    # set_version's settings; "custom" (the official attacks_to_run) keeps the constructor's
    assert settings(AutoAttack(model, version="standard")) == (1, 1, 1, 1, 1, 9, 5000)
    assert settings(AutoAttack(model, version="plus")) == (5, 5, 1, 5, 1, 9, 5000)
    assert settings(AutoAttack(model, version="rand")) == (1, 1, 20, 5, 1, 9, 5000)
    assert settings(AutoAttack(model, version="custom", attacks=("apgd-ce",))) == (5, 5, 1, 5, 1, 9, 5000)
    # attacks= with a version: its attacks one by one, with its settings (evaluate's "apgd-ce")
    one = AutoAttack(model, attacks=("APGD-CE",))
    assert (one.version, one.attacks, settings(one)[0]) == ("standard", ("apgd-ce",), 1)
    assert settings(AutoAttack(model, version="plus", attacks=("fab",)))[3] == 5
    from fastadv.evaluation import parse_attack
    assert (parse_attack("apgd-ce").version, parse_attack("apgd-ce").attacks) == ("standard", ("apgd-ce",))
    for bad in ("custom", ["standard"], "fast"):
        with pytest.raises(ValueError, match="version"):
            AutoAttack(model, version=bad)


class Logged(nn.Module):
    """``net``, logging every pass's input and predictions."""

    def __init__(self, net):
        super().__init__()
        self.net, self.log = net, []

    def forward(self, x):
        out = self.net(x)
        self.log.append((x.detach().clone(), out.argmax(1)))
        return out


def test_apgd_with_eot_keeps_every_row_and_its_latest_misclassified_iterate(batch):
    """With eot_iter > 1 (a randomised model) one wrong pass is no verdict: as in the official
    code no row leaves, and x_adv is the latest iterate a pass misclassified."""
    net, x, y = batch
    x, y = x[4:], y[4:]  # correctly classified: every row is attacked, in batch order
    model = Logged(net)
    res = APGD(model, eps=0.05, steps=10, eot_iter=2).run(x, y)
    passes = model.log[1:]  # after the clean pass: 2 passes at the start and at each of 10 iterates
    assert len(passes) == 22 and all(p[0].shape[0] == x.shape[0] for p in passes)  # no row left
    assert res.backward.tolist() == [22] * x.shape[0]
    latest = x.clone()
    hit = torch.zeros(x.shape[0], dtype=torch.bool)
    for inp, pred in passes[1::2]:  # the decision reads each iterate's last EOT pass
        wrong = pred != y
        latest[wrong], hit = inp[wrong], hit | wrong
    assert 0 < int(hit.sum()) < x.shape[0]  # some broken, some robust: the test can fail
    assert torch.equal(res.robust, ~hit)
    assert torch.equal(res.x_adv, latest)
    first = APGD(net, eps=0.05, steps=10).run(x, y)  # without EOT: the first breaking iterate
    assert torch.equal(first.robust, res.robust)  # the same verdicts on this deterministic model
    assert not torch.equal(first.x_adv, res.x_adv)  # another iterate for some rows


class ErrsOnCall(nn.Module):
    """``net``, but from call ``k`` on (1-based) it predicts class 9 for row 0."""

    def __init__(self, net, k):
        super().__init__()
        self.net, self.k, self.calls = net, k, 0

    def forward(self, x):
        self.calls += 1
        out = self.net(x)
        if self.calls >= self.k:
            out = out.clone()
            out[0] = 0.0
            out[0, 9] = 100.0
        return out


@pytest.mark.parametrize("version", ["standard", "rand"])
def test_autoattack_evaluates_every_point_of_a_batch_again(batch, monkeypatch, version):
    """As the official code: after each attack every point of the batch is evaluated again, and a
    point the attack left robust but the (randomised) model now misclassifies counts as broken."""
    net, x, y = batch
    x, y = x[4:10], y[4:10]  # classified correctly
    assert int(y[0]) != 9  # so the re-check's class 9 is wrong for row 0
    model = ErrsOnCall(net, k=2)  # 1: the clean pass; 2: the re-check
    aa = AutoAttack(model, eps=0.05, version=version, attacks=("apgd-ce",), sanity_checks=False)
    stub = lambda xx, yy: fastadv.attacks.EvalResult(  # noqa: E731  an attack that breaks nothing
        xx.clone(), torch.ones(xx.shape[0], dtype=torch.bool), torch.zeros(xx.shape[0], dtype=torch.int64),
        torch.zeros(xx.shape[0], dtype=torch.int64))
    monkeypatch.setattr(aa.subattacks["apgd-ce"], "run", stub)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        res = aa.run(x, y)
    assert res.broken_by == ["apgd-ce"] + [None] * 5 and res.robust.tolist() == [False] + [True] * 5
    assert torch.equal(res.x_adv, x)  # its x_adv is its input
    assert res.forward.tolist() == [2] * 6  # the clean pass and the re-check, every point
    noted = any("left robust are misclassified" in w for w in res.warnings)
    assert noted == (version != "rand")  # a randomised model errs by chance: no warning then


def test_rand_warns_about_a_model_in_training_mode(batch):
    net, x, y = batch
    wrong = (y[:4] + 1) % 10  # misclassified from the start: no attack runs
    for train in (True, False):
        model = nn.Sequential(net).train(train)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            res = AutoAttack(model, eps=0.05, version="rand", sanity_checks=False).run(x[:4], wrong)
        assert any("training mode" in w for w in res.warnings) == train
        assert model.training is train  # the mode is restored


def test_a_random_models_noise_is_seeded_and_the_callers_stream_kept(batch):
    """As the official code, the global RNG is seeded for each attack's batch (a randomised
    model's noise repeats with the seed), and the caller's random stream is restored after."""
    net, x, y = batch
    noisy = lambda v: net(v) + 0.05 * torch.randn(v.shape[0], 10)  # noqa: E731
    torch.manual_seed(123)
    before = torch.get_rng_state()
    runs = [AutoAttack(noisy, eps=0.03, version="rand", attacks=("apgd-ce",), sanity_checks=False,
                       seed=s).run(x[4:20], y[4:20]) for s in (0, 0, 1)]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(runs[0].x_adv, runs[1].x_adv) and torch.equal(runs[0].robust, runs[1].robust)
    assert not torch.equal(runs[0].x_adv, runs[2].x_adv)  # another seed, other noise and starts
    # Reseeded for every batch of every attack, as the official perturb; under rand a batch is
    # one pass (how a random model's draws are split changes its noise).
    aa = AutoAttack(noisy, eps=0.03, version="rand", batch_size=4, sanity_checks=False)
    assert aa.rows_per_pass == 4 and all(s.rows_per_pass == 4 for s in aa.subattacks.values())
    assert AutoAttack(noisy, version="standard").rows_per_pass is None
    seeded = []
    real = aa._seed_model_rng
    aa._seed_model_rng = lambda: (seeded.append(1), real())
    res = aa.run(x[4:12], y[4:12])
    batches = sum(-(-n // 4) for n in (int(res.accuracy["clean"] * 8 + 0.5),
                                         int(res.accuracy["apgd-ce"] * 8 + 0.5)))
    assert batches > 1 and len(seeded) == 1 + batches  # the run, then each attack's batches
