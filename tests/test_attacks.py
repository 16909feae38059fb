"""Attacks (SPEC §2): the FAT test vector of §2.1 on a scripted model, GA-PGD's κ (§2.2), PGD/FGSM/CW
on a small trained model, the attack contract (modes, gradients, order, dtypes, shapes), bad input,
and agreement with the port of the official per-sample loop (benchmarks/official_loop.py).
"""
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastadv import attacks
from fastadv.losses import cw_loss, kl_loss

K = 10

# ---------------------------------------------------------------------------- the scripted model
# SPEC §2.1's table: C = classified correctly at check k, W = wrongly.
SCRIPT = ["CCCCCCCCCC", "WWWWWWWWWW", "CCWWWWWWWW", "CWCWWWWWWW", "CCCCCCCCCW", "CWCCWCCCWC"]
N_SCRIPT = len(SCRIPT)
NUM_CLASSES = 3
LABELS = torch.tensor([i % NUM_CLASSES for i in range(N_SCRIPT)])
# Powers of two: every iterate is exact in float32, so expected iterates are compared exactly.
ALPHA = 1 / 32
EPS = 0.5            # ≥ K·α: the projection never binds, the clock below runs freely
ID_SCALE = 8.0       # x[:, 0] = id / 8
DOWN0, FIXED = 0.9375, 0.5

# updates per sample (SPEC table; τ = 9, 10 follow from the semantics), checks, κ, bp, bp_executed.
TABLE = {
    0: ([10, 0, 2, 1, 9, 1], [10, 1, 3, 2, 10, 2], [10, 0, 2, 1, 9, 1], 23, 28),
    1: ([10, 1, 3, 3, 10, 4], [10, 2, 4, 4, 10, 5], [10, 0, 2, 2, 9, 3], 31, 35),
    2: ([10, 2, 4, 4, 10, 8], [10, 3, 5, 5, 10, 9], [10, 0, 2, 2, 9, 6], 38, 42),
    3: ([10, 3, 5, 5, 10, 10], [10, 4, 6, 6, 10, 10], [10, 0, 2, 2, 9, 7], 43, 46),
    9: ([10, 9, 10, 10, 10, 10], [10, 10, 10, 10, 10, 10], [10, 0, 2, 2, 9, 7], 59, 60),
    10: ([10, 10, 10, 10, 10, 10], [10, 10, 10, 10, 10, 10], [10, 0, 2, 2, 9, 7], 60, 60),
}
GAPGD_KAPPA = [10, 0, 2, 2, 9, 7]


class ScriptedModel(nn.Module):
    """Predicts per sample and per check from SCRIPT, whatever the batch composition.

    Input [N, 4]: x[:, 0] = sample id / 8 (its gradient is exactly 0, so sign(0) = 0 never moves it),
    x[:, 1] a clock that the CE gradient pushes up by α per update, x[:, 2] one it pushes down,
    x[:, 3] a constant. The check index is k = round(x[:, 1] / α) (with ``random_start=None``, ω = 0),
    so compaction, masking and reordering cannot confuse it. Every forward logs (id, k) per row.
    """

    def __init__(self, script=SCRIPT, labels=LABELS):
        super().__init__()
        table = torch.tensor([[c == "C" for c in s] + [True] for s in script])  # k = K: never checked
        self.register_buffer("table", table)
        self.register_buffer("labels", labels.clone())
        self.scale = nn.Parameter(torch.ones(()))  # a parameter, to check that none gets a .grad
        self.calls = []
        self.modes = []

    def forward(self, x):
        xd = x.detach().float()
        ids = torch.round(xd[:, 0] * ID_SCALE).long()
        k = torch.round(xd[:, 1] / ALPHA).long().clamp(0, K)
        self.calls += list(zip(ids.tolist(), k.tolist()))
        self.modes.append(self.training)
        correct = self.table[ids, k]
        y = self.labels[ids]
        target = torch.where(correct, y, (y + 1) % NUM_CLASSES)
        base = 3.0 * F.one_hot(target, NUM_CLASSES).float()
        # d CE / d x1 = 1 − p_y > 0 and d CE / d x2 = p_y − 1 < 0: x1 rises, x2 falls by α per step.
        lin = (x[:, 2].float() - x[:, 1].float()) * self.scale
        return base + F.one_hot(y, NUM_CLASSES).float() * lin[:, None]


def scripted_inputs(ids=range(N_SCRIPT)):
    ids = torch.tensor(list(ids))
    x = torch.stack([ids.float() / ID_SCALE, torch.zeros(len(ids)), torch.full((len(ids),), DOWN0),
                     torch.full((len(ids),), FIXED)], dim=1)
    return x, LABELS[ids]


def expected_iterate(ids, updates):
    u = torch.tensor(updates, dtype=torch.float32)
    ids = torch.tensor(list(ids), dtype=torch.float32)
    return torch.stack([ids / ID_SCALE, u * ALPHA, DOWN0 - u * ALPHA,
                        torch.full_like(u, FIXED)], dim=1)


def es(model, tau, compact=True, **kw):
    kw.setdefault("random_start", None)
    return attacks.EarlyStopPGD(model, eps=EPS, alpha=ALPHA, steps=K, tau=tau, compact=compact, **kw)


@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("tau", sorted(TABLE))
def test_fat_test_vector(tau, compact):
    updates, checks, kappa, bp, bp_executed = TABLE[tau]
    model = ScriptedModel()
    x, y = scripted_inputs()
    res = es(model, tau, compact).run(x, y)
    assert res.updates.tolist() == updates
    assert res.checks.tolist() == checks
    assert res.kappa.tolist() == kappa
    assert (res.bp, res.bp_executed) == (bp, bp_executed)
    assert res.updates.dtype == res.checks.dtype == res.kappa.dtype == torch.int64
    # Leavers output the iterate at which they left, survivors x^K.
    assert torch.equal(res.x_adv, expected_iterate(range(N_SCRIPT), updates))
    if compact:
        # Compaction is real: each sample was forwarded exactly at its checks k = 0 … checks−1.
        assert res.rows_computed == bp_executed
        assert sorted(model.calls) == sorted((i, k) for i in range(N_SCRIPT) for k in range(checks[i]))
    else:
        assert res.rows_computed >= bp_executed
        assert res.rows_computed == len(model.calls)
        assert res.rows_computed % N_SCRIPT == 0  # fixed shape: every check runs on all rows


