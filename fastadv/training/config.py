"""Training options: the method table, per-dataset defaults, presets and validation.

Every option of :func:`fastadv.train` is a field of :class:`TrainConfig`; ``None`` means "the
default for this method/dataset/preset", filled in by :func:`resolve_config`, which also validates
everything *before* any data is loaded or any training starts (errors name the option).

Per-dataset defaults (``preset=None``):

=================  ===========  ==========  ===============  ======  =====  ===========
dataset            model        eps         alpha (= eps/4)  epochs  lr     weight decay
=================  ===========  ==========  ===============  ======  =====  ===========
digits (8×8)       small_cnn    0.2         0.05             20      0.1    5e-4
mnist, fashion     small_cnn    0.3         0.075            10      0.01   5e-4
cifar10/100, svhn  preact_rn18  8/255       2/255            100     0.1    5e-4
=================  ===========  ==========  ===============  ======  =====  ===========

digits: ε = 0.2 is 3.2 of the 16 grey levels of scikit-learn's 8×8 digits — large enough that
undefended models fall to ~0 % PGD accuracy, small enough that AT keeps most natural accuracy.
All use K = 10 steps, SGD with momentum 0.9 and the ``piecewise`` lr schedule (×0.1 at 50 % and
×0.01 at 75 % of the epochs). ``preset="paper"`` switches to each paper's CIFAR-10 recipe
(:data:`PAPER_PRESETS`).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

from ..errors import UserError

# --------------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class MethodSpec:
    """How a method trains. ``attack``: ``None`` (standard training), ``"pgd"`` (PGD-K),
    ``"earlystop"`` (FAT's PGD-K-τ) or ``"gapgd"`` (GAIRAT's GA-PGD, which also returns κ).
    ``objective``: ``"ce"``, ``"trades"`` or ``"mart"``. ``gair``: the CE loss is weighted by
    GAIR weights of κ. ``attack_loss``/``random_start``: as in each method's official code."""
    name: str
    attack: Optional[str]
    objective: str
    gair: bool = False
    attack_loss: str = "ce"
    random_start: Optional[str] = "uniform"
    default_lam: Optional[float] = None
    # Dynamic τ of the official code: (boundaries, values, paper epochs); τ = values[i] where i is
    # the number of boundaries b with epoch > b (epochs 0-based, the official `epoch <= b` tests).
    dynamic_tau: Optional[Tuple[Tuple[int, ...], Tuple[int, ...], int]] = None

    @property
    def has_tau(self) -> bool:
        return self.attack == "earlystop"

    @property
    def has_beta(self) -> bool:
        return self.objective in ("trades", "mart")


METHODS: Dict[str, MethodSpec] = {
    "standard": MethodSpec("standard", None, "ce", random_start=None),
    "at": MethodSpec("at", "pgd", "ce"),
    "fat": MethodSpec("fat", "earlystop", "ce", dynamic_tau=((50, 90), (0, 1, 2), 120)),
    # TRADES: KL attack loss from a tiny normal start (σ = 0.001), as in the official code.
    "trades": MethodSpec("trades", "pgd", "trades", attack_loss="kl", random_start="normal"),
    "fat-trades": MethodSpec("fat-trades", "earlystop", "trades", attack_loss="kl",
                             random_start="normal",
                             dynamic_tau=((30, 50, 70), (0, 1, 2, 3), 85)),
    # MART (YisenWang/MART mart.py, FAT's FAT_for_MART.py): a CE attack from the same tiny normal
    # start as TRADES, x + 0.001·N(0, I), as SPEC §3 says (fastadv used a uniform start before #13).
    "mart": MethodSpec("mart", "pgd", "mart", random_start="normal"),
    "fat-mart": MethodSpec("fat-mart", "earlystop", "mart", random_start="normal",
                           dynamic_tau=((20, 40, 60, 80), (0, 1, 2, 3, 4), 90)),
    "gairat": MethodSpec("gairat", "gapgd", "ce", gair=True, default_lam=-1.0),
    "gair-fat": MethodSpec("gair-fat", "earlystop", "ce", gair=True, default_lam=0.0,
                           dynamic_tau=((40, 70), (0, 3, 6), 120)),
}

