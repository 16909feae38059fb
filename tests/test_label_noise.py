"""NoiLIn (issue #13 item 5): label-noise injection, its rate schedule, attacks that judge clean
labels while attacking noisy ones, and noilin-at / noilin-trades end to end (tiny digits runs)."""
import pytest
import torch

import fastadv
from fastadv import attacks, models
from fastadv.training import Trainer
from fastadv.training.label_noise import LabelNoise, inject_label_noise
from fastadv.training.methods import METHODS, EarlyStopAttack, Method
from fastadv.training.objectives import CE

TIMING = {"seconds", "images_per_sec", "eval_seconds"}


# ----------------------------------------------------------------------------- injection
def test_injection_rates_and_kinds():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (20000,), generator=g)
    assert torch.equal(inject_label_noise(y, 0.0, 10, generator=g), y)
    sym = inject_label_noise(y, 1.0, 10, "symmetric", generator=g)
    assert bool((sym != y).all())  # always another class
    # ... each of the 9 others about equally often (1/9 = 11.1 %).
    shift = (sym - y) % 10
    freq = torch.bincount(shift, minlength=10)[1:].double() / len(y)
    assert float(freq.min()) > 0.10 and float(freq.max()) < 0.122
    assert torch.equal(inject_label_noise(y, 1.0, 10, "pairflip", generator=g), (y + 1) % 10)
    part = inject_label_noise(y, 0.3, 10, generator=g)
    assert abs(float((part != y).double().mean()) - 0.3) < 0.015
    with pytest.raises(ValueError, match="kind"):
        inject_label_noise(y, 0.1, 10, "asymmetric")
    with pytest.raises(ValueError, match="rate"):
        inject_label_noise(y, 1.5, 10)


def test_the_rate_grows_when_validation_falls_behind_ten_epochs_earlier():
    ln = LabelNoise(max_rate=0.6)
    s = {"noise_min": 0.05, "noise_max": 0.6, "noise_type": "symmetric"}
    rising = [float(e) for e in range(30)]
    assert ln.rate_at(s, rising, 30, 30) == 0.05  # never lower than 10 epochs before
    # Epochs 0-9 fill the window; epoch 10 (5.0) is below epoch 0 (9.0): x1.05 for epoch 11 on.
    accs = [9.0] * 10 + [5.0, 9.5, 4.0]
    assert [ln.rate_at(s, accs, e, 100) for e in (10, 11, 12, 13)] == pytest.approx(
        [0.05, 0.05 * 1.05, 0.05 * 1.05, 0.05 * 1.05 ** 2])
    falling = [100.0 - e for e in range(200)]
    assert ln.rate_at(s, falling, 200, 200) == 0.6  # capped at noise_max
    # The official cap of noise_max / 2 while epoch <= 90 of 120 (scaled to the run).
    assert ln.rate_at(s, falling, 91, 120) == 0.3
    assert ln.rate_at(s, falling, 92, 120) == pytest.approx(min(0.3 * 1.05, 0.6))
    # A one-epoch window grows at once: the cap (0.3 until epoch 9 of 12) is what holds it.
    fast = LabelNoise(max_rate=0.6, growth=1.0, window=1)
    assert fast.rate_at(s, falling, 10, 12) == pytest.approx(0.3)  # 0.05·2^9 would be 25.6
    assert fast.rate_at(s, falling, 11, 12) == pytest.approx(0.6)  # epoch 10: the cap is off
    with pytest.raises(ValueError, match="epochs: NoiLIn's rate is capped"):
        ln.rate_at(s, falling, 3, None)
    with pytest.raises(ValueError, match="noise_min: 0.5 is above noise_max=0.4"):
        fastadv.training.config.resolve_config("noilin-trades", noise_min=0.5)


# ----------------------------------------------------------------------------- attacks
def _zero_model():
    """A fresh SmallCNN: its last layer is zero, so every prediction is class 0."""
    torch.manual_seed(0)
    return models.create("small_cnn", num_classes=10, in_channels=1)


def test_check_labels_judge_the_stop_and_kappa_while_the_loss_uses_y():
    model = _zero_model()
    x = torch.rand(8, 1, 8, 8)
    y = torch.randint(1, 10, (8,))  # wrong for the model (it says 0) ...
    right = torch.zeros(8, dtype=torch.long)  # ... and the label it gets right
    for compact in (True, False):
        atk = attacks.EarlyStopPGD(model, eps=0.2, alpha=0.05, steps=4, tau=0, compact=compact)
        torch.manual_seed(1)
        plain = atk.run(x, y)
        torch.manual_seed(1)
        same = atk.run(x, y, check_labels=y)
        assert torch.equal(plain.x_adv, same.x_adv) and torch.equal(plain.updates, same.updates)
        assert int(plain.updates.sum()) == 0  # wrong at check 0 with τ = 0: leave unmoved
        torch.manual_seed(1)
        judged_right = atk.run(x, y, check_labels=right)
        assert judged_right.updates.tolist() == [4] * 8 and judged_right.kappa.tolist() == [4] * 8
    gapgd = attacks.GAPGD(model, eps=0.2, alpha=0.05, steps=4)
    assert gapgd.run(x, y, check_labels=right).kappa.tolist() == [4] * 8
    assert gapgd.run(x, y).kappa.tolist() == [0] * 8
    with pytest.raises(ValueError, match=r"labels outside \[0, 10\)"):
        gapgd.run(x, y, check_labels=torch.full((8,), 10))
    with pytest.raises(ValueError, match=r"check_labels must have shape \[8\]"):
        gapgd.run(x, y, check_labels=right[:3])