def test_fat_test_vector_compact_and_masked_agree():
    for tau in (0, 1, 2, 3):
        x, y = scripted_inputs()
        a = es(ScriptedModel(), tau, True).run(x, y)
        b = es(ScriptedModel(), tau, False).run(x, y)
        assert torch.equal(a.x_adv, b.x_adv)
        for f in ("updates", "checks", "kappa"):
            assert torch.equal(getattr(a, f), getattr(b, f)), f
        assert (a.bp, a.bp_executed) == (b.bp, b.bp_executed)
        assert a.rows_computed < b.rows_computed


@pytest.mark.parametrize("tau", [0, 1, 2, 3])
def test_fat_test_vector_input_order_restored(tau):
    updates, checks, kappa, bp, bp_executed = TABLE[tau]
    perm = [4, 1, 5, 0, 3, 2]
    x, y = scripted_inputs(perm)
    res = es(ScriptedModel(), tau).run(x, y)
    assert res.updates.tolist() == [updates[i] for i in perm]
    assert res.checks.tolist() == [checks[i] for i in perm]
    assert res.kappa.tolist() == [kappa[i] for i in perm]
    assert torch.equal(res.x_adv, expected_iterate(perm, [updates[i] for i in perm]))
    assert (res.bp, res.bp_executed) == (bp, bp_executed)


def test_fat_test_vector_repeated_samples():
    """A larger batch: the six samples each four times, interleaved (compaction of many rows)."""
    ids = [i % N_SCRIPT for i in range(4 * N_SCRIPT)][::-1]
    x, y = scripted_inputs(ids)
    for tau in (0, 2):
        updates = TABLE[tau][0]
        res = es(ScriptedModel(), tau).run(x, y)
        assert res.updates.tolist() == [updates[i] for i in ids]
        assert res.bp == 4 * TABLE[tau][3]
        assert torch.equal(res.x_adv, expected_iterate(ids, [updates[i] for i in ids]))


def test_tau_is_cumulative_and_k_minus_1_is_not_pgd():
    x, y = scripted_inputs()
    r9 = es(ScriptedModel(), K - 1).run(x, y)
    r10 = es(ScriptedModel(), K).run(x, y)
    pgd = attacks.PGD(ScriptedModel(), eps=EPS, alpha=ALPHA, steps=K, random_start=None).run(x, y)
    assert r9.bp == 59 and r10.bp == 60 == pgd.bp
    assert not torch.equal(r9.x_adv, pgd.x_adv)  # s1 stopped one update short
    assert torch.equal(r10.x_adv, pgd.x_adv)


@pytest.mark.parametrize("cls", [attacks.GAPGD, attacks.PGD])
def test_gapgd_kappa(cls):
    model = ScriptedModel()
    x, y = scripted_inputs()
    res = cls(model, eps=EPS, alpha=ALPHA, steps=K, random_start=None).run(x, y)
    assert res.kappa.tolist() == GAPGD_KAPPA
    assert res.updates.tolist() == [K] * N_SCRIPT and res.checks.tolist() == [K] * N_SCRIPT
    assert (res.bp, res.bp_executed, res.rows_computed) == (60, 60, 60)
    assert torch.equal(res.x_adv, expected_iterate(range(N_SCRIPT), [K] * N_SCRIPT))
    # K checks at x^0 … x^{K−1}: x^K is never forwarded.
    assert sorted(model.calls) == sorted((i, k) for i in range(N_SCRIPT) for k in range(K))


def test_scripted_model_eval_mode_during_attack_and_restored():
    model = ScriptedModel().train()
    x, y = scripted_inputs()
    es(model, 1).run(x, y)
    assert model.modes and not any(model.modes)
    assert model.training


# ---------------------------------------------------------------------------- a small trained model
@pytest.fixture(scope="module")
def digits():
    from fastadv.data import load_dataset
    ds = load_dataset("digits", split="test")
    return ds.float_images()[:128], ds.labels[:128]


@pytest.fixture(scope="module")
def linear_model():
    """A linear classifier on digits (≈ 95 % test accuracy), trained in well under a second."""
    from fastadv.data import load_dataset
    ds = load_dataset("digits", split="train")
    x, y = ds.float_images(), ds.labels
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for p in model.parameters():
        p.grad = None
    return model.eval()


def _acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_pgd_lowers_accuracy(linear_model, digits):
    x, y = digits
    clean = _acc(linear_model, x, y)
    fgsm = _acc(linear_model, attacks.FGSM(linear_model, eps=0.15)(x, y), y)
    pgd = _acc(linear_model, attacks.PGD(linear_model, eps=0.15, alpha=0.15 / 4, steps=10)(x, y), y)
    assert clean > 0.9  # measured: 96 %, FGSM 5 %, PGD-10 3 %
    assert fgsm < clean - 0.5
    assert pgd <= fgsm
    assert pgd < 0.1


def test_fgsm_is_one_step_of_eps(linear_model, digits):
    x, y = digits
    eps = 0.05
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(linear_model(xr), y, reduction="sum"), xr)
    expected = (x + eps * g.sign()).clamp(0, 1)
    res = attacks.FGSM(linear_model, eps=eps).run(x, y)
    torch.testing.assert_close(res.x_adv, expected, rtol=0, atol=1e-6)
    assert res.updates.tolist() == [1] * len(y) and res.bp == len(y)
    # The same as PGD with one step of size ε from x.
    pgd = attacks.PGD(linear_model, eps=eps, alpha=eps, steps=1, random_start=None)(x, y)
    assert torch.equal(res.x_adv, pgd)