# --------------------------------------------------------------------------------- datasets

_SMALL = dict(model="small_cnn", steps=10, batch_size=128, momentum=0.9, weight_decay=5e-4,
              lr_schedule="piecewise", eval_samples=1000)
DATASET_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "digits": dict(_SMALL, eps=0.2, alpha=0.05, epochs=20, lr=0.1),
    "mnist": dict(_SMALL, eps=0.3, alpha=0.075, epochs=10, lr=0.01),
    "fashion-mnist": dict(_SMALL, eps=0.1, alpha=0.025, epochs=10, lr=0.01),
}
for _name in ("cifar10", "cifar100", "svhn"):
    DATASET_DEFAULTS[_name] = dict(model="preact_resnet18", eps=8 / 255, alpha=2 / 255, steps=10,
                                   batch_size=128, epochs=100, lr=0.1 if _name != "svhn" else 0.01,
                                   momentum=0.9, weight_decay=5e-4, lr_schedule="piecewise",
                                   eval_samples=1000)

# --------------------------------------------------------------------------------- presets

# Each paper's CIFAR-10 recipe (the official repositories' defaults). lr_schedule milestones are
# fractions of the epochs (so a shortened run keeps the shape), factors multiply the base lr.
_FAT_LR = {"milestones": [60 / 120, 90 / 120, 110 / 120], "factors": [0.1, 0.01, 0.005]}
_TRADES_LR = {"milestones": [75 / 85], "factors": [0.1]}
_MART_LR = {"milestones": [75 / 90], "factors": [0.1]}
_COMMON_PAPER = dict(eps=0.031, alpha=0.007, steps=10, batch_size=128, momentum=0.9,
                     weight_decay=2e-4, lr=0.1)
PAPER_PRESETS: Dict[str, Dict[str, Any]] = {
    # FAT (Zhang et al. 2020): WRN-32-10, 120 epochs, ω = 0.001, dynamic τ.
    "standard": dict(_COMMON_PAPER, model="wrn-32-10", epochs=120, lr_schedule=_FAT_LR),
    "at": dict(_COMMON_PAPER, model="wrn-32-10", epochs=120, lr_schedule=_FAT_LR),
    "fat": dict(_COMMON_PAPER, model="wrn-32-10", epochs=120, lr_schedule=_FAT_LR, omega=0.001,
                tau="dynamic"),
    # TRADES / FAT-TRADES: WRN-34-10, 85 epochs, β = 6. FAT_for_TRADES.py: ω = 0, and its
    # PGD-20 / C&W∞ evaluation steps by 0.003 (not ε/4).
    "trades": dict(_COMMON_PAPER, model="wrn-34-10", epochs=85, lr_schedule=_TRADES_LR),
    "fat-trades": dict(_COMMON_PAPER, model="wrn-34-10", epochs=85, lr_schedule=_TRADES_LR,
                       omega=0.0, tau="dynamic", eval_alpha=0.003),
    # MART / FAT-MART: WRN-34-10, 90 epochs, lr 0.01, weight decay 3.5e-3.
    "mart": dict(_COMMON_PAPER, model="wrn-34-10", epochs=90, lr=0.01, weight_decay=3.5e-3,
                 lr_schedule=_MART_LR),
    "fat-mart": dict(_COMMON_PAPER, model="wrn-34-10", epochs=90, lr=0.01, weight_decay=3.5e-3,
                     lr_schedule=_MART_LR, omega=0.0, tau="dynamic", eval_alpha=0.003),
    # GAIRAT / GAIR-FAT: WRN-32-10, 120 epochs, piecewise lr, reweighting from epoch 60.
    "gairat": dict(_COMMON_PAPER, model="wrn-32-10", epochs=120, lr_schedule="piecewise"),
    "gair-fat": dict(_COMMON_PAPER, model="wrn-32-10", epochs=120, lr_schedule="piecewise",
                     omega=0.0, tau="dynamic"),  # the official GAIR-FAT script: ω = 0
}
PRESETS = (None, "paper")
LR_SCHEDULES = ("constant", "piecewise", "cosine", "fat")
from ..losses import WEIGHT_FUNCS  # noqa: E402  (one list of GAIR weight functions)
AMP_MODES = (None, "bf16")

