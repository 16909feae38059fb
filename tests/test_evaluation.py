"""fastadv.evaluate: attack names, scoring (final and any iterate), inputs, JSON and table."""
import json

import pytest
import torch
import torch.nn as nn

import fastadv
from fastadv import models
from fastadv.data import BatchLoader, load_dataset
from fastadv.evaluation import parse_attack


class Threshold(nn.Module):
    """Class 1 iff the mean pixel exceeds ``t``: the L∞ attack moves the mean by exactly ε, so
    robust accuracy is known in closed form (a sample with label 1 and mean m is robust iff
    m − ε > t; label 0 iff m + ε <= t)."""

    def __init__(self, t=0.5):
        super().__init__()
        self.t = t
        self.scale = nn.Parameter(torch.tensor(50.0))

    def forward(self, x):
        m = x.flatten(1).mean(1)
        z = self.scale * (m - self.t)
        return torch.stack([-z, z], 1)


@pytest.fixture(scope="module")
def means_data():
    # 40 constant images (4×4) of means 0.02 … 0.98 away from the clip bounds' influence.
    m = torch.linspace(0.05, 0.95, 40)
    x = m.view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    y = (m > 0.5).long()
    return x, y, m


def expected_robust(m, y, eps, t=0.5):
    return 100.0 * float(((y == 1) & (m - eps > t) | (y == 0) & (m + eps < t)).double().mean())  # float64: 80.0 exactly, as the evaluator counts


def test_parse_attack_names():
    from fastadv.evaluation import AutoAttackEval, CallableEval, Natural
    assert parse_attack("pgd20").steps == 20 and parse_attack("PGD-100").steps == 100
    assert parse_attack("cw30").loss == "cw" and parse_attack("cw30").alpha(0.4) == 0.1
    assert parse_attack("fgsm").steps == 1 and parse_attack("fgsm").alpha(0.3) == 0.3
    assert isinstance(parse_attack("clean"), Natural)
    plus = parse_attack("pgd+")
    assert (plus.restarts, plus.steps, plus.alpha(0.031)) == (5, 40, 0.01)
    # The official fixed step 0.01 belongs to eps = 0.031: it scales with eps unless fixed.
    assert plus.alpha(0.3) == pytest.approx(0.01 * 0.3 / 0.031)
    assert "0.01 * eps / 0.031" in plus.note(0.3)
    plus.fix_alpha(0.02)
    assert plus.alpha(0.3) == 0.02 and "given" in plus.note(0.3)
    aa = parse_attack("autoattack")
    assert isinstance(aa, AutoAttackEval) and aa.version == "standard"
    assert parse_attack("AA-lite").version == "lite" and parse_attack("apgd-t").attacks == ("apgd-t",)
    assert isinstance(parse_attack(lambda x, y: x), CallableEval)
    with pytest.raises(ValueError, match="attacks"):
        parse_attack("autoatack")


def test_autoattack_and_attack_objects_in_evaluate(means_data):
    """AutoAttack finds the closed form on the threshold model; an attack object and a plain
    callable model are accepted."""
    x, y, m = means_data
    model = Threshold()
    eps = 0.1
    want = expected_robust(m, y, eps)
    fab = fastadv.attacks.FAB(model, eps=eps)
    r = fastadv.evaluate(model, (x, y), attacks={"apgd-ce": 0, "square": 0, fab: 0, fastadv.attacks.FAB(model, eps=eps, steps=3): 0}.keys(),
                         eps=eps, batch_size=16, verbose=False, alpha=0.003)
    for name in ("apgd-ce", "square", "FAB", "FAB#2"):  # any iterable of names and attack objects
        assert r["accuracy"][name] == pytest.approx(want), name
    assert "notes" not in r  # alpha is the pgdK/cwK step; it does not touch pgd+
    r = fastadv.evaluate(model, (x, y), attacks=("pgd+",), eps=eps, verbose=False, alpha=0.003)
    assert "0.01 * eps / 0.031" in r["notes"][0]
    r = fastadv.evaluate(model, (x, y), attacks=("pgd+",), eps=eps, verbose=False, pgd_plus_alpha=0.02)
    assert r["notes"] == ["pgd+: step alpha = 0.02 (given)"]
    fn = lambda v: model(v)  # noqa: E731  (not an nn.Module)
    r2 = fastadv.evaluate(fn, (x, y), attacks=("natural", "pgd20"), eps=eps, verbose=False)
    assert r2["accuracy"]["pgd20"] == pytest.approx(want)


