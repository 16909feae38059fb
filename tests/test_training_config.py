"""Options, presets, schedules and objectives of the trainer (no training here: milliseconds)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastadv.training.config import METHODS, resolve_config
from fastadv.training.objectives import ce_loss, mart_loss, trades_loss
from fastadv.training.methods import lam_at, tau_at
from fastadv.training.schedules import lr_at

# ------------------------------------------------------------------------------ options


def test_digits_defaults():
    cfg = resolve_config("fat", tau=1)
    assert (cfg.dataset, cfg.model, cfg.eps, cfg.alpha, cfg.steps) == ("digits", "small_cnn", 0.2, 0.05, 10)
    assert (cfg.tau, cfg.omega, cfg.beta, cfg.lam) == (1, 0.0, None, None)
    assert cfg.momentum == 0.9 and cfg.weight_decay == 5e-4


def test_cifar_defaults_and_method_defaults():
    cfg = resolve_config("trades", dataset="cifar10")
    assert cfg.model == "preact_resnet18" and cfg.eps == pytest.approx(8 / 255)
    assert cfg.alpha == pytest.approx(2 / 255) and cfg.lr == 0.1 and cfg.batch_size == 128
    assert cfg.beta == 6.0 and cfg.tau is None
    g = resolve_config("gairat", epochs=10)
    assert (g.lam, g.weight_func, g.gair_start) == (-1.0, "tanh", 5)
    gf = resolve_config("gair-fat", epochs=7)
    assert (gf.lam, gf.gair_start, gf.tau) == (0.0, 3, 1)
    assert resolve_config("fat").tau == 1  # the documented default τ


def test_paper_presets():
    fat = resolve_config("fat", dataset="cifar10", preset="paper")
    assert (fat.model, fat.epochs, fat.eps, fat.alpha) == ("wrn-32-10", 120, 0.031, 0.007)
    assert (fat.weight_decay, fat.omega, fat.tau) == (2e-4, 0.001, "dynamic")
    ft = resolve_config("fat-trades", dataset="cifar10", preset="paper")
    assert (ft.model, ft.epochs, ft.beta, ft.tau) == ("wrn-34-10", 85, 6.0, "dynamic")
    fm = resolve_config("fat-mart", dataset="cifar10", preset="paper")
    assert fm.epochs == 90
    # Only FAT.py explores with ω = 0.001; FAT_for_TRADES/MART and GAIR-FAT use 0. The two FAT
    # variants evaluate PGD-20 / C&W∞ with step 0.003.
    gf = resolve_config("gair-fat", dataset="cifar10", preset="paper")
    assert (ft.omega, fm.omega, gf.omega) == (0.0, 0.0, 0.0)
    assert (ft.eval_alpha, fm.eval_alpha, fat.eval_alpha, gf.eval_alpha) == (0.003, 0.003, None, None)
    g = resolve_config("gairat", dataset="cifar10", preset="paper")
    assert (g.epochs, g.gair_start, g.lam) == (120, 60, -1.0)
    # An explicit option beats the preset.
    assert resolve_config("fat", preset="paper", dataset="cifar10", tau=2, epochs=3).tau == 2


@pytest.mark.parametrize("method,options,name", [
    ("pgd-at", {}, "method"),
    ("at", {"eps": -0.1}, "eps"),
    ("at", {"eps": float("nan")}, "eps"),
    ("at", {"tau": 1}, "tau"),
    ("fat", {"tau": -1}, "tau"),
    ("fat", {"tau": "often"}, "tau"),
    ("fat", {"beta": 6.0}, "beta"),
    ("at", {"lam": -1.0}, "lam"),
    ("trades", {"omega": 0.001}, "omega"),
    ("at", {"dataset": "imagenet"}, "dataset"),
    ("at", {"epochs": 0}, "epochs"),
    ("at", {"steps": 2.5}, "steps"),
    ("at", {"lr": 0.0}, "lr"),
    ("at", {"amp": "fp8"}, "amp"),
    ("at", {"lr_schedule": "sometimes"}, "lr_schedule"),
    ("at", {"preset": "fast"}, "preset"),
    ("gairat", {"weight_func": "relu"}, "weight_func"),
    ("at", {"device": "cuda:0"} if not torch.cuda.is_available() else {"device": "tpu"}, "device"),
])
def test_bad_options_name_the_option(method, options, name):
    with pytest.raises((ValueError, TypeError), match=name):
        resolve_config(method, **options)


def test_unknown_option_suggests_a_close_name():
    with pytest.raises(TypeError, match=r"'epoch'.*did you mean 'epochs'"):
        resolve_config("at", epoch=3)


def test_missing_dataset_fails_before_training(tmp_path):
    import fastadv
    from fastadv.data import DownloadError
    out = tmp_path / "run"
    with pytest.raises(DownloadError, match="mnist"):
        fastadv.train(method="at", dataset="mnist", data_dir=str(tmp_path / "nothing"),
                      download=False, out_dir=str(out), verbose=False)
    assert not out.exists()  # nothing was trained or written

# ------------------------------------------------------------------------------ schedules


def test_dynamic_tau_official_at_paper_length():
    # FAT's code: tau = 0 if epoch <= 50, 1 if epoch <= 90, else 2 (epochs 0-based, 120 of them).
    got = [tau_at("fat", "dynamic", e, 120) for e in range(120)]
    assert got == [0] * 51 + [1] * 40 + [2] * 29
    ft = [tau_at("fat-trades", "dynamic", e, 85) for e in (0, 30, 31, 50, 51, 70, 71, 84)]
    assert ft == [0, 0, 1, 1, 2, 2, 3, 3]
    fm = [tau_at("fat-mart", "dynamic", e, 90) for e in (20, 21, 41, 61, 81)]
    assert fm == [0, 1, 2, 3, 4]
    gf = [tau_at("gair-fat", "dynamic", e, 120) for e in (40, 41, 70, 71)]
    assert gf == [0, 3, 3, 6]


def test_dynamic_tau_scaled_to_the_epoch_count():
    # 12 epochs: FAT's boundaries 50/90 of 120 become 5 and 9.
    assert [tau_at("fat", "dynamic", e, 12) for e in range(12)] == [0] * 6 + [1] * 4 + [2] * 2
    assert tau_at("fat", 3, 7, 12) == 3 and tau_at("at", None, 3, 12) is None


def test_lr_schedules():
    assert [lr_at(e, 0.1, 8, "piecewise") for e in (0, 3, 4, 5, 6, 7)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    fat = [lr_at(e, 0.1, 120, "fat") for e in (59, 60, 89, 90, 109, 110)]
    assert fat == pytest.approx([0.1, 0.01, 0.01, 0.001, 0.001, 0.0005])
    assert lr_at(0, 0.1, 1, "piecewise") == 0.1  # a 1-epoch run is not decayed
    assert [lr_at(e, 0.1, 3, "piecewise") for e in range(3)] == pytest.approx([0.1, 0.1, 0.01])
    assert lr_at(5, 0.2, 10, "cosine") == pytest.approx(0.1)
    assert lr_at(9, 0.2, 10, "constant") == 0.2
    assert lr_at(75, 0.01, 90, {"milestones": [75 / 90], "factors": [0.1]}) == pytest.approx(0.001)
    assert lr_at(74, 0.01, 90, {"milestones": [75 / 90], "factors": [0.1]}) == pytest.approx(0.01)


def test_gair_lambda_starts_at_the_start_epoch():
    assert [lam_at("gairat", -1.0, e, 3) for e in range(5)] == [None, None, None, -1.0, -1.0]
    assert lam_at("gair-fat", 0.0, 9, 0) == 0.0 and lam_at("fat", None, 9, None) is None


def test_method_table_matches_the_papers():
    from fastadv.training.methods import EarlyStopAttack, GAPGDAttack
    from fastadv.training.objectives import GairCE, Mart, Trades
    for m in ("trades", "fat-trades"):
        atk = METHODS[m].attack
        assert (atk.loss, atk.random_start) == ("kl", "normal")
        assert type(METHODS[m].objective) is Trades
    # MART and FAT-MART: CE from x + 0.001·N(0, I), as YisenWang/MART mart.py and FAT_for_MART.py
    # (issue #13 corrects SPEC §3 and an earlier "uniform").
    for m in ("mart", "fat-mart"):
        atk = METHODS[m].attack
        assert (atk.loss, atk.random_start) == ("ce", "normal")
        assert type(METHODS[m].objective) is Mart
    assert type(METHODS["gairat"].attack) is GAPGDAttack
    assert isinstance(METHODS["gair-fat"].attack, EarlyStopAttack)
    assert {m for m in METHODS if isinstance(METHODS[m].objective, GairCE)} == {"gairat", "gair-fat"}
    assert {m for m, s in METHODS.items() if "tau" in s.options} == {"fat", "fat-trades", "fat-mart",
                                                                    "gair-fat"}
    assert METHODS["standard"].attack is None and METHODS["at"].attack.random_start == "uniform"

# ------------------------------------------------------------------------------ objectives


def test_ce_loss_weights():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    ce = F.cross_entropy(logits, y, reduction="none")
    assert ce_loss(logits, y) == pytest.approx(float(ce.mean()))
    assert ce_loss(logits, y, torch.ones(2)) == pytest.approx(float(ce.mean()))
    assert ce_loss(logits, y, torch.tensor([2.0, 0.0])) == pytest.approx(float(ce[0]))
    with pytest.raises(ValueError, match="weights"):
        ce_loss(logits, y, torch.ones(3))


def test_trades_loss_is_the_official_formula_and_trains_both_branches():
    torch.manual_seed(0)
    nat = torch.randn(5, 4, requires_grad=True)
    adv = torch.randn(5, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0])
    got = trades_loss(nat, adv, y, beta=6.0)
    # yaodongyu/TRADES: CE + beta * KLDivLoss(size_average=False)(log_softmax(adv), softmax(nat)) / N
    p, q = F.softmax(nat, 1), F.softmax(adv, 1)
    kl = (p * (p.log() - q.log())).sum() / 5
    assert float(got.detach()) == pytest.approx(float((F.cross_entropy(nat, y) + 6.0 * kl).detach()), rel=1e-6)
    got.backward()
    assert nat.grad.abs().sum() > 0 and adv.grad.abs().sum() > 0
    same = torch.randn(3, 4)
    assert float(trades_loss(same, same, y[:3], 6.0)) == pytest.approx(
        float(F.cross_entropy(same, y[:3])), abs=1e-6)


def test_mart_loss_by_hand():
    # Two samples, 3 classes. Identical natural/adversarial logits: the KL term vanishes and the
    # loss is CE + mean(-log(1.0001 - p_max_wrong)) with the most likely wrong class.
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 2])
    p = F.softmax(logits, 1)
    ce = -(p[0, 0].log() + p[1, 2].log()) / 2
    wrong = (-torch.log(1.0001 - p[0, 1]) - torch.log(1.0001 - p[1, 1])) / 2  # top wrong: 1 and 1
    assert float(mart_loss(logits, logits, y, 6.0)) == pytest.approx(float(ce + wrong), rel=1e-5)
    # The KL term is weighted by (1 - p_y(nat)).
    adv = torch.tensor([[0.0, 2.0, 0.0], [0.0, 3.0, 1.0]])
    pa = F.softmax(adv, 1)
    kl0 = (p[0] * (p[0].log() - (pa[0] + 1e-12).log())).sum()
    base = mart_loss(adv, adv, y, 6.0)  # same adversarial part, zero KL
    full = mart_loss(logits, adv, y, 6.0)
    assert float(full - base) == pytest.approx(float(6.0 * kl0 * (1.0000001 - p[0, 0]) / 2), rel=1e-4)


def test_gair_weights_never_nan_when_every_weight_underflows():
    from fastadv.losses import gair_weights
    kappa = torch.tensor([0, 2, 5, 10])
    for func in ("tanh", "sigmoid"):
        for lam in (-40.0, -float("inf")):
            w = gair_weights(kappa, 10, lam, func)
            assert bool(torch.isfinite(w).all()) and float(w.sum()) == pytest.approx(4.0)
            assert bool((w[:-1] >= w[1:]).all())  # fewer steps resisted: a larger weight
        # The limit: at λ = −40 the weights already equal the λ → −∞ ones.
        assert torch.allclose(gair_weights(kappa, 10, -40.0, func),
                              gair_weights(kappa, 10, -float("inf"), func))
    # Where nothing underflows, the official normalisation, bit for bit.
    z = -1.0 + 5.0 * (5 - kappa.float()) / 5
    w = (1.0 + torch.tanh(z)) / 2.0
    assert torch.equal(gair_weights(kappa, 10, -1.0), w * (4 / w.sum()))


def test_evaluation_step_override():
    import fastadv
    from fastadv.evaluation import parse_attack
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    seen = []
    real = fastadv.attacks.PGD.__init__

    def spy(self, *a, **k):
        seen.append(k.get("alpha"))
        real(self, *a, **k)
    import unittest.mock as mock
    with mock.patch.object(fastadv.attacks.PGD, "__init__", spy):
        r = fastadv.evaluate(model, (x, y), attacks=("fgsm", "pgd3", "cw3"), eps=0.1, alpha=0.003,
                             verbose=False)
    assert seen == [0.1, 0.003, 0.003] and r["alpha"] == 0.003  # FGSM keeps α = ε
    assert parse_attack("pgd20").alpha(0.1) == pytest.approx(0.025)  # the default: ε/4