# --------------------------------------------------------------------------------- the options


@dataclass
class TrainConfig:
    """All options of :func:`fastadv.train` (``None`` = resolved default; see the module doc)."""
    method: str = "fat"
    tau: Union[int, str, None] = None          # int >= 0 or "dynamic"; FAT methods only (default 1)
    dataset: str = "digits"
    data_dir: Optional[str] = None
    download: bool = True
    model: Optional[str] = None
    preset: Optional[str] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    lr_schedule: Union[str, dict, None] = None  # a name of LR_SCHEDULES or {milestones, factors}
    momentum: Optional[float] = None
    weight_decay: Optional[float] = None
    eps: Optional[float] = None
    alpha: Optional[float] = None
    steps: Optional[int] = None
    omega: Optional[float] = None               # FAT's ω·N(0, I) exploration noise
    random_start: Optional[str] = None          # None: the method's; "uniform"|"normal"|"none"
    beta: Optional[float] = None                # TRADES/MART (default 6)
    lam: Optional[float] = None                 # GAIR λ (default −1 gairat, 0 gair-fat)
    weight_func: Optional[str] = None           # GAIR: tanh | sigmoid | discrete
    gair_start: Optional[int] = None            # GAIR: first reweighted epoch (0-based; default E/2)
    augment: Any = True                         # the dataset's default augmentation
    train_samples: Union[int, str, None] = None  # the first N training images ("all": every one)
    eval_samples: Union[int, str, None] = None   # test images evaluated per epoch ("all": every one)
    eval_every: int = 1                         # evaluate every N epochs (0: never)
    eval_batch_size: int = 256
    eval_alpha: Optional[float] = None          # the evaluation's PGD-20 step (None: eps/4)
    train_nat_acc: bool = True                  # one extra eval forward per step: train_nat_acc
    seed: int = 0
    device: Optional[str] = None                # default: cuda if available, else cpu
    amp: Optional[str] = None                   # None or "bf16" (autocast)
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False                       # DDP: SyncBatchNorm (CUDA) instead of per-rank BN
    out_dir: Optional[str] = None               # run folder (default runs/<dataset>-<method>...)
    resume: bool = False                        # continue the run in out_dir (its own options)
    overwrite: bool = False                     # replace the run in out_dir (its files are deleted)
    threads: Optional[int] = None               # torch's CPU threads for this run (None: as set)
    verify_data: bool = True                    # check the official checksums of pickled datasets
    progress: Optional[bool] = None             # None: a tqdm bar only when stdout is a terminal
    verbose: bool = True                        # print the per-epoch table

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))
BOOL_OPTIONS = ("download", "channels_last", "compile", "sync_bn", "resume", "overwrite", "verbose",
                "verify_data", "train_nat_acc")
# Where and how a run executes, not what it trains or measures: a resume takes these from the
# call that resumes, never from the checkpoint (a path or device stored there is not followed).
RUNTIME_OPTIONS = ("data_dir", "download", "verify_data", "device", "progress", "verbose",
                   "threads", "eval_batch_size", "train_nat_acc", "out_dir", "resume", "overwrite")
# The one recipe option a resume may change: more epochs extend the run (the lr and τ schedules
# then follow the new length from the next epoch on).
RESUME_CHANGEABLE = ("epochs",)


def _fail(option: str, msg: str, exc=UserError):
    raise exc(f"{option}: {msg}")


