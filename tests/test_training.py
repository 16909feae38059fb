"""The Trainer's step (exact BP counts), the epoch loop, fastadv.train end to end on digits,
checkpoints and an in-process interrupted-and-resumed run. Tiny data: a few seconds in all."""
import csv
import json
import math

import pytest
import torch

import fastadv
from fastadv import models
from fastadv.data import load_dataset
from fastadv.training import Trainer

K = 10
SMALL = dict(dataset="digits", train_samples=192, eval_samples=64, epochs=2, progress=False,
             verbose=False)
TIMING_KEYS = {"seconds", "images_per_sec", "eval_seconds"}


@pytest.fixture(scope="module")
def batch():
    ds = load_dataset("digits", split="train")
    x, y = ds.float_images()[:40], ds.labels[:40]
    assert 0 < int((y == 0).sum()) < 40  # both kinds of sample below
    return x, y


def make_trainer(method, **kw):
    torch.manual_seed(0)
    model = models.create("small_cnn", num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    kw.setdefault("eps", 0.2)
    kw.setdefault("alpha", 0.05)
    return Trainer(model, opt, method, steps=K, **kw)


# A fresh SmallCNN has a zero last layer: every logit is 0, argmax is class 0 at every check.
# So samples of class 0 are always "correct" and all others always "wrong", and the early-stop
# semantics give exact BP counts (SPEC §2.1: a wrong sample with budget 0 leaves with k updates).
@pytest.mark.parametrize("method,tau,bp_right,bp_wrong,exec_wrong", [
    ("at", None, K, K, K),
    ("gairat", None, K, K, K),
    ("fat", 0, K, 0, 1),
    ("fat", 1, K, 1, 2),
    ("fat", 3, K, 3, 4),
    ("fat-trades", 2, K, 2, 3),
    ("fat-mart", 0, K, 0, 1),
])
def test_train_step_counts_bp_exactly(batch, method, tau, bp_right, bp_wrong, exec_wrong):
    x, y = batch
    tr = make_trainer(method, tau=tau, epochs=2)  # gairat: plain CE until epoch 1 (= 2 // 2)
    before = [p.detach().clone() for p in tr.model.parameters()]
    s = tr.train_step(x, y)
    n0 = int((y == 0).sum())
    n1 = len(y) - n0
    assert s["n"] == len(y)
    assert s["bp"] == n0 * bp_right + n1 * bp_wrong
    assert s["bp_executed"] == n0 * K + n1 * exec_wrong
    assert math.isfinite(float(s["loss"]))
    assert int(s["nat_correct"]) == n0 and int(s["adv_correct"]) == n0  # argmax 0 everywhere
    assert tr.model.training  # the update ran in train mode
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))


def test_standard_training_has_no_attack(batch):
    x, y = batch
    tr = make_trainer("standard")
    s = tr.train_step(x, y)
    assert (s["bp"], s["bp_executed"], s["adv_correct"]) == (0, 0, None)


def test_trades_and_mart_steps_use_the_natural_branch(batch):
    x, y = batch
    for method in ("trades", "mart"):
        tr = make_trainer(method)
        s = tr.train_step(x, y)
        assert s["bp"] == len(y) * K and math.isfinite(float(s["loss"]))
        assert int(s["nat_correct"]) == int((y == 0).sum())


def test_gair_weights_follow_kappa_and_start_epoch(batch, monkeypatch):
    import fastadv.losses as losses
    calls = []
    real = losses.gair_weights

    def spy(kappa, steps, lam, func="tanh"):
        calls.append((kappa.clone(), steps, lam, func))
        return real(kappa, steps, lam, func=func)

    monkeypatch.setattr(losses, "gair_weights", spy)
    x, y = batch
    tr = make_trainer("gairat", lam=-1.0, gair_start=1, epochs=4)
    tr.train_step(x, y)  # epoch 0 < gair_start: plain CE
    assert calls == []
    tr.set_epoch(1)
    assert tr.current_lam == -1.0
    tr.train_step(x, y)
    (kappa, steps, lam, func), = calls
    assert (steps, lam, func) == (K, -1.0, "tanh") and kappa.shape == y.shape
    assert kappa.dtype == torch.int64 and int(kappa.min()) >= 0 and int(kappa.max()) <= K


