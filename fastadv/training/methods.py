"""Training methods as small objects: an attack recipe, an objective, their options and schedules.

A :class:`Method` is a name, an :class:`AttackRecipe` (the attack run on every batch: PGD-K,
FAT's early-stopped PGD-K-τ, GAIRAT's GA-PGD, DAT's FOSC-stopped PGD, CAT's curriculum, GAIR-RST's
KL and C&W pair; ``None`` for standard training), an
:class:`~fastadv.training.objectives.Objective` (the loss trained on its result: CE, GAIR-CE,
TRADES, MART, DAT's CE, GAIR-TRADES) and optionally NoiLIn's
:class:`~fastadv.training.label_noise.LabelNoise`. Each part declares the options it takes (τ and
ω for the early-stop attack, β for TRADES and MART, λ, weight function and first epoch for GAIR,
the noise rates for NoiLIn) with their defaults, and its per-epoch schedules (FAT's dynamic τ,
GAIR's start, DAT's threshold, CAT's k, NoiLIn's rate). :meth:`Method.resolve` fills in and checks
those options, for :func:`fastadv.train` and :class:`~fastadv.training.Trainer` alike, and refuses
one the method does not take.

:data:`METHODS` maps the built-in names to their objects. A method of your own::

    from fastadv.training.methods import Method, EarlyStopAttack
    from fastadv.training.objectives import GairCE
    mine = Method("gair-fat-kl", EarlyStopAttack(loss="kl", random_start="normal"), GairCE(0.0))
    fastadv.train(method=mine, tau=2, epochs=10)      # or Trainer(model, opt, method=mine)

(Options are the fields of :class:`~fastadv.training.config.TrainConfig`; a resumed run of your
own method needs the object passed again.)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from .checks import Option, check_number, fail
from .label_noise import LabelNoise
from .objectives import CE, DatCE, EpochPlan, GairCE, GairTrades, Mart, Objective, Trades
from .schedules import scale_boundaries
from ..errors import UserError, UserTypeError

# ----------------------------------------------------------------------------- attack recipes


class AttackRecipe:
    """The attack a method runs on each training batch. ``loss``: the attack loss (``ce``,
    ``kl`` for TRADES' attack, ``cw``); ``random_start``: its start (``uniform``, ``normal``:
    x + 0.001·N(0, I) as in the TRADES/MART code, or ``None``). ``build(model, eps=, alpha=,
    steps=, random_start=, plan=)`` returns the attack of one epoch: an object whose
    ``run(x, y, check_labels=None)`` gives an :class:`~fastadv.attacks.AttackResult` (an
    :class:`~fastadv.attacks.Attack`, or a pair of them as GAIR-RST's)."""
    options: Tuple[Option, ...] = ()
    needs_validation = False  # True: its schedule follows the held-out accuracy (CAT)

    def __init__(self, loss: str = "ce", random_start: Optional[str] = "uniform"):
        from ..attacks.base import ATTACK_LOSSES, normalize_random_start
        if loss not in ATTACK_LOSSES:
            raise UserError(f"loss must be one of {', '.join(ATTACK_LOSSES)}, got {loss!r}")
        self.loss = loss
        self.random_start = normalize_random_start(random_start)

    def epoch_values(self, settings: Mapping[str, Any], epoch: int, epochs: Optional[int],
                     history: Sequence[Mapping[str, Any]] = ()) -> Dict[str, Any]:
        return {}

    def build(self, model, *, eps, alpha, steps, random_start, plan: EpochPlan):
        raise NotImplementedError

    def validation(self, plan: EpochPlan, eps: float, alpha: float, steps: int):
        """``(steps, alpha)`` of the PGD whose accuracy on held-out data is ``val_robust_acc``
        (0 steps: natural accuracy): by default the training attack's K and α."""
        return steps, alpha

    def after_epoch(self, trainer, row: Dict[str, Any], val_data) -> None:
        """Called by ``Trainer.fit`` after each epoch's row (with ``val_robust_acc``) is made."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(loss={self.loss!r}, random_start={self.random_start!r})"


class PGDAttack(AttackRecipe):
    """PGD-K: every row takes all K steps (AT, TRADES, MART)."""

    def build(self, model, *, eps, alpha, steps, random_start, plan):
        from ..attacks import PGD
        return PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                   loss=self.loss)


class GAPGDAttack(PGDAttack):
    """GAIRAT's GA-PGD: PGD-K that also counts κ, the checks each row survived."""

    def build(self, model, *, eps, alpha, steps, random_start, plan):
        from ..attacks import GAPGD
        return GAPGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                     loss=self.loss)