# ----------------------------------------------------------------------------- the trainer
class SeenLabels(CE):
    """CE that records the labels it trained on."""
    def __init__(self):
        self.seen = []

    def __call__(self, model, x, y, res, plan):
        self.seen.append(y.clone())
        return super().__call__(model, x, y, res, plan)


def test_noisy_labels_reach_the_attack_and_loss_clean_ones_judge_it():
    objective = SeenLabels()
    mine = Method("noilin-fat", EarlyStopAttack(), objective, label_noise=LabelNoise())
    model = _zero_model()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), mine, eps=0.2, alpha=0.05,
                 steps=4, tau=0, noise_type="pairflip", noise_min=1.0, noise_max=1.0, epochs=2)
    x, y = torch.rand(8, 1, 8, 8), torch.zeros(8, dtype=torch.long)
    s = tr.train_step(x, y)
    assert torch.equal(objective.seen[0], torch.ones(8, dtype=torch.long))  # every label flipped
    # Early stopping judged the clean label 0, which the model gets right: nobody left early.
    assert s["bp"] == 8 * 4 and int(s["adv_correct"]) == 8 and tr.plan.values["noise_rate"] == 1.0


def test_noilin_needs_validation_data_in_fit():
    model = _zero_model()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), "noilin-at", eps=0.2,
                 alpha=0.05, steps=2, epochs=1)
    with pytest.raises(ValueError, match="val_data: noilin-at follows the validation robust accuracy"):
        tr.fit([(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))])


@pytest.mark.parametrize("method", ["noilin-at", "noilin-trades"])
def test_noilin_runs_end_to_end_and_resumes_exactly(tmp_path, method):
    assert METHODS[method].label_noise is not None
    # A constant lr: the 2-epoch run extended to 3 is then the 3-epoch run, interrupted.
    common = dict(dataset="digits", train_samples=300, eval_samples=32, batch_size=64, steps=3,
                  progress=False, verbose=False, noise_min=0.2, lr_schedule="constant")
    full = fastadv.train(method, epochs=3, out_dir=str(tmp_path / "full"), **common)
    rows = full.history
    assert [r["noise_rate"] for r in rows] == [0.2, 0.2, 0.2]  # < 10 epochs: no growth yet
    # The validation split: max(2 % of 300, 64) = 64 held-out images, so k/64 accuracies.
    assert all(abs(r["val_robust_acc"] * 64 / 100 - round(r["val_robust_acc"] * 64 / 100)) < 1e-9
               for r in rows)
    assert full.config.noise_max == (0.6 if method == "noilin-at" else 0.4)
    part = fastadv.train(method, epochs=2, out_dir=str(tmp_path / "part"), **common)
    assert len(part.history) == 2
    resumed = fastadv.train(method, epochs=3, out_dir=str(tmp_path / "part"), resume=True,
                            **{k: v for k, v in common.items() if k not in ("noise_min", "lr_schedule")})
    strip = lambda h: [{k: v for k, v in r.items() if k not in TIMING} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(rows)
    for a, b in zip(resumed.model.state_dict().values(), full.model.state_dict().values()):
        assert torch.equal(a, b)


def test_noilin_options_are_refused_elsewhere_and_checked():
    from fastadv.training.config import resolve_config
    with pytest.raises(ValueError, match="noise_max: method 'at' has no NoiLIn"):
        resolve_config("at", noise_max=0.3)
    with pytest.raises(ValueError, match="noise_type: must be one of symmetric, pairflip"):
        resolve_config("noilin-at", noise_type="uniform")
    with pytest.raises(ValueError, match="noise_min: is a probability"):
        resolve_config("noilin-at", noise_min=2)
    with pytest.raises(ValueError, match="train_samples: 100 training images are too few"):
        fastadv.train("noilin-at", train_samples=100, epochs=1, out_dir=False, verbose=False)


def test_the_rate_follows_the_history_across_a_resume(tmp_path):
    """A one-epoch window: the rate grows after every epoch whose validation accuracy fell. The
    rates of an interrupted and resumed run are those of the uninterrupted one, and each is what
    LabelNoise.rate_at gives for the validation accuracies before it."""
    from fastadv.training.methods import PGDAttack
    noise = LabelNoise(max_rate=0.6, growth=0.5, window=1)
    mine = Method("noilin-w1", PGDAttack(), CE(), label_noise=noise)
    common = dict(dataset="digits", train_samples=300, eval_samples=32, batch_size=64, steps=2,
                  progress=False, verbose=False, lr_schedule="constant", lr=0.5)
    full = fastadv.train(mine, epochs=6, out_dir=str(tmp_path / "full"), **common)
    accs = [r["val_robust_acc"] for r in full.history]
    settings = {"noise_min": 0.05, "noise_max": 0.6}
    expected = [noise.rate_at(settings, accs, e, 6) for e in range(6)]
    assert [r["noise_rate"] for r in full.history] == pytest.approx(expected)
    assert len(set(expected)) > 1, "the validation accuracy never fell: the test shows nothing"
    fastadv.train(mine, epochs=3, out_dir=str(tmp_path / "part"), **common)
    resumed = fastadv.train(mine, epochs=6, out_dir=str(tmp_path / "part"), resume=True,
                            **{k: v for k, v in common.items() if k != "lr_schedule" and k != "lr"})
    strip = lambda h: [{k: v for k, v in r.items() if k not in TIMING} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