def test_trainer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="tau"):
        make_trainer("at", tau=1)
    x, y = torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    for method, kw in (("fat", {"tau": "dynamic"}), ("gairat", {})):
        tr = make_trainer(method, **kw)  # the run's length may still come from fit(epochs=)
        with pytest.raises(ValueError, match="epochs"):
            tr.train_step(x, y)  # ... but a step needs it (dynamic τ; gair_start = epochs // 2)
    from fastadv.training.methods import EarlyStopAttack, Method
    no_schedule = Method("fat-fixed", EarlyStopAttack())  # a custom method without dynamic τ
    with pytest.raises(ValueError, match="tau: this method has no dynamic schedule"):
        make_trainer(no_schedule, tau="dynamic", epochs=4)
    with pytest.raises(ValueError, match="beta"):
        make_trainer("fat", beta=6.0)
    with pytest.raises(ValueError, match="eps"):
        make_trainer("at", eps=-1.0)
    with pytest.raises(ValueError, match="method"):
        make_trainer("madry")
    with pytest.raises(TypeError, match="optimizer"):
        Trainer(torch.nn.Linear(2, 2), None, "at")


def test_bf16_autocast_and_channels_last_step(batch):
    x, y = batch
    tr = make_trainer("fat", tau=1, amp="bf16", channels_last=True)
    s = tr.train_step(x, y)
    assert math.isfinite(float(s["loss"])) and s["bp"] > 0