@dataclass(frozen=True)
class DynamicTau:
    """The official dynamic τ: ``values[i]`` where i is the number of ``boundaries`` the
    (0-based) epoch is past, the boundaries given for a run of ``paper_epochs`` and scaled to
    the run's length (the official code tests ``epoch <= b``, so τ changes *after* each
    boundary epoch)."""
    boundaries: Tuple[int, ...]
    values: Tuple[int, ...]
    paper_epochs: int

    def at(self, epoch: int, epochs: int) -> int:
        scaled = scale_boundaries(self.boundaries, self.paper_epochs, epochs)
        return self.values[sum(epoch > b for b in scaled)]


class EarlyStopAttack(AttackRecipe):
    """FAT's PGD-K-τ (:class:`~fastadv.attacks.EarlyStopPGD`): a row stops once misclassified
    and its budget τ is spent. Options ``tau`` (default 1; ``"dynamic"``: the official schedule
    ``dynamic_tau`` scaled to the run) and ``omega`` (the ω·N(0, I) exploration noise, default 0).
    """

    def __init__(self, loss: str = "ce", random_start: Optional[str] = "uniform",
                 dynamic_tau: Optional[DynamicTau] = None):
        super().__init__(loss, random_start)
        self.dynamic_tau = dynamic_tau
        self.options = (Option("tau", "FAT's early-stop budget τ", 1, self._check_tau),
                        Option("omega", "FAT's exploration noise ω", 0.0, _check_omega))

    def _check_tau(self, name, value, epochs):
        if isinstance(value, str):
            if value.lower() != "dynamic":
                fail(name, f"must be an int >= 0 or 'dynamic', got {value!r}")
            if self.dynamic_tau is None:
                fail(name, "this method has no dynamic schedule; give an int >= 0")
            return "dynamic"
        check_number(name, value, minimum=0, integer=True)
        return value

    def epoch_values(self, settings, epoch, epochs, history=()):
        tau = settings["tau"]
        if tau != "dynamic":
            return {"tau": int(tau)}
        if epochs is None:
            fail("epochs", "tau='dynamic' scales the official schedule to the number of epochs; "
                           "pass epochs= (to the Trainer or to fit)")
        return {"tau": self.dynamic_tau.at(epoch, epochs)}

    def build(self, model, *, eps, alpha, steps, random_start, plan):
        from ..attacks import EarlyStopPGD
        return EarlyStopPGD(model, eps=eps, alpha=alpha, steps=steps, tau=plan.values["tau"],
                            omega=plan.settings["omega"], random_start=random_start,
                            loss=self.loss)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", dynamic_tau={self.dynamic_tau})"


