"""SAMMD and the MMD statistics (issue #14): the estimators against their definitions, the wild
bootstrap's AR(1) process, the kernel's closed-form gradient against autograd, the test's
calibration (natural vs natural) and power, and ``fastadv detect``."""
import json
import math

import numpy as np
import pytest
import torch

from fastadv import models
from fastadv.detect import GaussianMMD, SAMMD, detection_trials, penultimate_features
from fastadv.detect.mmd import (ar1_multipliers, mmd2_and_variance, permutation_test, sq_dists,
                                wild_bootstrap)


def _gram(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2 * n, 3, generator=g, dtype=torch.float64)
    return torch.exp(-sq_dists(z, z) / 2.0)


def test_mmd2_and_variance_follow_their_definitions():
    n = 6
    k = _gram(n)
    kx, ky, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    mmd2, var = mmd2_and_variance(kx, ky, kxy)
    h = [[kx[i, j] + ky[i, j] - kxy[i, j] - kxy[j, i] for j in range(n)] for i in range(n)]
    want = sum(h[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    assert float(mmd2) == pytest.approx(float(want), abs=1e-14)
    rows = [sum(h[i]) for i in range(n)]
    total = sum(rows)
    want_var = 4 * sum(r * r for r in rows) / n ** 3 - 4 * total ** 2 / n ** 4
    assert float(var) == pytest.approx(float(want_var), abs=1e-14)


def test_permutation_test_equals_the_loop_over_relabellings():
    n, perms = 7, 9
    k = _gram(n, seed=1)
    res = permutation_test(k, n, perms, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)

    def mmd2(p):
        return float(mmd2_and_variance(k[p[:n]][:, p[:n]], k[p[n:]][:, p[n:]], k[p[:n]][:, p[n:]])[0])

    stat = mmd2(torch.arange(2 * n))
    null = [mmd2(torch.randperm(2 * n, generator=g)) for _ in range(perms)]
    assert res.statistic == pytest.approx(stat, abs=1e-14)
    assert res.p_value == pytest.approx(sum(v > stat for v in null) / perms)


def test_ar1_multipliers_are_the_centred_recursion():
    from scipy.signal import lfilter
    for ell in (0.2, 5.0):
        w = ar1_multipliers(50, 4, ell, torch.Generator().manual_seed(0))
        a = math.exp(-1 / ell)
        e = torch.randn(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        ref = lfilter([1], [1, -a], e.numpy() * math.sqrt(1 - a * a), axis=0)
        ref = ref - ref.mean(0, keepdims=True)
        np.testing.assert_allclose(w.numpy(), ref, rtol=0, atol=1e-12)


def test_wild_bootstrap_null_draws_are_quadratic_forms():
    n = 8
    k = _gram(n, seed=2)
    h = k[:n, :n] + k[n:, n:] - k[:n, n:] - k[n:, :n]
    res = wild_bootstrap(h, 5, 0.2, torch.Generator().manual_seed(4))
    w = ar1_multipliers(n, 5, 0.2, torch.Generator().manual_seed(4))
    null = [float(w[:, b] @ h @ w[:, b]) / n ** 2 for b in range(5)]
    assert res.statistic == pytest.approx(float(h.mean()))
    assert res.p_value == pytest.approx(sum(v > res.statistic for v in null) / 5)


@pytest.mark.parametrize("c", [-6.0, 0.3])
def test_kernel_training_gradient_is_autograds(c):
    torch.manual_seed(0)
    n = 25
    fa, fb = torch.randn(n, 4, dtype=torch.float64), torch.randn(n, 4, dtype=torch.float64) + 0.5
    ia, ib = torch.rand(n, 9, dtype=torch.float64), torch.rand(n, 9, dtype=torch.float64)
    d = SAMMD._distances(fa, ia, fb, ib)
    params = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (3.0, 1.7, c)]
    eps = torch.sigmoid(params[2])  # the official kernel, written as the paper does
    official = (1 - eps) * torch.exp(-d[0] / params[0] - d[1] / params[1] ** 2) + \
        eps * torch.exp(-d[1] / params[1] ** 2)
    torch.testing.assert_close(SAMMD._kernel(d, *params), official, rtol=1e-12, atol=0)
    mmd2, var = mmd2_and_variance(*SAMMD._kernel(d, *params).unbind(0))
    objective = -(mmd2 + 1e-8) / torch.sqrt(var + 1e-8)
    want = torch.autograd.grad(objective, params)
    got_obj, got = SAMMD._objective_and_grad(d, *(p.detach() for p in params))
    assert float(got_obj) == pytest.approx(float(objective.detach()), rel=1e-12)
    for a, b in zip(got, want):
        assert float(a) == pytest.approx(float(b), rel=1e-9, abs=1e-14)


def test_penultimate_features_feed_the_last_linear_layer():
    torch.manual_seed(0)
    model = models.create("small_cnn", in_channels=1).eval()
    x = torch.rand(5, 1, 8, 8)
    f = penultimate_features(model, x, batch_size=2)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.testing.assert_close(last(f), model(x))


def _features(x):  # a fixed "classifier feature": the per-row mean and spread
    flat = x.reshape(x.shape[0], -1)
    return torch.stack([flat.mean(1), flat.std(1)], 1)


def test_sammd_is_calibrated_on_same_distribution_data_and_detects_a_shift():
    g = torch.Generator().manual_seed(0)
    nat = torch.rand(1200, 1, 4, 4, generator=g)
    shifted = (torch.rand(400, 1, 4, 4, generator=g) * 0.8 + 0.2)  # a changed distribution
    res = detection_trials({"SAMMD": lambda: SAMMD(features=_features, steps=30, seed=1),
                            "MMD-G": lambda: GaussianMMD(seed=1)},
                           nat, shifted, n=100, trials=2, test_sets=40, seed=0, progress=False)
    for name, r in res.items():
        assert r["type_i"] <= 0.15, (name, r)      # α = 0.05 (40 sets: sampling spread)
        assert r["power"] >= 0.9, (name, r)
    assert len(res["SAMMD"]["power_per_trial"]) == 2


def test_fit_then_test_api_and_errors():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(30, 1, 3, 3, generator=g), torch.rand(30, 1, 3, 3, generator=g)
    det = SAMMD(features=_features, steps=5)
    with pytest.raises(RuntimeError, match="fit"):
        det.test(a, b)
    det.fit(a, b)
    assert det.sigma_q == pytest.approx(2 * 9, rel=0.01) and det.epsilon < 1e-8
    assert len(det.history) == 5
    stat, p = det.test(a, b)
    assert 0 <= p <= 1 and math.isfinite(stat)
    with pytest.raises(ValueError, match="same shape"):
        det.test(a, b[:20])
    with pytest.raises(ValueError, match="at least 2"):
        det.test(a[:1], b[:1])
    with pytest.raises(ValueError, match="model/features"):
        SAMMD()
    with pytest.raises(ValueError, match="steps"):
        SAMMD(features=_features, steps=-1)
    with pytest.raises(ValueError, match="natural: 30 images"):
        detection_trials({"g": GaussianMMD}, a, b, n=10)


def test_cli_detect_writes_its_table(tmp_path, capsys):
    from fastadv.cli import main
    run = tmp_path / "run"
    assert main(["train", "--method", "standard", "--dataset", "digits", "--train-samples", "256",
                 "--eval-samples", "32", "--epochs", "1", "--no-progress", "--out-dir", str(run)]) == 0
    out = tmp_path / "detect.json"
    assert main(["detect", str(run / "last.pt"), "--attack", "fgsm", "--n", "20", "--test-sets",
                 "10", "--fit-steps", "10", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "SAMMD" in printed and "MMD-G" in printed and "power" in printed
    res = json.loads(out.read_text())
    assert res["n"] == 20 and set(res["results"]) == {"SAMMD", "MMD-G"}
    assert all(0 <= r["power"] <= 1 and 0 <= r["type_i"] <= 1 for r in res["results"].values())
    assert main(["detect", str(run / "last.pt"), "--n", "1"]) == 2
    assert "--n: must be >= 2" in capsys.readouterr().err
    assert main(["detect", str(run / "last.pt"), "--attack", "pgd+", "--n", "20"]) == 2
    assert "no single adversarial example" in capsys.readouterr().err


def test_each_feature_source_runs_once_per_pool_and_sigma_is_refitted():
    calls = {"f": 0, "g": 0}

    def f(x):
        calls["f"] += 1
        return _features(x)

    def g(x):
        calls["g"] += 1
        return _features(x) * 2

    gen = torch.Generator().manual_seed(0)
    nat, adv = torch.rand(80, 1, 3, 3, generator=gen), torch.rand(40, 1, 3, 3, generator=gen)
    detection_trials({"f": lambda: SAMMD(features=f, steps=2), "g": lambda: SAMMD(features=g, steps=2)},
                     nat, adv, n=10, trials=2, test_sets=3, progress=False)
    assert calls == {"f": 2, "g": 2}  # natural and adversarial pool, once each
    with pytest.raises(TypeError, match="natural must be a floating-point"):
        detection_trials({"g": GaussianMMD}, (nat * 255).to(torch.uint8), adv, n=10)
    with pytest.raises(ValueError, match="differ in shape"):
        detection_trials({"g": GaussianMMD}, nat, adv.reshape(40, 9, 1, 1), n=10)
    mmd = GaussianMMD()
    first = mmd.fit(nat[:10], adv[:10]).sigma
    assert mmd.fit(nat[:10] * 3, adv[:10]).sigma != first  # each fit takes its own median
    assert GaussianMMD(sigma=2.0).fit(nat[:10], adv[:10]).sigma == 2.0