def test_cw_increases_the_cw_loss(linear_model, digits):
    x, y = digits
    atk = attacks.CW(linear_model, eps=0.1)
    assert atk.steps == 30 and atk.alpha == pytest.approx(0.1 / 4) and atk.loss == "cw"
    x_adv = atk(x, y)
    with torch.no_grad():
        before = cw_loss(linear_model(x), y).item()
        after = cw_loss(linear_model(x_adv), y).item()
    assert after > before + 0.1 * abs(before)
    assert (x_adv - x).abs().max().item() <= 0.1 + 1e-6
    assert _acc(linear_model, x_adv, y) < _acc(linear_model, x, y) - 0.3


def test_kl_attack_increases_kl(linear_model, digits):
    x, y = digits
    torch.manual_seed(0)
    x_adv = attacks.PGD(linear_model, eps=0.1, alpha=0.025, steps=10, random_start="normal",
                        loss="kl")(x, y)
    with torch.no_grad():
        clean = linear_model(x)
        kl_adv = kl_loss(linear_model(x_adv), clean).item()
        noise = (x + torch.empty_like(x).uniform_(-0.1, 0.1)).clamp(0, 1)
        kl_noise = kl_loss(linear_model(noise), clean).item()
    assert kl_adv > 10 * kl_noise
    assert (x_adv - x).abs().max().item() <= 0.1 + 1e-6