class CurriculumAttack(AttackRecipe):
    """CAT (Cai et al. 2018; sunblaze-ucb/curriculum-adversarial-training-CAT): every batch mixes
    k + 1 chunks attacked with PGD-0 … PGD-k (:class:`~fastadv.attacks.CurriculumPGD`, one call),
    k rising from 0 to the run's ``steps``. After each epoch the validation accuracy under PGD-k
    (α = 2ε/k, uniform start; natural accuracy at k = 0) is compared with the best of this k; when
    it has not improved for ``window`` epochs and the training accuracy on the mixed batches is
    above ``train_acc`` %, the model and optimizer roll back to that best epoch and k grows by one
    (the official rule; the restored model's accuracy at the new k is its first best). The epoch
    rows carry ``cat_k``, ``val_robust_acc`` and ``rolled_back_to`` (the epoch restored)."""

    needs_validation = True

    def __init__(self, window: int = 10, train_acc: float = 90.0, step_scale: float = 2.0):
        super().__init__("ce", "uniform")
        check_number("window", window, minimum=1, integer=True)
        check_number("train_acc", train_acc, minimum=0)
        self.window, self.train_acc, self.step_scale = window, float(train_acc), float(step_scale)

    def epoch_values(self, settings, epoch, epochs, history=()):
        done = history[:epoch]
        return {"cat_k": int(done[-1].get("cat_k_next", 0)) if done else 0}

    def build(self, model, *, eps, alpha, steps, random_start, plan):
        from ..attacks import CurriculumPGD
        return CurriculumPGD(model, eps=eps, k=plan.values["cat_k"], step_scale=self.step_scale,
                             random_start=random_start, loss=self.loss)

    def validation(self, plan, eps, alpha, steps):
        k = plan.values["cat_k"]
        return k, (self.step_scale * eps / k if k else alpha)

    def after_epoch(self, trainer, row, val_data):
        k, e, acc = trainer.plan.values["cat_k"], row["epoch"] - 1, row["val_robust_acc"]
        state = trainer.method_state.setdefault(
            "cat", {"best_epoch": None, "best_acc": None, "best": None})
        row["cat_k"], row["rolled_back_to"], nxt = k, None, k
        if k >= trainer.steps:
            state["best"] = None  # the curriculum has reached PGD-K: no more rollbacks
        elif state["best_acc"] is None or acc > state["best_acc"]:
            state.update(best_epoch=e, best_acc=acc, best=trainer.snapshot())
        elif e - state["best_epoch"] >= self.window and (row["train_adv_acc"] or 0) > self.train_acc:
            trainer.restore(state["best"])
            row["rolled_back_to"] = state["best_epoch"] + 1
            nxt = k + 1
            steps, alpha = self.validation(replace(trainer.plan, values={"cat_k": nxt}),
                                           trainer.eps, trainer.alpha, trainer.steps)
            state.update(best_epoch=e, best_acc=trainer.validate(val_data, steps=steps,
                                                                 alpha=alpha))
        row["cat_k_next"] = nxt

    def __repr__(self) -> str:
        return (f"CurriculumAttack(window={self.window}, train_acc={self.train_acc:g}, "
                f"step_scale={self.step_scale:g})")


class FOSCAttack(AttackRecipe):
    """DAT (Wang et al., ICML 2019; YisenWang/dynamic_adv_training): PGD-K from a uniform start
    whose rows stop once their FOSC ``c = ε‖g‖₁ − ⟨xᵏ − x⁰, g⟩`` is at most the epoch's threshold
    (:class:`~fastadv.attacks.FOSCPGD`, c computed in the fused step kernel). The threshold falls
    linearly, c_t = max(fosc_max·(1 − e / (dynamic_fraction·E)), 0): 0.5 at the start to 0 at
    epoch 100 of the official 120 (scaled to the run's E epochs), then stays 0 (every row then
    runs until its FOSC is 0: in practice all K steps)."""

    def __init__(self, fosc_max: float = 0.5, dynamic_fraction: float = 100 / 120):
        super().__init__("ce", "uniform")
        check_number("fosc_max", fosc_max, minimum=0)
        check_number("dynamic_fraction", dynamic_fraction, minimum=0, strict=True)
        self.fosc_max, self.dynamic_fraction = float(fosc_max), float(dynamic_fraction)

    def threshold_at(self, epoch: int, epochs: int) -> float:
        return max(self.fosc_max - self.fosc_max * epoch / (self.dynamic_fraction * epochs), 0.0)

    def epoch_values(self, settings, epoch, epochs, history=()):
        if epochs is None:
            fail("epochs", "DAT's FOSC threshold falls over the run: pass epochs= (to the Trainer "
                           "or to fit)")
        return {"fosc_threshold": self.threshold_at(epoch, epochs)}

    def build(self, model, *, eps, alpha, steps, random_start, plan):
        from ..attacks import FOSCPGD
        return FOSCPGD(model, eps=eps, alpha=alpha, steps=steps,
                       threshold=plan.values["fosc_threshold"], random_start=random_start,
                       loss=self.loss)

    def __repr__(self) -> str:
        return f"FOSCAttack(fosc_max={self.fosc_max:g}, dynamic_fraction={self.dynamic_fraction:g})"


class GairRSTAttack(AttackRecipe):
    """GAIR-RST's attacks (GAIR_RST/losses.py): TRADES' KL attack from the normal start, whose
    checks give κ; while GAIR reweights (the objective's λ is on), a second, C&W-loss PGD-K from
    the normal start as well, its iterate in ``res.extras["x_cw"]``. Both count in the BPs."""

    def __init__(self):
        super().__init__("kl", "normal")

    def build(self, model, *, eps, alpha, steps, random_start, plan):
        from ..attacks import PGD
        kl = PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start, loss="kl")
        cw = None
        if plan.values.get("lam") is not None:
            cw = PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start, loss="cw")
        return _KLThenCW(kl, cw)

    def __repr__(self) -> str:
        return "GairRSTAttack()"


