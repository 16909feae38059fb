"""CAT (issue #13 item 4): CurriculumPGD against per-chunk PGD (the reference), the curriculum's
k, rollback and resume."""
import pytest
import torch
import torch.nn as nn

import fastadv
from fastadv import attacks
from fastadv.attacks.curriculum import curriculum_budgets
from fastadv.training.methods import CurriculumAttack, Method
from fastadv.training.objectives import CE

TIMING = {"seconds", "images_per_sec", "eval_seconds"}


@pytest.mark.parametrize("n,k,expected", [
    (9, 2, [0, 0, 0, 1, 1, 1, 2, 2, 2]), (10, 2, [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]),
    (3, 5, [5, 5, 5]), (4, 0, [0, 0, 0, 0]), (0, 3, [])])
def test_budgets_follow_the_official_split(n, k, expected):
    assert curriculum_budgets(n, k).tolist() == expected


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.Tanh(), nn.Linear(10, 10)).double()


@pytest.mark.parametrize("k", [1, 3, 4])
def test_one_call_equals_pgd_i_on_each_chunk(k):
    """The reference: chunk i alone through PGD with i steps, its α, and the same start."""
    model = _model()
    n = 11
    x = torch.rand(n, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 10, (n,))
    atk = attacks.CurriculumPGD(model, eps=0.1, k=k, random_start=None)
    torch.manual_seed(5)
    factors = atk.chunk_factors()
    torch.manual_seed(5)
    res = atk.run(x, y)
    budget = curriculum_budgets(n, k)
    assert res.updates.tolist() == budget.tolist() and res.bp == int(budget.sum())
    assert res.rows_computed == int(budget.sum())  # no row computed past its budget
    for i in range(k + 1):
        rows = budget == i
        if not rows.any():
            continue
        if i == 0:
            assert torch.equal(res.x_adv[rows], x[rows])
            continue
        ref = attacks.PGD(model, eps=0.1, alpha=float(0.1 * factors[i]), steps=i,
                          random_start=None)(x[rows], y[rows])
        torch.testing.assert_close(res.x_adv[rows], ref, rtol=0, atol=1e-12)


def test_targeted_chunks_equal_targeted_pgd_i():
    model = _model()
    n, k = 11, 3
    x = torch.rand(n, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 10, (n,))
    targets = (y + 1 + torch.arange(n) % 9) % 10
    atk = attacks.CurriculumPGD(model, eps=0.1, k=k, random_start=None)
    torch.manual_seed(5)
    factors = atk.chunk_factors()
    torch.manual_seed(5)
    res = atk.run(x, y, targets=targets)
    budget = curriculum_budgets(n, k)
    for i in range(1, k + 1):
        rows = budget == i
        ref = attacks.PGD(model, eps=0.1, alpha=float(0.1 * factors[i]), steps=i,
                          random_start=None).run(x[rows], y[rows], targets=targets[rows])
        torch.testing.assert_close(res.x_adv[rows], ref.x_adv, rtol=0, atol=1e-12)
        # κ: the checks not at the target, as PGD counts them on the chunk alone
        assert res.kappa[rows].tolist() == ref.kappa.tolist()


def test_steps_follow_the_official_schedule():
    atk = attacks.CurriculumPGD(_model(), eps=0.3, k=12)
    torch.manual_seed(0)
    f = atk.chunk_factors()
    i = torch.arange(1, 13, dtype=torch.float64)
    assert f[0] == 0
    lo, hi = torch.minimum(torch.ones(12), 10 / i), torch.maximum(torch.ones(12), 10 / i)
    # α_i / ε = 2/i · U(1, 10/i): between 2/i·min(1, 10/i) and 2/i·max(1, 10/i).
    assert bool(((f[1:] >= 2 / i * lo) & (f[1:] <= 2 / i * hi)).all())


def _cat(window=1, train_acc=0.0):
    return Method("cat-fast", CurriculumAttack(window=window, train_acc=train_acc), CE())


def test_the_curriculum_rolls_back_and_raises_k(tmp_path):
    """window = 1 and no training-accuracy bar: k rises after every epoch whose validation
    accuracy does not beat the best of its k, and the model returns to that best epoch."""
    common = dict(dataset="digits", train_samples=400, eval_samples=32, batch_size=64, steps=3,
                  progress=False, verbose=False, lr_schedule="constant", lr=0.2)
    r = fastadv.train(_cat(), epochs=8, out_dir=str(tmp_path / "full"), **common)
    rows = r.history
    ks = [row["cat_k"] for row in rows]
    assert ks[0] == 0 and ks == sorted(ks) and ks[-1] > 0, ks
    for prev, row in zip(rows, rows[1:]):
        assert row["cat_k"] == prev["cat_k_next"]
    backs = [row for row in rows if row["rolled_back_to"] is not None]
    assert backs, "no rollback happened: the test shows nothing"
    for row in backs:
        assert row["cat_k_next"] == row["cat_k"] + 1 and row["rolled_back_to"] < row["epoch"]
    # BPs: chunk i of every batch took i steps.
    assert rows[0]["bp_avg"] == 0.0 and all(row["bp_avg"] <= row["cat_k"] for row in rows)
    # An interrupted run resumes to the same history and weights (the best-of-k model is in the
    # checkpoint).
    fastadv.train(_cat(), epochs=4, out_dir=str(tmp_path / "part"), **common)
    resumed = fastadv.train(_cat(), epochs=8, out_dir=str(tmp_path / "part"), resume=True,
                            **{k: v for k, v in common.items() if k not in ("lr_schedule", "lr")})
    strip = lambda h: [{k: v for k, v in x.items() if k not in TIMING} for x in h]  # noqa: E731
    assert strip(resumed.history) == strip(rows)
    for a, b in zip(resumed.model.state_dict().values(), r.model.state_dict().values()):
        assert torch.equal(a, b)


def test_rollback_restores_the_best_model_and_optimizer():
    from fastadv import models
    from fastadv.training import Trainer
    torch.manual_seed(0)
    model = models.create("small_cnn", num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tr = Trainer(model, opt, "cat", eps=0.2, alpha=0.05, steps=3, epochs=2)
    tr.train_step(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    snap = tr.snapshot()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr.train_step(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    opt.param_groups[0]["lr"] = 0.01  # a schedule moved on since the snapshot
    tr.restore(snap)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert opt.param_groups[0]["lr"] == 0.01  # the rollback keeps today's lr
    mom = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    assert all(torch.equal(m, snap["optimizer"]["state"][i]["momentum_buffer"])
               for i, m in enumerate(mom))


def test_cat_needs_validation_data():
    from fastadv import models
    from fastadv.training import Trainer
    model = models.create("small_cnn", num_classes=10, in_channels=1)
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "cat", eps=0.2, alpha=0.05,
                 steps=2, epochs=1)
    with pytest.raises(ValueError, match="val_data: cat follows the validation"):
        tr.fit([(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))])