class AlwaysClass0(nn.Module):
    """Predicts class 0 everywhere (with an input gradient): wrong for every y ≠ 0, also at x."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-0.01, 0.01, 64 * 3).view(64, 3))

    def forward(self, x):
        return x.flatten(1) @ self.w + torch.tensor([10.0, 0.0, 0.0])


@pytest.mark.parametrize("compact", [True, False])
def test_kl_early_stop_tests_against_true_label(compact):
    """With loss='kl' the wrong/right test is against y, not against the clean prediction: a
    sample misclassified from the start leaves at check 0 with τ = 0."""
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([1, 2, 1, 2, 0, 0, 1, 2])
    res = attacks.EarlyStopPGD(AlwaysClass0(), eps=0.1, alpha=0.02, steps=K, tau=0, loss="kl",
                               random_start="normal", compact=compact).run(x, y)
    assert res.updates.tolist() == [0, 0, 0, 0, 10, 10, 0, 0]
    assert res.kappa.tolist() == [0, 0, 0, 0, 10, 10, 0, 0]
    assert res.bp == 20


@pytest.mark.parametrize("omega", [0.0, 0.001])
@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("tau", [K, K + 5, 100])
def test_tau_at_least_k_is_pgd_exactly(linear_model, digits, tau, compact, omega):
    x, y = digits
    torch.manual_seed(123)
    pgd = attacks.PGD(linear_model, eps=0.1, alpha=0.025, steps=K, omega=omega).run(x, y)
    torch.manual_seed(123)
    res = attacks.EarlyStopPGD(linear_model, eps=0.1, alpha=0.025, steps=K, tau=tau, omega=omega,
                               compact=compact).run(x, y)
    assert torch.equal(res.x_adv, pgd.x_adv)
    assert res.bp == res.bp_executed == K * len(y) == pgd.bp
    assert torch.equal(res.kappa, pgd.kappa)
    assert res.updates.tolist() == [K] * len(y)


def test_compact_and_masked_agree_on_a_real_model(linear_model, digits):
    x, y = digits
    for tau in (0, 1, 3):
        torch.manual_seed(7)
        a = attacks.EarlyStopPGD(linear_model, eps=0.1, alpha=0.025, tau=tau).run(x, y)
        torch.manual_seed(7)
        b = attacks.EarlyStopPGD(linear_model, eps=0.1, alpha=0.025, tau=tau, compact=False).run(x, y)
        assert torch.equal(a.updates, b.updates) and torch.equal(a.kappa, b.kappa)
        torch.testing.assert_close(a.x_adv, b.x_adv, rtol=0, atol=1e-6)
        assert a.rows_computed == a.bp_executed < b.rows_computed
        assert 0 < a.bp < K * len(y)  # early stops happened


def test_input_order_restored_on_a_real_model(linear_model, digits):
    x, y = digits
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(3))
    a = attacks.EarlyStopPGD(linear_model, eps=0.1, alpha=0.025, tau=1, random_start=None).run(x, y)
    b = attacks.EarlyStopPGD(linear_model, eps=0.1, alpha=0.025, tau=1,
                             random_start=None).run(x[perm], y[perm])
    assert torch.equal(b.updates, a.updates[perm]) and torch.equal(b.kappa, a.kappa[perm])
    torch.testing.assert_close(b.x_adv, a.x_adv[perm], rtol=0, atol=1e-6)


@pytest.mark.parametrize("cls,kw", [(attacks.PGD, {}), (attacks.EarlyStopPGD, {"tau": 1}),
                                    (attacks.EarlyStopPGD, {"tau": 0, "compact": False})])
def test_per_sample_eps_tensor(linear_model, digits, cls, kw):
    x, y = digits
    eps = torch.linspace(0.0, 0.2, len(y))
    x_adv = cls(linear_model, eps=eps, alpha=eps / 4, steps=K, **kw)(x, y)
    dist = (x_adv - x).flatten(1).abs().amax(1)
    assert bool((dist <= eps + 1e-6).all())
    assert torch.equal(x_adv[0], x[0])  # ε = 0: unchanged
    assert dist[-1].item() > 0.1  # the large budgets are used
    # A wrongly shaped eps tensor names eps.
    with pytest.raises(ValueError, match="eps"):
        cls(linear_model, eps=torch.full((3,), 0.1), alpha=0.01, **kw)(x, y)


def test_clip_range(linear_model, digits):
    x, y = digits
    x = x.clamp(0.2, 0.7)  # inputs must lie in the attack's box (test_inputs_outside_the_box_raise)
    for cls, kw in ((attacks.PGD, {}), (attacks.EarlyStopPGD, {"tau": 2}),
                    (attacks.EarlyStopPGD, {"tau": 2, "compact": False})):
        x_adv = cls(linear_model, eps=0.3, alpha=0.1, steps=5, clip_min=0.2, clip_max=0.7, **kw)(x, y)
        assert x_adv.min().item() >= 0.2 and x_adv.max().item() <= 0.7
        assert bool(((x_adv - x).abs() <= 0.3 + 1e-6).all())


def test_random_start_kinds(linear_model, digits):
    x, y = digits
    none = attacks.PGD(linear_model, eps=0.1, steps=0, random_start=None)(x, y)
    assert torch.equal(none, x)
    assert torch.equal(attacks.PGD(linear_model, eps=0.1, steps=0, random_start=False)(x, y), x)
    for kind in ("uniform", True):
        u = attacks.PGD(linear_model, eps=0.1, steps=0, random_start=kind)(x, y)
        assert not torch.equal(u, x) and (u - x).abs().max().item() <= 0.1 + 1e-6
        assert u.min().item() >= 0 and u.max().item() <= 1
    n = attacks.PGD(linear_model, eps=0.1, steps=0, random_start="normal")(x, y)
    assert not torch.equal(n, x) and (n - x).abs().max().item() < 0.001 * 7
    # steps = 0: no check at all.
    r = attacks.EarlyStopPGD(linear_model, eps=0.1, steps=0, random_start=None).run(x, y)
    assert r.bp == r.bp_executed == 0 and torch.equal(r.x_adv, x)


def test_random_start_none_starts_at_x_in_early_stop():
    x, y = scripted_inputs()
    model = ScriptedModel()
    es(model, 0).run(x, y)
    assert {k for i, k in model.calls if i == 1} == {0}  # s1 checked at x itself (clock 0)


@pytest.mark.parametrize("cls,kw", [(attacks.PGD, {}), (attacks.EarlyStopPGD, {"tau": 2}),
                                    (attacks.EarlyStopPGD, {"tau": 2, "compact": False})])
def test_omega_noise_only_when_positive(linear_model, digits, cls, kw):
    x, y = digits
    run = lambda seed, omega: (torch.manual_seed(seed),
                               cls(linear_model, eps=0.1, alpha=0.025, random_start=None,
                                   omega=omega, **kw)(x, y))[1]
    assert torch.equal(run(0, 0.0), run(1, 0.0))  # deterministic without ω
    a, b = run(0, 0.01), run(1, 0.01)
    assert not torch.equal(a, b)
    assert torch.equal(a, run(0, 0.01))
    assert not torch.equal(a, run(0, 0.0))
    assert (a - x).abs().max().item() <= 0.1 + 1e-6


# ---------------------------------------------------------------------------- the contract
class DropoutNet(nn.Module):
    def __init__(self, d=64):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.ReLU(), nn.Dropout(0.5),
                                  nn.Linear(32, 10))
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.body(x)


ALL_ATTACKS = [
    ("pgd", lambda m: attacks.PGD(m, eps=0.1, alpha=0.025, steps=5)),
    ("pgd-l2", lambda m: attacks.PGD(m, eps=0.5, alpha=0.2, steps=5, norm="l2")),
    ("pgd-kl", lambda m: attacks.PGD(m, eps=0.1, alpha=0.025, steps=5, loss="kl", random_start="normal")),
    ("fgsm", lambda m: attacks.FGSM(m, eps=0.1)),
    ("cw", lambda m: attacks.CW(m, eps=0.1, steps=5)),
    ("gapgd", lambda m: attacks.GAPGD(m, eps=0.1, alpha=0.025, steps=5)),
    ("es", lambda m: attacks.EarlyStopPGD(m, eps=0.1, alpha=0.025, steps=5, tau=1)),
    ("es-masked", lambda m: attacks.EarlyStopPGD(m, eps=0.1, alpha=0.025, steps=5, tau=1, compact=False)),
    # (The uniform start of an L2 attack is tested on its own: test_l2_uniform_start_inside_the_ball.)
    ("es-l2", lambda m: attacks.EarlyStopPGD(m, eps=0.5, alpha=0.2, steps=5, tau=0, norm="l2",
                                             random_start=None)),
    ("es-kl", lambda m: attacks.EarlyStopPGD(m, eps=0.1, alpha=0.025, steps=5, tau=1, loss="kl",
                                             random_start="normal")),
]


@pytest.mark.parametrize("name,make", ALL_ATTACKS, ids=[a[0] for a in ALL_ATTACKS])
def test_contract_modes_grads_inputs(name, make, digits):
    x, y = digits
    torch.manual_seed(0)
    model = DropoutNet()
    x0 = x.clone()
    for train in (True, False):
        model.train(train)
        model.modes.clear()
        x_adv = make(model)(x, y)
        assert model.training is train  # mode restored
        assert model.modes and not any(model.modes)  # eval during the attack
        assert all(p.grad is None for p in model.parameters())  # no parameter gradients
        assert torch.equal(x, x0)  # x unchanged
        assert not x_adv.requires_grad and x_adv.grad_fn is None
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    # Existing parameter gradients are left as they were.
    grads = [torch.full_like(p, 0.5) for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    make(model)(x, y)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_submodule_modes_restored(digits):
    """A model with a frozen (eval-mode) submodule inside a training model keeps both modes."""
    x, y = digits
    model = DropoutNet().train()
    model.body[3].eval()  # e.g. a frozen dropout/BN layer while fine-tuning
    attacks.EarlyStopPGD(model, eps=0.1, alpha=0.025, tau=1)(x, y)
    assert model.training and model.body[1].training
    assert not model.body[3].training


def test_input_requiring_grad_is_not_leaked(linear_model, digits):
    x, y = digits
    xr = x.clone().requires_grad_(True)
    for atk in (attacks.PGD(linear_model, eps=0.1, steps=3),
                attacks.EarlyStopPGD(linear_model, eps=0.1, steps=3, tau=0)):
        out = atk(xr, y)
        assert not out.requires_grad
        assert xr.grad is None


@pytest.mark.parametrize("name,make", ALL_ATTACKS, ids=[a[0] for a in ALL_ATTACKS])
def test_bf16_autocast_around_the_model(name, make, linear_model, digits):
    x, y = digits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear_model(x).dtype == torch.bfloat16  # autocast is on for the model
        res = make(linear_model).run(x, y)
    assert res.x_adv.dtype == torch.float32 and res.x_adv.shape == x.shape
    assert bool(torch.isfinite(res.x_adv).all())
    assert not torch.equal(res.x_adv, x)


class CastModel(nn.Module):
    """Runs ``inner`` in float32 whatever the input dtype (a user's mixed-precision model)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.float())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name,make", ALL_ATTACKS, ids=[a[0] for a in ALL_ATTACKS])
def test_half_inputs(dtype, name, make, linear_model, digits):
    x, y = digits
    xh = x.to(dtype)
    res = make(CastModel(linear_model)).run(xh, y)
    assert res.x_adv.dtype == dtype and res.x_adv.shape == x.shape
    eps = 0.5 if "l2" in name else 0.1
    if "l2" in name:
        dist = (res.x_adv.float() - xh.float()).flatten(1).norm(dim=1)
    else:
        dist = (res.x_adv.float() - xh.float()).flatten(1).abs().amax(1)
    assert bool((dist <= eps * 1.01 + 4e-3).all())
    assert res.x_adv.float().min() >= 0 and res.x_adv.float().max() <= 1


@pytest.mark.parametrize("compact", [True, False])
def test_mlp_inputs_n_by_20(compact):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.rand(33, 20), torch.randint(0, 4, (33,))
    for atk in (attacks.PGD(model, eps=0.1, steps=4),
                attacks.EarlyStopPGD(model, eps=0.1, steps=4, tau=1, compact=compact)):
        res = atk.run(x, y)
        assert res.x_adv.shape == (33, 20) and res.updates.shape == (33,)
        assert (res.x_adv - x).abs().max().item() <= 0.1 + 1e-6


def test_image_inputs_n_1_8_8(linear_model, digits):
    x, y = digits
    assert x.shape[1:] == (1, 8, 8)
    res = attacks.EarlyStopPGD(linear_model, eps=0.1, steps=4, tau=0).run(x[:5], y[:5])
    assert res.x_adv.shape == (5, 1, 8, 8)


def test_channels_last_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    x = torch.rand(9, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (9,))
    torch.manual_seed(1)
    a = attacks.EarlyStopPGD(model, eps=0.1, steps=5, tau=1, random_start=None).run(x, y)
    b = attacks.EarlyStopPGD(model, eps=0.1, steps=5, tau=1, random_start=None).run(x.contiguous(), y)
    assert torch.equal(a.updates, b.updates)
    torch.testing.assert_close(a.x_adv, b.x_adv, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,make", ALL_ATTACKS, ids=[a[0] for a in ALL_ATTACKS])
def test_empty_batch(name, make, linear_model):
    x, y = torch.rand(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64)
    res = make(linear_model).run(x, y)
    assert res.x_adv.shape == (0, 1, 8, 8)
    assert res.updates.shape == res.checks.shape == res.kappa.shape == (0,)
    assert res.bp == res.bp_executed == res.rows_computed == 0


@pytest.mark.parametrize("name,make", ALL_ATTACKS, ids=[a[0] for a in ALL_ATTACKS])
def test_single_sample(name, make, linear_model, digits):
    x, y = digits
    res = make(linear_model).run(x[:1], y[:1])
    assert res.x_adv.shape == (1, 1, 8, 8) and res.updates.shape == (1,)
    assert 0 <= res.updates.item() <= res.checks.item() + 1


def test_single_sample_scripted():
    for tau in (0, 1, 2):
        for i in range(N_SCRIPT):
            x, y = scripted_inputs([i])
            res = es(ScriptedModel(), tau).run(x, y)
            assert res.updates.tolist() == [TABLE[tau][0][i]]
            assert res.kappa.tolist() == [TABLE[tau][2][i]]


@pytest.mark.parametrize("compact", [True, False])
def test_l2_norm_ball(linear_model, digits, compact):
    x, y = digits
    eps = torch.linspace(0.1, 1.0, len(y))
    for atk in (attacks.PGD(linear_model, eps=eps, alpha=0.25, steps=K, norm="l2"),
                attacks.EarlyStopPGD(linear_model, eps=eps, alpha=0.25, steps=K, tau=1, norm="l2",
                                     compact=compact)):
        x_adv = atk(x, y)
        d = (x_adv - x).flatten(1).norm(dim=1)
        assert bool((d <= eps + 1e-5).all())
        assert d.max().item() > 0.5  # the ball is used, not only the L∞ box
        assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1


L2_UNIFORM = [
    ("pgd-steps0", lambda m, e: attacks.PGD(m, eps=e, alpha=0.25, steps=0, norm="l2")),
    ("es-tau0", lambda m, e: attacks.EarlyStopPGD(m, eps=e, alpha=0.25, steps=K, tau=0, norm="l2")),
    ("es-tau0-masked", lambda m, e: attacks.EarlyStopPGD(m, eps=e, alpha=0.25, steps=K, tau=0,
                                                         norm="l2", compact=False)),
]


@pytest.mark.parametrize("name,make", L2_UNIFORM, ids=[a[0] for a in L2_UNIFORM])
def test_l2_uniform_start_inside_the_ball(name, make, linear_model, digits):
    """Every output of an L2 attack lies in the L2 ball, also a start that is output unchanged
    (PGD with 0 steps, FAT leavers at check 0): the random start of an L2 attack must be drawn in
    the L2 ball, not in the L∞ box of side 2ε (whose corners are √d·ε away)."""
    x, y = digits
    torch.manual_seed(0)
    x_adv = make(linear_model, 0.5)(x, y)
    d = (x_adv - x).flatten(1).norm(dim=1)
    assert bool((d <= 0.5 + 1e-5).all()), f"max L2 distance {d.max().item():.3f} > eps 0.5"


def test_l2_compact_and_masked_agree(linear_model, digits):
    x, y = digits
    kw = dict(eps=0.5, alpha=0.2, steps=K, tau=1, norm="l2", random_start=None)
    a = attacks.EarlyStopPGD(linear_model, compact=True, **kw).run(x, y)
    b = attacks.EarlyStopPGD(linear_model, compact=False, **kw).run(x, y)
    assert torch.equal(a.updates, b.updates) and a.bp == b.bp
    torch.testing.assert_close(a.x_adv, b.x_adv, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- bad input
def _raises(exc, match, make, x=None, y=None):
    if x is None:
        x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(exc, match=match):
        make(model)(x, y)


@pytest.mark.parametrize("cls", [attacks.PGD, attacks.EarlyStopPGD, attacks.GAPGD])
def test_bad_labels(cls):
    x = torch.rand(4, 1, 8, 8)
    _raises(ValueError, r"\by\b", lambda m: cls(m), x, torch.tensor([0, 1, 2, 10]))
    _raises(ValueError, r"\by\b", lambda m: cls(m), x, torch.tensor([0, -1, 2, 3]))
    _raises(ValueError, r"\by\b", lambda m: cls(m), x, torch.tensor([0, 1, 2]))  # mismatched N
    _raises(ValueError, r"\by\b", lambda m: cls(m), x, torch.tensor([[0, 1, 2, 3]]))
    _raises(TypeError, r"\by\b", lambda m: cls(m), x, torch.tensor([0.0, 1.0, 2.0, 3.0]))
    _raises(ValueError, r"\by\b", lambda m: cls(m), x, torch.zeros(4, dtype=torch.int64, device="meta"))


def test_one_host_read_per_attack_plus_one_per_early_stop_check(monkeypatch):
    """The label-range and finite-logits checks ride on the attack's one host read (its counts):
    PGD reads the device once; early-stopped PGD once per check (the active count) plus once."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    reads = []

    def counted(name, real):
        def f(self, *a):
            # Device reads made by the attack engine (fastadv/attacks) and by compaction_plan; the
            # CPU-only error-flag reads of library.py cost nothing (on CUDA compaction_plan folds
            # the flag into its own read).
            caller = sys._getframe(1).f_code.co_filename
            if "fastadv/attacks" in caller or caller.endswith("fastadv/ops/__init__.py"):
                reads.append(name)
            return real(self, *a)
        return f
    for name in ("__bool__", "__int__", "__float__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    attacks.PGD(model, eps=0.1, alpha=0.02, steps=5).run(x, y)
    assert reads == ["tolist"], reads
    reads.clear()
    res = attacks.EarlyStopPGD(model, eps=0.1, alpha=0.02, steps=5, tau=1).run(x, y)
    checks = int(res.checks.max())
    assert len(reads) == checks + 1 and reads[-1] == "tolist", reads


def test_the_attack_engine_asks_no_host_read_of_its_compactions(monkeypatch):
    """Its plans come from compaction_plan, so every compaction runs with check=False: on a GPU a
    check=True would cost a host synchronisation per compaction op, several per check."""
    from fastadv.ops import library
    seen = []
    real = library._after_compaction
    monkeypatch.setattr(library, "_after_compaction", lambda device, check: seen.append(check) or real(device, check))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for norm in ("linf", "l2"):
        attacks.EarlyStopPGD(model, eps=0.3, alpha=0.1, steps=5, tau=0, norm=norm).run(x, y)
    assert seen and not any(seen), seen


def test_bad_x():
    _raises(TypeError, r"\bx\b", lambda m: attacks.PGD(m), torch.randint(0, 2, (4, 1, 8, 8)),
            torch.tensor([0, 1, 2, 3]))
    _raises(TypeError, r"\bx\b", lambda m: attacks.PGD(m), [[0.0]], torch.tensor([0]))


def test_model_on_another_device():
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).to("meta")
    with pytest.raises(ValueError, match="model"):
        attacks.PGD(model)(x, y)


@pytest.mark.gpu
def test_wrong_devices_cuda():
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match=r"\by\b"):
        attacks.PGD(model)(x, y.cuda())
    x_adv = attacks.PGD(model.cuda())(x, y)  # torchattacks' habit: inputs go to the model
    assert x_adv.device.type == "cuda"
    with pytest.raises(ValueError, match="eps"):
        attacks.PGD(model.cuda(), eps=torch.full((4,), 0.1))(x.cuda(), y.cuda())


@pytest.mark.parametrize("cls", [attacks.PGD, attacks.EarlyStopPGD, attacks.GAPGD])
def test_bad_hyperparameters(cls):
    _raises(ValueError, "eps", lambda m: cls(m, eps=-0.1))
    _raises(ValueError, "eps", lambda m: cls(m, eps=float("nan")))
    _raises(ValueError, "eps", lambda m: cls(m, eps=float("inf")))
    _raises(ValueError, "eps", lambda m: cls(m, eps=torch.tensor([0.1, -0.1, 0.1, 0.1])))
    _raises(ValueError, "alpha", lambda m: cls(m, alpha=-1.0))
    _raises(ValueError, "steps", lambda m: cls(m, steps=-1))
    _raises(TypeError, "steps", lambda m: cls(m, steps=2.5))
    _raises(ValueError, "loss", lambda m: cls(m, loss="mse"))
    _raises(ValueError, "random_start", lambda m: cls(m, random_start="gaussian"))
    if cls is not attacks.GAPGD:
        _raises(ValueError, "norm", lambda m: cls(m, norm="l1"))


def test_bad_tau():
    _raises(ValueError, "tau", lambda m: attacks.EarlyStopPGD(m, tau=-1))
    _raises(TypeError, "tau", lambda m: attacks.EarlyStopPGD(m, tau=1.5))


class NaNModel(nn.Module):
    def __init__(self, when=0):
        super().__init__()
        self.lin = nn.Linear(64, 10)
        self.calls, self.when = 0, when

    def forward(self, x):
        out = self.lin(x.flatten(1))
        self.calls += 1
        if self.calls > self.when:
            out = out + float("nan")
        return out


@pytest.mark.parametrize("make", [lambda m: attacks.PGD(m, steps=3),
                                  lambda m: attacks.EarlyStopPGD(m, steps=3, tau=5),
                                  lambda m: attacks.EarlyStopPGD(m, steps=3, tau=5, compact=False)])
@pytest.mark.parametrize("when", [0, 2])
def test_non_finite_logits(make, when):
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="model|logits"):
        make(NaNModel(when))(x, y)


def test_model_returning_wrong_shape():
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="model|logits"):
        attacks.PGD(lambda t: t.flatten(1)[:, :10].sum(1))(x, y)


# ---------------------------------------------------------------------------- the official loop
@pytest.mark.parametrize("tau", [0, 1, 2, 3, K])
def test_official_loop_port_agrees(linear_model, digits, tau):
    from benchmarks.official_loop import official_earlystop
    x, y = digits
    eps, alpha = 0.1, 0.025
    off = official_earlystop(linear_model, x, y, eps=eps, alpha=alpha, steps=K, tau=tau,
                             random_start=None, omega=0.0)
    for p in linear_model.parameters():  # the official loop computes parameter gradients
        p.grad = None
    res = attacks.EarlyStopPGD(linear_model, eps=eps, alpha=alpha, steps=K, tau=tau,
                               random_start=None).run(x, y)
    assert off.bp == res.bp
    assert torch.equal(off.updates[off.inverse], res.updates)
    assert torch.equal(off.y[off.inverse], y)
    torch.testing.assert_close(off.x_nat[off.inverse], x, rtol=0, atol=0)
    torch.testing.assert_close(off.x_adv[off.inverse], res.x_adv, rtol=0, atol=1e-6)
    # Exit order: leavers by exit check (stable within a check), survivors last.
    exits = off.updates.tolist()
    assert exits == sorted(exits)
    assert off.restore(off.x_adv).shape == x.shape


# ---------------------------------------------------------------------------- torchattacks habits
def _habit_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()


def test_pgd_targeted_modes_reach_their_targets():
    from fastadv.attacks import CW, PGD
    model = _habit_model()
    torch.manual_seed(1)
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
        least = model(x).argmin(1)
    for atk in (PGD(model, eps=1.0, alpha=0.1, steps=30), CW(model, eps=1.0, alpha=0.1, steps=30)):
        torch.manual_seed(5)  # the random start
        x_adv = atk.run(x, y, targets=least).x_adv
        with torch.no_grad():
            hit = model(x_adv).argmax(1) == least
        assert hit.float().mean() > 0.9, type(atk).__name__
        atk.set_mode_targeted_least_likely()
        torch.manual_seed(5)
        assert torch.equal(atk(x, y), x_adv)  # the mode makes the same targets
        atk.set_mode_targeted_by_label()
        torch.manual_seed(5)
        assert torch.equal(atk(x, least), x_adv)  # the labels given are the targets
    with pytest.raises(ValueError, match="no targeted mode"):
        attacks.PGD(model, eps=0.1, loss="kl").run(x, y, targets=least)


@pytest.mark.parametrize("tau", [0, 2])
def test_early_stop_pgd_targeted_stops_at_the_target(tau):
    """Targeted FAT: a row leaves once it is classified as its target and τ is spent. The
    compacted run (targets packed with the rows) equals the masked full-batch run; a leaver's
    x_adv is at its target; κ counts the checks that were not at the target."""
    model = _habit_model()
    torch.manual_seed(1)
    x = torch.rand(40, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    targets = (y + 1 + torch.randint(0, 9, (40,))) % 10  # never the label
    runs = []
    for compact in (True, False):
        torch.manual_seed(5)
        runs.append(attacks.EarlyStopPGD(model, eps=0.3, alpha=0.05, steps=10, tau=tau,
                                         compact=compact).run(x, y, targets=targets))
    a, b = runs
    assert torch.equal(a.x_adv, b.x_adv)
    assert a.updates.tolist() == b.updates.tolist() and a.kappa.tolist() == b.kappa.tolist()
    left = a.updates < 10
    assert 0 < int(left.sum()) < 40, a.updates  # a mixed batch: compaction moved targets
    with torch.no_grad():
        pred = model(a.x_adv).argmax(1)
    assert torch.equal(pred[left], targets[left])
    # κ of a leaver after k updates: k + 1 checks, τ + 1 of them at the target
    assert a.kappa[left].tolist() == (a.updates[left] - tau).tolist()
    assert a.rows_computed == a.bp_executed  # compacted: leavers are never computed again


def test_targeted_early_stop_needs_two_classes():
    one = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    x = torch.rand(3, 1, 8, 8)
    zeros = torch.zeros(3, dtype=torch.int64)
    for compact in (True, False):
        with pytest.raises(ValueError, match="at least 2 classes"):
            attacks.EarlyStopPGD(one, eps=0.1, steps=2, compact=compact).run(x, zeros, targets=zeros)


def test_early_stop_pgd_targeted_with_tau_k_is_targeted_pgd():
    model = _habit_model()
    torch.manual_seed(1)
    x = torch.rand(24, 1, 8, 8)
    y = torch.randint(0, 10, (24,))
    targets = (y + 3) % 10
    torch.manual_seed(6)
    a = attacks.EarlyStopPGD(model, eps=0.2, alpha=0.05, steps=6, tau=6).run(x, y, targets=targets)
    torch.manual_seed(6)
    b = attacks.PGD(model, eps=0.2, alpha=0.05, steps=6).run(x, y, targets=targets)
    assert torch.equal(a.x_adv, b.x_adv) and a.kappa.tolist() == b.kappa.tolist()
    # the least-likely mode makes the same targets as passing them
    with torch.no_grad():
        least = model(x).argmin(1)
    torch.manual_seed(6)
    c = attacks.EarlyStopPGD(model, eps=0.2, alpha=0.05, steps=6, tau=0).run(x, y, targets=least)
    torch.manual_seed(6)
    d = attacks.EarlyStopPGD(model, eps=0.2, alpha=0.05, steps=6, tau=0) \
        .set_mode_targeted_least_likely().run(x, y)
    assert torch.equal(c.x_adv, d.x_adv) and c.updates.tolist() == d.updates.tolist()


def test_normalization_hook_and_callable_loss():
    from fastadv.attacks import PGD
    model = _habit_model()
    torch.manual_seed(2)
    x = torch.rand(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    from fastadv.models import Normalized
    wrapped = Normalized(model, [0.5], [0.25])
    torch.manual_seed(3)
    a = PGD(model, eps=0.1, steps=5).set_normalization_used([0.5], [0.25])(x, y)
    torch.manual_seed(3)
    b = PGD(wrapped, eps=0.1, steps=5)(x, y)
    assert torch.allclose(a, b, atol=1e-6)
    seen = []

    def my_ce(logits, labels):
        seen.append(logits.shape[0])
        return torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    torch.manual_seed(3)
    c = PGD(model, eps=0.1, steps=5, loss=my_ce)(x, y)
    torch.manual_seed(3)
    d = PGD(model, eps=0.1, steps=5)(x, y)
    assert torch.equal(c, d) and seen == [16] * 5


# ---------------------------------------------------------------------------- passes of rows_per_pass
class RowByRow(nn.Module):
    """Each row alone through ``net``: logits whose bits cannot depend on a pass's row count (a
    GEMM's rounding may), so any difference between split and whole runs is the splitting's.
    ``heads=True``: a two-head model (the final head and a probe, weights 1 and 0.5)."""

    def __init__(self, net, heads=False):
        super().__init__()
        self.net = net
        if heads:
            self.head_weights = (1.0, 0.5)
        self.passes = []

    def forward(self, x, labels=None, heads=False):
        self.passes.append(x.shape[0])
        final = torch.cat([self.net(row[None]) for row in x])
        if not heads:
            return final
        return final, torch.cat([self.net(row.flip(-1)[None]) for row in x])


SPLIT_ATTACKS = [
    ("pgd", lambda m, r: attacks.PGD(m, eps=0.1, alpha=0.025, steps=4, rows_per_pass=r)),
    ("pgd-l2", lambda m, r: attacks.PGD(m, eps=0.5, alpha=0.2, steps=4, norm="l2", rows_per_pass=r)),
    ("pgd-kl", lambda m, r: attacks.PGD(m, eps=0.1, alpha=0.025, steps=4, loss="kl", random_start="normal",
                                        rows_per_pass=r)),
    ("fgsm", lambda m, r: attacks.FGSM(m, eps=0.1, rows_per_pass=r)),
    ("cw", lambda m, r: attacks.CW(m, eps=0.1, steps=4, rows_per_pass=r)),
    ("pgd-targeted", lambda m, r: attacks.PGD(m, eps=0.1, alpha=0.025, steps=4, rows_per_pass=r)
     .set_mode_targeted_least_likely()),
    ("es-any-iterate", lambda m, r: attacks.EarlyStopPGD(m, eps=0.1, alpha=0.025, steps=4, tau=0,
                                                         rows_per_pass=r)),
    ("es-masked", lambda m, r: attacks.EarlyStopPGD(m, eps=0.1, alpha=0.025, steps=4, tau=1, compact=False,
                                                    rows_per_pass=r)),
]


@pytest.mark.parametrize("heads", [False, True], ids=["one-head", "two-heads"])
@pytest.mark.parametrize("name,make", SPLIT_ATTACKS, ids=[a[0] for a in SPLIT_ATTACKS])
def test_rows_per_pass_changes_nothing_but_the_passes(name, make, heads, linear_model, digits):
    x, y = digits[0][:50], digits[1][:50]
    model = RowByRow(linear_model, heads=heads)
    torch.manual_seed(0)
    whole = make(model, None).run(x, y)
    assert max(model.passes) == 50  # the default: every row in one pass
    model.passes.clear()
    torch.manual_seed(0)
    split = make(model, 7).run(x, y)
    assert max(model.passes) == 7 and 50 not in model.passes  # 50 rows: passes of 7 and 6
    assert torch.equal(split.x_adv, whole.x_adv)
    for field in ("updates", "checks", "kappa"):
        assert torch.equal(getattr(split, field), getattr(whole, field)), field
    assert (split.bp, split.bp_executed, split.rows_computed) == (whole.bp, whole.bp_executed, whole.rows_computed)
    if name == "es-any-iterate":
        assert 0 < int((whole.updates < 4).sum()) < 50  # some rows left early: the compaction ran


def test_rows_per_pass_checks_and_bad_outputs(linear_model, digits):
    x, y = digits[0][:10], digits[1][:10]
    for bad in (0, -3, 2.5, "64", True):
        with pytest.raises((ValueError, TypeError), match="rows_per_pass"):
            attacks.PGD(linear_model, rows_per_pass=bad)
    with pytest.raises((ValueError, TypeError), match="rows_per_pass"):
        attacks.EarlyStopPGD(linear_model, tau=1, rows_per_pass=0)  # subclasses pass it on
    assert attacks.CW(linear_model, rows_per_pass=3).rows_per_pass == 3
    # A model that returns no logits is still named as such when its output comes in passes.
    with pytest.raises(ValueError, match="model|logits"):
        attacks.PGD(lambda t: t.flatten(1)[:, :10].sum(1), steps=2, rows_per_pass=3)(x, y)