class _KLThenCW:
    """Runs the KL attack, then the C&W one (if any) on the same batch; one result."""

    def __init__(self, kl, cw):
        self.kl, self.cw = kl, cw

    def run(self, x, y, check_labels=None):
        res = self.kl.run(x, y, check_labels=check_labels)
        if self.cw is not None:
            cw = self.cw.run(x, y, check_labels=check_labels)
            res.extras = {"x_cw": cw.x_adv}
            res.bp += cw.bp
            res.bp_executed += cw.bp_executed
            res.rows_computed += cw.rows_computed
        return res


def _check_omega(name, value, epochs):
    check_number(name, value, minimum=0)
    return float(value)

# ----------------------------------------------------------------------------- the method


@dataclass(frozen=True)
class Method:
    """A training method: ``attack`` (an :class:`AttackRecipe`, ``None`` for standard
    training), ``objective`` (an :class:`~fastadv.training.objectives.Objective`), ``paper``
    (its paper's CIFAR-10 recipe for ``preset="paper"``: options such as model, epochs,
    lr_schedule; ``None`` if it has none) and ``label_noise`` (NoiLIn's
    :class:`~fastadv.training.label_noise.LabelNoise`: the attack and the loss then see noisy
    labels, the checks and accuracies the clean ones)."""
    name: str
    attack: Optional[AttackRecipe]
    objective: Objective = field(default_factory=CE)
    paper: Optional[Mapping[str, Any]] = None
    label_noise: Optional[LabelNoise] = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise UserTypeError(f"name must be a non-empty str, got {self.name!r}")
        if self.attack is not None and not isinstance(self.attack, AttackRecipe):
            raise UserTypeError(f"attack must be an AttackRecipe or None, got {self.attack!r}")
        if not isinstance(self.objective, Objective):
            raise UserTypeError(f"objective must be an Objective, got {self.objective!r}")
        if self.label_noise is not None and not isinstance(self.label_noise, LabelNoise):
            raise UserTypeError(f"label_noise must be a LabelNoise or None, got {self.label_noise!r}")
        if self.attack is None and self.objective.needs_attack:
            raise UserError(f"objective: {self.objective!r} trains on an attack's result; give "
                            f"the method an attack")

    @property
    def needs_validation(self) -> bool:
        """Whether training needs held-out data every epoch (NoiLIn's rate, CAT's curriculum)."""
        return self.label_noise is not None or (self.attack is not None
                                                and self.attack.needs_validation)

    @property
    def options(self) -> Dict[str, Option]:
        """The method-specific options it takes, by name."""
        parts = ((self.attack.options if self.attack else ()) + self.objective.options
                 + (self.label_noise.options if self.label_noise else ()))
        return {o.name: o for o in parts}

    def resolve(self, given: Mapping[str, Any], epochs: Optional[int]) -> Dict[str, Any]:
        """Every option of this method, checked, with the defaults filled in (``None`` for a
        default that needs ``epochs`` while it is unknown). A method-specific option (one of
        :data:`METHOD_OPTIONS`) that this method does not take and that is not ``None`` in
        ``given`` raises, naming the methods that take it."""
        mine = self.options
        for name in METHOD_OPTIONS:
            if given.get(name) is not None and name not in mine:
                fail(name, f"method {self.name!r} has no {OPTION_WHAT[name]}; {name} applies to "
                           f"{', '.join(m for m, s in METHODS.items() if name in s.options)}")
        settings = {name: opt.resolve(given.get(name), epochs) for name, opt in mine.items()}
        if self.label_noise is not None:
            self.label_noise.check(settings)
        return settings

    def plan(self, settings: Mapping[str, Any], epoch: int, epochs: Optional[int],
             steps: int, history: Sequence[Mapping[str, Any]] = ()) -> EpochPlan:
        """The :class:`EpochPlan` of (0-based) ``epoch``: its τ, λ, noise rate ... from the
        schedules (``history``: the rows of the epochs before, for NoiLIn's rate)."""
        values = dict(self.attack.epoch_values(settings, epoch, epochs, history)
                      if self.attack else {})
        values.update(self.objective.epoch_values(settings, epoch, epochs))
        if self.label_noise is not None:
            values.update(self.label_noise.epoch_values(settings, epoch, epochs, history))
        return EpochPlan(settings=dict(settings), values=values, steps=steps)

    def __str__(self) -> str:
        return self.name