def _check_number(option: str, value, *, minimum=None, strict=False, integer=False, allow_none=False):
    if value is None:
        if allow_none:
            return
        _fail(option, "is required")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and not isinstance(value, int)):
        _fail(option, f"must be {'an int' if integer else 'a number'}, got {value!r}", TypeError)
    if not math.isfinite(value):
        _fail(option, f"must be finite, got {value!r}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        _fail(option, f"must be {'>' if strict else '>='} {minimum}, got {value!r}")


def _did_you_mean(name, names) -> str:
    close = difflib.get_close_matches(str(name).lower(), list(names), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_options(options: Dict[str, Any]) -> None:
    """Raise ``TypeError`` naming the first unknown option (with a close match if there is one)."""
    for key in options:
        if key not in OPTION_NAMES:
            close = difflib.get_close_matches(key, OPTION_NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"unknown option {key!r}{hint} (options: {', '.join(OPTION_NAMES)})")


def resolve_config(method: str = "fat", **options) -> TrainConfig:
    """Fill in defaults (dataset, then preset, then the explicit options) and validate.

    Raises ``TypeError``/``ValueError`` naming the offending option; loads no data."""
    unknown_options(options)
    if not isinstance(method, str) or method.lower() not in METHODS:
        _fail("method", f"unknown method {method!r}{_did_you_mean(method, METHODS)}; available: "
                        f"{', '.join(METHODS)}")
    method = method.lower()
    spec = METHODS[method]
    cfg = TrainConfig(method=method, **options)

    from ..data import DATASETS  # the data registry (lazy: keeps config import-light)
    if not isinstance(cfg.dataset, str) or cfg.dataset.lower() not in DATASETS:
        _fail("dataset", f"unknown dataset {cfg.dataset!r}{_did_you_mean(cfg.dataset, DATASETS)}; "
                         f"available: {', '.join(DATASETS)}")
    cfg.dataset = cfg.dataset.lower()
    if cfg.preset not in PRESETS:
        _fail("preset", f"unknown preset {cfg.preset!r}; available: None, 'paper'")

    explicit = {k for k, v in options.items() if v is not None}
    defaults = dict(DATASET_DEFAULTS.get(cfg.dataset, DATASET_DEFAULTS["cifar10"]))
    if cfg.preset == "paper":
        shape = DATASETS[cfg.dataset].shape
        if shape != (3, 32, 32):
            _fail("preset", f"'paper' is the papers' CIFAR-10 recipe ({PAPER_PRESETS[method]['model']}, "
                            f"{PAPER_PRESETS[method]['epochs']} epochs) and does not fit "
                            f"{cfg.dataset} ({'×'.join(map(str, shape))} images); use the dataset's "
                            f"defaults (no preset)")
        defaults.update(PAPER_PRESETS[method])
    for key, value in defaults.items():
        if key not in explicit:
            setattr(cfg, key, value)

    # Method-specific options: given where the method has none -> an error, not a silent no-op.
    if cfg.tau is not None and "tau" in explicit and not spec.has_tau:
        _fail("tau", f"method {method!r} has no early stopping; tau applies to "
                     f"{', '.join(m for m, s in METHODS.items() if s.has_tau)}")
    if cfg.omega is not None and "omega" in explicit and not spec.has_tau:
        _fail("omega", f"method {method!r} has no FAT attack; omega applies to the fat* methods")
    if cfg.beta is not None and not spec.has_beta:
        _fail("beta", f"method {method!r} has no beta; beta applies to trades, fat-trades, mart, "
                      f"fat-mart")
    for opt in ("lam", "weight_func", "gair_start"):
        if getattr(cfg, opt) is not None and not spec.gair:
            _fail(opt, f"method {method!r} does not reweight; {opt} applies to gairat, gair-fat")
    if cfg.random_start is not None:
        if spec.attack is None:
            _fail("random_start", f"method {method!r} runs no attack")
        rs = cfg.random_start
        if rs is False or (isinstance(rs, str) and rs.lower() in ("none", "off", "false")):
            cfg.random_start = "none"
        elif rs is True:
            cfg.random_start = "uniform"
        elif not isinstance(rs, str) or rs.lower() not in ("uniform", "normal"):
            _fail("random_start", f"must be 'uniform', 'normal' or 'none' (None: the method's "
                                  f"own), got {rs!r}")
        else:
            cfg.random_start = rs.lower()
    for opt in BOOL_OPTIONS:  # resume="no" would be truthy: only True and False are accepted
        if not isinstance(getattr(cfg, opt), bool):
            _fail(opt, f"must be True or False, got {getattr(cfg, opt)!r}", TypeError)
    if cfg.progress is not None and not isinstance(cfg.progress, bool):
        _fail("progress", f"must be True, False or None (automatic), got {cfg.progress!r}", TypeError)
    if cfg.resume and cfg.overwrite:
        _fail("overwrite", "and resume=True contradict each other: resume continues the run in "
                           "out_dir, overwrite replaces it")
    _check_number("threads", cfg.threads, minimum=1, integer=True, allow_none=True)
    if not spec.has_tau:
        cfg.tau = None
        cfg.omega = None
    else:
        cfg.tau = 1 if cfg.tau is None else cfg.tau
        cfg.omega = 0.0 if cfg.omega is None else cfg.omega
        if isinstance(cfg.tau, str):
            if cfg.tau.lower() != "dynamic":
                _fail("tau", f"must be an int >= 0 or 'dynamic', got {cfg.tau!r}")
            cfg.tau = "dynamic"
        else:
            _check_number("tau", cfg.tau, minimum=0, integer=True)
        _check_number("omega", cfg.omega, minimum=0)
    if spec.has_beta:
        cfg.beta = 6.0 if cfg.beta is None else cfg.beta
        _check_number("beta", cfg.beta, minimum=0)
    if spec.gair:
        cfg.lam = spec.default_lam if cfg.lam is None else cfg.lam
        if isinstance(cfg.lam, bool) or not isinstance(cfg.lam, (int, float)) or math.isnan(cfg.lam):
            _fail("lam", f"must be a number (inf allowed: no reweighting), got {cfg.lam!r}", TypeError)
        cfg.weight_func = cfg.weight_func or "tanh"
        if cfg.weight_func not in WEIGHT_FUNCS:
            _fail("weight_func", f"unknown {cfg.weight_func!r}; available: {', '.join(WEIGHT_FUNCS)}")

    _check_number("epochs", cfg.epochs, minimum=1, integer=True)
    if spec.gair:
        cfg.gair_start = cfg.epochs // 2 if cfg.gair_start is None else cfg.gair_start
        _check_number("gair_start", cfg.gair_start, minimum=0, integer=True)
        if cfg.gair_start >= cfg.epochs:
            _fail("gair_start", f"{cfg.gair_start} is not before the end of the {cfg.epochs} epochs "
                                f"(0-based: the first reweighted epoch), so {method} would never "
                                f"reweight; use 0 … {cfg.epochs - 1}")
    _check_number("batch_size", cfg.batch_size, minimum=1, integer=True)
    _check_number("lr", cfg.lr, minimum=0, strict=True)
    _check_number("momentum", cfg.momentum, minimum=0)
    _check_number("weight_decay", cfg.weight_decay, minimum=0)
    if cfg.eval_alpha is not None:
        _check_number("eval_alpha", cfg.eval_alpha, minimum=0, strict=True)
    for opt in ("eps", "alpha"):  # images are in [0, 1]: a step or radius above 1 is a slip
        _check_number(opt, getattr(cfg, opt), minimum=0)
        if getattr(cfg, opt) > 1:
            _fail(opt, f"{getattr(cfg, opt):g} is larger than the whole [0, 1] pixel range; did "
                       f"you mean {getattr(cfg, opt):g}/255 = {getattr(cfg, opt) / 255:.4g}?")
    _check_number("steps", cfg.steps, minimum=1, integer=True)
    for opt in ("train_samples", "eval_samples"):
        if isinstance(getattr(cfg, opt), str) and getattr(cfg, opt).lower() == "all":
            setattr(cfg, opt, None)  # "all": every image (None would mean the default)
        _check_number(opt, getattr(cfg, opt), minimum=1, integer=True, allow_none=True)
    _check_number("eval_every", cfg.eval_every, minimum=0, integer=True)
    _check_number("eval_batch_size", cfg.eval_batch_size, minimum=1, integer=True)
    _check_number("seed", cfg.seed, minimum=0, integer=True)
    if isinstance(cfg.lr_schedule, str):
        if cfg.lr_schedule not in LR_SCHEDULES:
            _fail("lr_schedule", f"unknown {cfg.lr_schedule!r}; available: {', '.join(LR_SCHEDULES)} "
                                 f"or a dict(milestones=[fractions], factors=[...])")
    elif isinstance(cfg.lr_schedule, dict):
        from .schedules import check_milestones
        check_milestones(cfg.lr_schedule)
    else:
        _fail("lr_schedule", f"must be a name or a dict, got {type(cfg.lr_schedule).__name__}",
              TypeError)
    if isinstance(cfg.amp, str) and cfg.amp.lower() in ("none", "no", "off", "fp32"):
        cfg.amp = None
    if cfg.amp not in AMP_MODES:
        _fail("amp", f"must be None or 'bf16', got {cfg.amp!r}")
    if not isinstance(cfg.model, str) or not cfg.model:
        _fail("model", f"must be a model name, got {cfg.model!r}")
    from ..models import available_models, is_model_name
    if not is_model_name(cfg.model):
        _fail("model", f"unknown model {cfg.model!r}{_did_you_mean(cfg.model, available_models())}; "
                       f"available: {', '.join(available_models())}")
    check_device(cfg.device)
    return cfg


def check_device(device) -> None:
    """``None`` (automatic), or a device this machine has: cpu, cuda, cuda:N."""
    if device is None:
        return
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):  # torch's message lists 20 device types
        _fail("device", f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        _fail("device", f"{device!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        _fail("device", f"{device!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                        f"cuda:0 … cuda:{torch.cuda.device_count() - 1}")


def plain_config(d: Dict[str, Any]) -> Dict[str, Any]:
    """Option values in weights_only-safe, comparable types: str/int/float/bool/None, and lists
    (never tuples) and dicts of them; anything else as its str."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
    return {k: plain(v) for k, v in d.items()}


def resume_config(cfg: TrainConfig, explicit, stored: Dict[str, Any], epochs_done: int,
                  where: str) -> TrainConfig:
    """The config of a resumed run: the stored run's recipe, with this call's runtime options
    (:data:`RUNTIME_OPTIONS`) and, if given, more ``epochs``. ``explicit``: the options this call
    set. An explicit recipe option that differs from the stored run's raises, listing every one."""
    recipe = {k: v for k, v in stored.items()
              if k in OPTION_NAMES and k not in RUNTIME_OPTIONS and k != "method"}
    plain = plain_config(cfg.to_dict())
    changed = [f"{k}={plain[k]!r} (the run: {recipe[k]!r})" for k in sorted(explicit)
               if k in recipe and k not in RESUME_CHANGEABLE and plain[k] != recipe[k]]
    if changed:
        _fail("resume", f"{', '.join(changed)} differ from the run in {where}; a resume continues "
                        f"the run as it was started and may change only `epochs` (to extend it) "
                        f"and {', '.join(f'`{o}`' for o in RUNTIME_OPTIONS if o not in ('out_dir', 'resume', 'overwrite'))}; "
                        f"start a new run in another out_dir, or pass overwrite=True to replace it")
    options = {k: v for k, v in recipe.items() if k not in explicit}
    options.update({k: getattr(cfg, k) for k in explicit if k in OPTION_NAMES and k != "method"})
    merged = resolve_config(cfg.method, **options)
    if merged.epochs < epochs_done:
        _fail("epochs", f"the run in {where} has done {epochs_done} epochs; epochs={merged.epochs} "
                        f"would end before where it stands (more epochs extend it)")
    return merged


def default_out_dir(cfg: TrainConfig) -> str:
    """``runs/<dataset>-<method>[-tau<τ>]-s<seed>``: deterministic, so ``resume=True`` finds it."""
    tau = f"-tau{cfg.tau}" if cfg.tau is not None else ""
    return f"runs/{cfg.dataset}-{cfg.method}{tau}-s{cfg.seed}"