def test_autoattack_in_evaluate_runs_once_on_the_whole_set(monkeypatch):
    """As the official code: one AutoAttack over every evaluated sample (its own batches of 250),
    whatever the evaluation's batch size; so the result equals AutoAttack.run on the whole set."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    x = torch.rand(60, 1, 4, 4)
    y = torch.randint(0, 10, (60,))
    calls = []
    real_run = fastadv.attacks.AutoAttack.run

    def spy(self, xx, yy, targets=None):
        calls.append(xx.shape[0])
        return real_run(self, xx, yy, targets)
    monkeypatch.setattr(fastadv.attacks.AutoAttack, "run", spy)
    r = fastadv.evaluate(model, (x, y), attacks=("natural", "aa-lite"), eps=0.05, batch_size=16,
                         verbose=False)
    monkeypatch.undo()
    assert calls == [60]  # once, on all four evaluation batches' samples
    want = fastadv.attacks.AutoAttack(model, eps=0.05, version="lite").run(x, y).robust
    assert r["accuracy"]["aa-lite"] == pytest.approx(100.0 * float(want.double().mean()))
    assert 0 < r["accuracy"]["aa-lite"] < r["accuracy"]["natural"]


@pytest.mark.parametrize("any_iterate", [False, True])
def test_accuracies_match_closed_form(means_data, any_iterate, tmp_path, capsys):
    x, y, m = means_data
    model = Threshold()
    model.train()
    out = tmp_path / "eval.json"
    eps = 0.1
    r = fastadv.evaluate(model, (x, y), attacks=("natural", "fgsm", "pgd20", "cw30", "pgd+"),
                         eps=eps, any_iterate=any_iterate, batch_size=16, out=str(out))
    assert r["n"] == 40 and r["any_iterate"] is any_iterate
    assert r["accuracy"]["natural"] == 100.0
    want = expected_robust(m, y, eps)
    assert 0 < want < 100
    for name in ("pgd20", "cw30", "pgd+"):  # enough steps to reach the ball's corner
        assert r["accuracy"][name] == pytest.approx(want), name
    # FGSM's single step from a uniform start reaches the corner only for pixels whose noise
    # was positive: weaker, but never stronger, than the optimum.
    assert want <= r["accuracy"]["fgsm"] < 100
    assert json.loads(out.read_text()) == r
    printed = capsys.readouterr().out
    assert "pgd20" in printed and f"{want:.2f}" in printed
    assert model.training  # mode restored


def test_eps_zero_equals_natural_and_inputs_agree():
    ds = load_dataset("digits", split="test").subset(slice(0, 48))
    torch.manual_seed(0)
    model = models.create("small_cnn", num_classes=10, in_channels=1)
    nn.init.normal_(model.classifier[-1].weight, std=0.5)  # a non-constant classifier
    kw = dict(attacks=("natural", "pgd20"), eps=0.0, verbose=False)
    a = fastadv.evaluate(model, ds, **kw)
    b = fastadv.evaluate(model, (ds.float_images(), ds.labels), batch_size=7, **kw)
    c = fastadv.evaluate(model, BatchLoader(ds, batch_size=20, shuffle=False, device="cpu"), **kw)
    d = fastadv.evaluate(model, ds, any_iterate=True, **kw)
    assert a["accuracy"]["natural"] == a["accuracy"]["pgd20"] == d["accuracy"]["pgd20"]
    assert a["accuracy"] == b["accuracy"] == c["accuracy"]
    assert 0 < a["accuracy"]["natural"] < 100
    e = fastadv.evaluate(model, ds, max_samples=10, **kw)
    assert e["n"] == 10


def test_any_iterate_counts_a_sample_broken_at_an_intermediate_check():
    # Wrong only while the mean pixel v is inside the band (0.46, 0.49). From x = 0.4 with ε = 0.1,
    # CE ascent raises every pixel by α = 0.025 per step up to 0.5, so v climbs from ≈ 0.4 (the
    # random start of 64 pixels moves the mean by < 0.03) to 0.5 in increments <= 0.025 < the
    # band's width: some check falls inside the band, while the final iterate (v = 0.5) is correct.
    class Band(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x):
            v = x.flatten(1).mean(1) * self.w
            inside = ((v > 0.46) & (v < 0.49)).float()
            # the correct class' score falls with v, so CE ascent raises v monotonically
            return torch.stack([1.5 - 10 * (v - 0.4) - 100 * inside, torch.zeros_like(v)], 1)

    x = torch.full((1, 1, 8, 8), 0.4)
    y = torch.zeros(1, dtype=torch.long)
    kw = dict(attacks=("pgd10",), eps=0.1, verbose=False)
    final = fastadv.evaluate(Band(), (x, y), **kw)
    anyit = fastadv.evaluate(Band(), (x, y), any_iterate=True, **kw)
    assert final["accuracy"]["pgd10"] == 100.0  # the last iterate is classified correctly
    assert anyit["accuracy"]["pgd10"] == 0.0


def test_bad_arguments():
    model = Threshold()
    x, y = torch.rand(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="eps"):
        fastadv.evaluate(model, (x, y), eps=-1.0)
    with pytest.raises(ValueError, match="attacks"):
        fastadv.evaluate(model, (x, y), attacks=("pgd0",))
    with pytest.raises(TypeError, match="model"):
        fastadv.evaluate("model.pt", (x, y))  # a callable is accepted, a path is not
    with pytest.raises(ValueError, match="data"):
        fastadv.evaluate(model, (x, y[:3]))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="rows_per_pass"):
            fastadv.evaluate(model, (x, y), rows_per_pass=bad, verbose=False)


class RowByRow(nn.Module):
    """Each row alone through ``net``, and the row count of every pass logged: logits whose bits
    cannot depend on a pass's row count, so the pass size can change nothing but the passes."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.passes = []

    def forward(self, x):
        self.passes.append(x.shape[0])
        return torch.cat([self.net(row[None]) for row in x])