def get_method(method) -> Method:
    """A :class:`Method` from a built-in name (any case) or the object itself."""
    if isinstance(method, Method):
        return method
    if isinstance(method, str) and method.lower() in METHODS:
        return METHODS[method.lower()]
    from ..errors import did_you_mean
    alias = METHOD_ALIASES.get(str(method).lower().replace("_", "-"))
    hint = f" (did you mean {alias!r}?)" if alias else did_you_mean(method, METHODS)
    fail("method", f"unknown method {method!r}{hint}; available: {', '.join(METHODS)} (or a "
                   f"fastadv.training.methods.Method)")

# ----------------------------------------------------------------------------- the built-ins


# Each paper's CIFAR-10 recipe (the official repositories' defaults). Dict lr_schedules give
# milestones as fractions of the epochs (a shortened run keeps the shape); factors multiply the lr.
_PAPER = dict(eps=0.031, alpha=0.007, steps=10, batch_size=128, momentum=0.9, weight_decay=2e-4,
              lr=0.1)
# FAT.py: WRN-32-10, 120 epochs, the lr ×0.1/×0.01/×0.005 at 60/90/110 ("fat"), ω = 0.001.
_FAT_PAPER = dict(_PAPER, model="wrn-32-10", epochs=120, lr_schedule="fat")
# TRADES / FAT_for_TRADES.py: WRN-34-10, 85 epochs, β = 6; FAT's variant: ω = 0 and its PGD-20 /
# C&W∞ evaluation steps by 0.003 (not ε/4).
_TRADES_PAPER = dict(_PAPER, model="wrn-34-10", epochs=85,
                     lr_schedule={"milestones": [75 / 85], "factors": [0.1]})
# MART / FAT_for_MART.py: WRN-34-10, 90 epochs, lr 0.01, weight decay 3.5e-3.
_MART_PAPER = dict(_PAPER, model="wrn-34-10", epochs=90, lr=0.01, weight_decay=3.5e-3,
                   lr_schedule={"milestones": [75 / 90], "factors": [0.1]})
# GAIRAT / GAIR-FAT: WRN-32-10, 120 epochs, piecewise lr, reweighting from epoch 60.
_GAIR_PAPER = dict(_PAPER, model="wrn-32-10", epochs=120, lr_schedule="piecewise")
_FAT_EVAL = dict(omega=0.0, tau="dynamic", eval_alpha=0.003)

