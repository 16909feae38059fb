"""Methods as small objects (issue #13 item 1): one place resolves each method's options, the
Trainer and fastadv.train agree, a user's own Method trains through both, no import cycle."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastadv
from fastadv import models
from fastadv.training import Trainer
from fastadv.training.config import resolve_config
from fastadv.training.methods import (METHOD_OPTIONS, METHODS, EarlyStopAttack, Method, PGDAttack,
                                      get_method)
from fastadv.training.objectives import CE, GairCE, Objective, Trades

REPO = Path(__file__).resolve().parents[1]


def _trainer(method, **kw):
    torch.manual_seed(0)
    model = models.create("small_cnn", num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return Trainer(model, opt, method, eps=0.2, alpha=0.05, steps=3, **kw)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("epochs", [1, 7, 20])
def test_trainer_and_train_resolve_the_same_defaults(method, epochs):
    cfg = resolve_config(method, epochs=epochs)
    tr = _trainer(method, epochs=epochs)
    assert tr.settings == {k: getattr(cfg, k) for k in METHODS[method].options}
    for k in METHOD_OPTIONS:  # options of other methods are None in both
        assert getattr(tr, k) == getattr(cfg, k)


def test_gair_start_follows_the_epochs_given_to_fit():
    tr = _trainer("gairat")
    assert tr.gair_start is None  # not known yet
    tr._set_epochs(10)
    assert tr.gair_start == 5 and resolve_config("gairat", epochs=10).gair_start == 5


@pytest.mark.parametrize("option,value,method", [
    ("tau", 1, "at"), ("omega", 0.1, "trades"), ("beta", 6.0, "fat"), ("lam", -1.0, "mart"),
    ("weight_func", "tanh", "fat"), ("gair_start", 0, "at")])
def test_an_option_the_method_does_not_take_is_refused_alike(option, value, method):
    takers = [m for m, s in METHODS.items() if option in s.options]
    with pytest.raises(ValueError, match=rf"{option}: method '{method}' has no .*; {option} "
                                         rf"applies to {', '.join(takers)}"):
        resolve_config(method, **{option: value})
    with pytest.raises(ValueError, match=rf"{option}: method '{method}' has no"):
        _trainer(method, **{option: value})


def test_get_method_takes_names_in_any_case_and_objects():
    assert get_method("FAT") is METHODS["fat"]
    mine = Method("mine", PGDAttack())
    assert get_method(mine) is mine
    with pytest.raises(ValueError, match=r"unknown method 'fta' \(did you mean 'fat'\?\)"):
        get_method("fta")


def test_a_method_checks_its_parts():
    with pytest.raises(ValueError, match="objective: .*Trades.*give the method an attack"):
        Method("trades-without-attack", None, Trades())
    with pytest.raises(TypeError, match="attack must be an AttackRecipe"):
        Method("x", "pgd")
    with pytest.raises(ValueError, match="loss must be one of"):
        PGDAttack(loss="dlr")


class CountingCE(Objective):
    """A user's objective: CE on the adversarial batch, counting its calls."""
    name = "counting-ce"

    def __init__(self):
        self.calls = 0

    def __call__(self, model, x, y, res, plan):
        self.calls += 1
        return CE()(model, x, y, res, plan)


def test_a_users_method_trains_through_the_trainer_and_train(tmp_path):
    objective = CountingCE()
    mine = Method("es-counting", EarlyStopAttack(), objective)
    x = torch.rand(12, 1, 8, 8)
    y = torch.randint(0, 10, (12,))
    tr = _trainer(mine, tau=0)
    s = tr.train_step(x, y)
    assert objective.calls == 1 and 0 < s["bp"] <= 3 * 12 and tr.current_tau == 0
    # The same object through fastadv.train: its name names the run, its options are resolved.
    common = dict(dataset="digits", train_samples=64, eval_samples=32, epochs=2, batch_size=32,
                  progress=False, verbose=False, out_dir=str(tmp_path / "run"))
    r = fastadv.train(mine, tau=1, **common)
    assert r.config.method == "es-counting" and r.config.tau == 1 and objective.calls == 1 + 4
    assert [row["tau"] for row in r.history] == [1, 1]
    # Resuming needs the object again: the checkpoint stores only the name.
    with pytest.raises(ValueError, match="unknown method 'es-counting'"):
        fastadv.train(epochs=3, resume=True, **{k: v for k, v in common.items() if k != "epochs"})
    r = fastadv.train(mine, resume=True, **{**common, "epochs": 3})
    assert len(r.history) == 3 and objective.calls == 1 + 6


def test_a_users_gair_method_uses_kappa_from_its_early_stop_attack():
    """GAIR-CE on FAT's attack (what gair-fat is), built by hand: the same step as gair-fat."""
    x = torch.rand(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    mine = Method("my-gair-fat", EarlyStopAttack(), GairCE(default_lam=0.0))
    a = _trainer(mine, tau=1, gair_start=0, epochs=2)
    b = _trainer("gair-fat", tau=1, gair_start=0, epochs=2)
    torch.manual_seed(1)
    sa = a.train_step(x, y)
    torch.manual_seed(1)
    sb = b.train_step(x, y)
    assert a.current_lam == b.current_lam == 0.0
    assert torch.equal(sa["loss"], sb["loss"]) and sa["bp"] == sb["bp"]
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("module", ["schedules", "methods", "objectives", "config", "checks",
                                    "trainer", "api"])
def test_each_training_module_imports_first_no_cycle(module):
    """Each module imports in a fresh interpreter as the first one of the package (an import
    cycle shows up as a partially initialised module for one of the orders)."""
    code = f"import importlib; importlib.import_module('fastadv.training.{module}')"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]


def _imports(tree) -> set:
    """The fastadv.training modules a module imports, however it spells them."""
    import ast
    got = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            mod = n.module or ""
            if n.level == 1 and not mod:  # from . import config
                got |= {a.name for a in n.names}
            elif n.level == 1 or mod.startswith("fastadv.training."):
                got.add(mod.split(".")[-1])
        elif isinstance(n, ast.Import):
            got |= {a.name.split(".")[-1] for a in n.names if a.name.startswith("fastadv.training.")}
    return got


def test_schedules_and_config_do_not_import_each_other():
    import ast
    for name, other in (("schedules", "config"), ("config", "trainer"), ("methods", "config"),
                        ("objectives", "methods"), ("checks", "config")):
        tree = ast.parse((REPO / "fastadv" / "training" / f"{name}.py").read_text())
        assert other not in _imports(tree), f"{name} imports .{other}"
    assert "checks" in _imports(ast.parse((REPO / "fastadv/training/config.py").read_text()))