def test_compiled_model_gives_the_eager_step(batch):
    """compile=True (torch.compile, dynamic shapes: compaction shrinks the batch) trains the same
    step as eager: same BP counts, same loss and same updated weights, to float tolerance."""
    x, y = batch
    eager, compiled = make_trainer("fat", tau=1), make_trainer("fat", tau=1, compile=True)
    for tr in (eager, compiled):  # compiled dropout draws its own masks: switch it off
        for m in tr.model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        torch.manual_seed(2)  # a non-zero last layer: real input gradients, real early stops
        torch.nn.init.normal_(tr.model.classifier[-1].weight, std=0.1)
    torch._dynamo.reset()
    torch.manual_seed(1)  # the same random start for both
    a = eager.train_step(x, y)
    torch.manual_seed(1)
    b = compiled.train_step(x, y)
    assert (a["bp"], a["bp_executed"]) == (b["bp"], b["bp_executed"])
    torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-4, atol=1e-5)
    for p, q in zip(eager.model.parameters(), compiled.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def _drop_timing(history):
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


def test_train_end_to_end_writes_history_and_checkpoints(tmp_path):
    out = tmp_path / "at"
    r = fastadv.train(method="at", out_dir=str(out), **SMALL)
    assert len(r.history) == 2
    keys = {"epoch", "lr", "tau", "lam", "train_loss", "train_nat_acc", "train_adv_acc",
            "test_nat_acc", "test_pgd20_acc", "bp_avg", "bp_executed_avg", "bp_saved",
            "bp_executed_saved", "seconds", "images_per_sec"}
    for i, row in enumerate(r.history):
        assert keys <= set(row)
        assert row["epoch"] == i + 1
        assert row["bp_avg"] == 10.0 and row["bp_executed_avg"] == 10.0  # PGD-10 = 10.00 exactly
        assert row["bp_saved"] == 0.0
        assert 0 <= row["test_pgd20_acc"] <= row["test_nat_acc"] + 1e-9 <= 100 + 1e-9
        assert row["images_per_sec"] > 0
    assert (json.loads((out / "history.json").read_text()) == r.history)
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(x["epoch"]) for x in rows] == [1, 2]
    assert float(rows[1]["bp_avg"]) == 10.0
    ck = torch.load(out / "last.pt", weights_only=True)  # plain types only
    assert ck["epoch"] == 2 and ck["history"] == r.history
    assert set(ck["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert ck["meta"]["model"] == "small_cnn" and ck["config"]["method"] == "at"
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["best_pgd20"] == max(h["test_pgd20_acc"] for h in r.history)
    assert r.best_checkpoint == str(out / "best.pt")
    # The checkpoint holds the trained weights.
    sd = r.model.state_dict()
    assert all(torch.equal(sd[k].cpu(), ck["model"][k]) for k in sd)


def test_fat_trains_with_fewer_bps_than_at(tmp_path):
    r = fastadv.train(method="fat", tau=0, out_dir=False, **SMALL)
    for row in r.history:
        assert row["tau"] == 0
        assert row["bp_avg"] < 10.0 and row["bp_executed_avg"] <= row["bp_avg"] + 1 + 1e-9
        assert row["bp_saved"] == pytest.approx(100 * (1 - row["bp_avg"] / 10))
    dyn = fastadv.train(method="fat", tau="dynamic", out_dir=False, **dict(SMALL, epochs=3))
    # 50/90 of 120 scaled to 3 epochs: boundaries 1 and 2, "epoch <= b" as in the official code.
    assert [row["tau"] for row in dyn.history] == [0, 0, 1]


def test_gairat_reweights_from_half_the_epochs():
    r = fastadv.train(method="gairat", out_dir=False, **dict(SMALL, epochs=2, eval_every=0))
    assert [row["lam"] for row in r.history] == [None, -1.0]
    assert all(row["test_pgd20_acc"] is None for row in r.history[:-1])  # eval_every=0: last only


def test_interrupted_run_resumes_to_the_same_history(tmp_path, monkeypatch):
    opts = dict(SMALL, method="fat", tau=1, epochs=3)
    ref = fastadv.train(out_dir=str(tmp_path / "ref"), **opts)

    calls = {"n": 0}
    real_step = Trainer.train_step

    def dying_step(self, x, y):
        calls["n"] += 1
        if calls["n"] == 4:  # 2 batches per epoch: the middle of the second epoch
            raise KeyboardInterrupt
        return real_step(self, x, y)

    monkeypatch.setattr(Trainer, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        fastadv.train(out_dir=str(tmp_path / "cut"), **opts)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 1
    torch.manual_seed(12345)  # the resumed run must not depend on the RNG state it starts in
    resumed = fastadv.train(out_dir=str(tmp_path / "cut"), resume=True, **opts)
    assert _drop_timing(resumed.history) == _drop_timing(ref.history)
    ref_w, res_w = ref.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(ref_w[k], res_w[k]) for k in ref_w)


def test_train_nat_acc_is_optional_and_measured_alike_for_every_method(batch):
    """The clean accuracy column: one eval-mode forward after the update, for every method, or
    none at all (it costs about a tenth of a FAT τ = 1 step)."""
    x, y = batch
    for method in ("standard", "fat", "trades"):
        on, off = make_trainer(method), make_trainer(method, train_nat_acc=False)
        off.model.load_state_dict(on.model.state_dict())
        torch.manual_seed(0)
        s_on = on.train_step(x, y)
        torch.manual_seed(0)
        s_off = off.train_step(x, y)
        assert s_off["nat_correct"] is None and float(s_on["loss"]) == float(s_off["loss"])
        on.model.eval()
        with torch.no_grad():  # after the update, in eval mode
            assert int(s_on["nat_correct"]) == int((on.model(x).argmax(1) == y).sum())
        assert all(torch.equal(a, b) for a, b in zip(on.model.parameters(), off.model.parameters()))
        row = off.train_epoch([(x, y)])
        assert row["train_nat_acc"] is None