METHODS: Dict[str, Method] = {
    "standard": Method("standard", None, CE(), _FAT_PAPER),
    "at": Method("at", PGDAttack(), CE(), _FAT_PAPER),
    "fat": Method("fat", EarlyStopAttack(dynamic_tau=DynamicTau((50, 90), (0, 1, 2), 120)), CE(),
                  dict(_FAT_PAPER, omega=0.001, tau="dynamic")),
    # TRADES: KL attack loss from a tiny normal start (σ = 0.001), as in the official code.
    "trades": Method("trades", PGDAttack("kl", "normal"), Trades(), _TRADES_PAPER),
    "fat-trades": Method("fat-trades", EarlyStopAttack(
        "kl", "normal", DynamicTau((30, 50, 70), (0, 1, 2, 3), 85)), Trades(),
        dict(_TRADES_PAPER, **_FAT_EVAL)),
    # MART (YisenWang/MART mart.py, FAT's FAT_for_MART.py): a CE attack from the same tiny normal
    # start as TRADES, x + 0.001·N(0, I) (SPEC §3).
    "mart": Method("mart", PGDAttack("ce", "normal"), Mart(), _MART_PAPER),
    "fat-mart": Method("fat-mart", EarlyStopAttack(
        "ce", "normal", DynamicTau((20, 40, 60, 80), (0, 1, 2, 3, 4), 90)), Mart(),
        dict(_MART_PAPER, **_FAT_EVAL)),
    "gairat": Method("gairat", GAPGDAttack(), GairCE(default_lam=-1.0), _GAIR_PAPER),
    # DAT: train_models.py trains 120 epochs (lr 0.01 ×0.1 at 60 and 100, Keras SGD with decay)
    # with PGD-10, ε = 0.031, α = ε/4; the paper's CIFAR-10 recipe here uses the FAT settings.
    "dat": Method("dat", FOSCAttack(), DatCE(), dict(_PAPER, model="wrn-32-10", epochs=120,
                                                    alpha=0.031 / 4, lr_schedule="fat")),
    # GAIR-RST (GAIR_RST/robust_self_training_GAIR.py): GAIR-TRADES, λ = 0 from half the epochs;
    # with extra_data= (official: 500k pseudo-labelled Tiny Images, half of every batch). Its
    # recipe: WRN-28-10, 200 epochs, batch 256, lr 0.1 cosine (Nesterov), weight decay 5e-4.
    "gair-rst": Method("gair-rst", GairRSTAttack(), GairTrades(default_lam=0.0), dict(
        _PAPER, model="wrn-28-10", epochs=200, batch_size=256, weight_decay=5e-4,
        lr_schedule="cosine")),
    # CAT: the curriculum k = 0 … steps (the official maximum: 7 on CIFAR-10, 40 on MNIST).
    "cat": Method("cat", CurriculumAttack(), CE()),
    # The official GAIR-FAT script: ω = 0.
    "gair-fat": Method("gair-fat", EarlyStopAttack(dynamic_tau=DynamicTau((40, 70), (0, 3, 6), 120)),
                       GairCE(default_lam=0.0), dict(_GAIR_PAPER, omega=0.0, tau="dynamic")),
    # NoiLIn (zjfheart/NoiLIn SAT-NoiLIn.py, TRADES-NoiLIn.py): noisy labels injected before
    # the attack; the rate 0.05 → at most 0.6 (AT) / 0.4 (TRADES). Their scripts: ResNet-18,
    # 120 epochs, lr 0.1 piecewise, weight decay 5e-4; TRADES-NoiLIn attacks with ε = 8/255 and
    # α = 2/255.
    "noilin-at": Method("noilin-at", PGDAttack(), CE(), dict(
        _PAPER, model="resnet18", epochs=120, weight_decay=5e-4, lr_schedule="piecewise"),
        label_noise=LabelNoise(max_rate=0.6)),
    "noilin-trades": Method("noilin-trades", PGDAttack("kl", "normal"), Trades(), dict(
        _PAPER, model="resnet18", epochs=120, weight_decay=5e-4, lr_schedule="piecewise",
        eps=8 / 255, alpha=2 / 255), label_noise=LabelNoise(max_rate=0.4)),
}

# Names the papers and other libraries use, for the suggestion of an unknown name (spelling
# similarity alone would offer 'dat' for 'pgd-at').
METHOD_ALIASES = {"pgd-at": "at", "pgdat": "at", "pgd": "at", "madry": "at", "pgd-10": "at",
                  "gair-at": "gairat", "gair-trades": "gair-rst", "dynamic": "dat",
                  "curriculum": "cat", "noilin": "noilin-at", "natural": "standard"}

# The method-specific options (fields of TrainConfig and keywords of Trainer), and what each is.
OPTION_WHAT: Dict[str, str] = {}
for _m in METHODS.values():
    OPTION_WHAT.update({name: o.what for name, o in _m.options.items()})
METHOD_OPTIONS = tuple(OPTION_WHAT)


def tau_at(method, tau, epoch: int, epochs: int) -> Optional[int]:
    """τ used in (0-based) ``epoch`` by ``method`` (a name or a :class:`Method`): ``tau`` itself,
    or the method's official dynamic schedule scaled to ``epochs`` (FAT 0/1/2 after 50/90 of 120;
    FAT-TRADES 0…3 after 30/50/70 of 85; FAT-MART 0…4 after 20/40/60/80 of 90; GAIR-FAT 0/3/6
    after 40/70 of 120). ``None`` for methods without τ."""
    m = get_method(method)
    if tau is None or "tau" not in m.options:
        return None
    return m.attack.epoch_values({"tau": m.options["tau"].check("tau", tau, epochs)}, epoch,
                                 epochs)["tau"]


def lam_at(method, lam, epoch: int, gair_start: Optional[int]) -> Optional[float]:
    """GAIR's λ in (0-based) ``epoch``: ``None`` before ``gair_start`` (plain CE: GAIRAT's
    burn-in) and for methods that do not reweight, else ``lam``."""
    m = get_method(method)
    if lam is None or "lam" not in m.options:
        return None
    return m.objective.epoch_values({"lam": lam, "gair_start": gair_start}, epoch, None)["lam"]