def test_attacks_run_the_model_in_passes_of_rows_per_pass():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    x = torch.rand(130, 1, 28, 28)  # MNIST-sized: the CPU default is 64 rows a pass
    with torch.no_grad():
        y = net(x).argmax(1)
    model = RowByRow(net)
    runs = {}
    for rows in (None, 200, 5):
        for any_iterate in (False, True):
            model.passes.clear()
            torch.manual_seed(1)  # the random starts
            r = fastadv.evaluate(model, (x, y), attacks=("fgsm", "pgd3", "cw3"), eps=0.004, batch_size=130,
                                 any_iterate=any_iterate, rows_per_pass=rows, verbose=False)
            runs[rows, any_iterate] = r["accuracy"]
            if rows is None:  # the CPU default, 64 rows here: 130 rows in three equal passes
                assert {44, 43} <= set(model.passes) and max(model.passes) <= 64
            elif rows == 200:
                assert max(model.passes) == 130
            else:
                assert max(model.passes) == 5
        assert 0 < runs[rows, False]["pgd3"] < 100  # some points broken, some robust
    for key, acc in runs.items():
        assert acc == runs[None, key[1]], key  # the same accuracies, pass by pass
    # pgd+ (any-iterate over 5 restarts, 40 steps) and AutoAttack take it too.
    model.passes.clear()
    fastadv.evaluate(model, (x[:12], y[:12]), attacks=("pgd+",), eps=0.1, rows_per_pass=5, verbose=False)
    assert max(model.passes) <= 5
    model.passes.clear()
    fastadv.evaluate(model, (x[:12], y[:12]), attacks=("apgd-ce",), eps=0.1, rows_per_pass=5, verbose=False)
    assert model.passes[:3] == [4, 4, 4] and max(model.passes) <= 5  # 12 rows: three passes of 4


def test_worst_case_is_per_point_over_every_attack(means_data, capsys):
    """Two attack objects that break disjoint points and AutoAttack's APGD-CE (run once on the
    whole set after the batches): the worst case is the points robust under all three, point by
    point, not the least of the accuracies. The threshold is off centre, so that verdicts joined
    in another row order would not give the same set."""
    x, y, m = means_data
    t, eps = 0.45, 0.1
    correct = (m > t) == (y == 1)  # clean: the points of mean in (0.45, 0.5] are misclassified

    def lows_up(xx, yy):  # breaks the points of mean < 0.3 (label 0)
        out = xx.clone()
        out[xx.flatten(1).mean(1) < 0.3] = 0.9
        return out

    def highs_down(xx, yy):  # breaks the points of mean > 0.8 (label 1)
        out = xx.clone()
        out[xx.flatten(1).mean(1) > 0.8] = 0.1
        return out
    r = fastadv.evaluate(Threshold(t), (x, y), attacks=(lows_up, highs_down, "apgd-ce"), eps=eps,
                         batch_size=16, verbose=True)
    pct = lambda mask: 100.0 * float(mask.double().mean())  # noqa: E731
    aa = ((y == 1) & (m - eps > t)) | ((y == 0) & (m + eps < t))
    assert r["accuracy"]["function"] == pytest.approx(pct(correct & (m >= 0.3)))
    assert r["accuracy"]["function#2"] == pytest.approx(pct(correct & (m <= 0.8)))
    assert r["accuracy"]["apgd-ce"] == pytest.approx(pct(aa))
    want = pct((m >= 0.3) & (m <= 0.8) & aa)
    assert r["worst_case"] == pytest.approx(want) and want < min(r["accuracy"].values())
    assert "worst case" in capsys.readouterr().out
    assert "worst_case" not in fastadv.evaluate(Threshold(), (x, y), attacks=("fgsm",), eps=0.1,
                                                verbose=False)  # one attack: nothing to combine
