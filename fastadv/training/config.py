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
(``Method.paper`` in :mod:`fastadv.training.methods`).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import difflib
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union

from ..losses import WEIGHT_FUNCS  # noqa: F401  (one list of GAIR weight functions, for the CLI)
from .checks import check_attack_budget, check_bool, check_number, fail
from .methods import METHOD_OPTIONS, METHODS, Method, get_method
from .schedules import LR_SCHEDULES, check_milestones
from ..errors import UserTypeError, did_you_mean

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

PRESETS = (None, "paper")  # "paper": each method's own CIFAR-10 recipe (Method.paper)
AMP_MODES = (None, "bf16")

# --------------------------------------------------------------------------------- the options


@dataclass
class TrainConfig:
    """All options of :func:`fastadv.train` (``None`` = resolved default; see the module doc)."""
    method: str = "fat"                        # the method's name (see method_object)
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
    noise_type: Optional[str] = None            # NoiLIn: symmetric | pairflip
    noise_min: Optional[float] = None           # NoiLIn: first label-noise rate (0.05)
    noise_max: Optional[float] = None           # NoiLIn: largest rate (0.6 noilin-at, 0.4 trades)
    loss_weights: Optional[bool] = None         # DAT: the official adversarial-CE loss weights
    extra_data: Optional[str] = None            # a file of extra images + (pseudo-)labels (RST)
    extra_fraction: Optional[float] = None      # share of each batch from extra_data (default 0.5)
    augment: Any = True                         # the dataset's default augmentation
    train_samples: Union[int, str, None] = None  # the first N training images ("all": every one)
    eval_samples: Union[int, str, None] = None   # test images evaluated per epoch ("all": every one)
    eval_every: int = 1                         # evaluate every N epochs (0: never)
    eval_batch_size: int = 256
    eval_alpha: Optional[float] = None          # the evaluation's PGD-20 step (None: eps/4)
    eval_autoattack: Optional[str] = None       # also AutoAttack per evaluation: lite | standard
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
    # The Method itself (a built-in's or your own); not an option and not stored: ``method``
    # names it in checkpoints.
    method_object: Optional[Method] = field(default=None, repr=False, compare=False)

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name != "method_object"}


EVAL_AUTOATTACK = ("lite", "standard", "plus", "rand")
OPTION_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "method_object")
BOOL_OPTIONS = ("download", "channels_last", "compile", "sync_bn", "resume", "overwrite", "verbose",
                "verify_data", "train_nat_acc")
# Where and how a run executes, not what it trains or measures: a resume takes these from the
# call that resumes, never from the checkpoint (a path or device stored there is not followed).
RUNTIME_OPTIONS = ("data_dir", "download", "verify_data", "device", "progress", "verbose",
                   "threads", "eval_batch_size", "train_nat_acc", "out_dir", "resume", "overwrite",
                   "extra_data")
# The one recipe option a resume may change: more epochs extend the run (the lr and τ schedules
# then follow the new length from the next epoch on).
RESUME_CHANGEABLE = ("epochs",)


def unknown_options(options: Dict[str, Any]) -> None:
    """Raise ``TypeError`` naming the first unknown option (with a close match if there is one)."""
    for key in options:
        if key not in OPTION_NAMES:
            close = difflib.get_close_matches(key, OPTION_NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserTypeError(f"unknown option {key!r}{hint} (options: {', '.join(OPTION_NAMES)})")


def resolve_config(method: Union[str, Method] = "fat", **options) -> TrainConfig:
    """Fill in defaults (dataset, then preset, then the explicit options) and validate.
    ``method``: a built-in name (:data:`~fastadv.training.methods.METHODS`) or a
    :class:`~fastadv.training.methods.Method`, whose own options (τ, β, λ, …) it resolves
    (:meth:`Method.resolve <fastadv.training.methods.Method.resolve>`).

    Raises ``TypeError``/``ValueError`` naming the offending option; loads no data."""
    unknown_options(options)
    m = get_method(method)
    cfg = TrainConfig(method=m.name, method_object=m, **options)

    from ..data import DATASETS  # the data registry (lazy: keeps config import-light)
    if not isinstance(cfg.dataset, str) or cfg.dataset.lower() not in DATASETS:
        fail("dataset", f"unknown dataset {cfg.dataset!r}{did_you_mean(cfg.dataset, DATASETS)}; "
                        f"available: {', '.join(DATASETS)}")
    cfg.dataset = cfg.dataset.lower()
    if cfg.preset not in PRESETS:
        fail("preset", f"unknown preset {cfg.preset!r}; available: None, 'paper'")

    explicit = {k for k, v in options.items() if v is not None}
    defaults = dict(DATASET_DEFAULTS.get(cfg.dataset, DATASET_DEFAULTS["cifar10"]))
    if cfg.preset == "paper":
        if m.paper is None:
            fail("preset", f"method {m.name!r} has no paper recipe (Method.paper)")
        shape = DATASETS[cfg.dataset].shape
        if shape != (3, 32, 32):
            fail("preset", f"'paper' is the papers' CIFAR-10 recipe ({m.paper['model']}, "
                           f"{m.paper['epochs']} epochs) and does not fit {cfg.dataset} "
                           f"({'×'.join(map(str, shape))} images); use the dataset's defaults "
                           f"(no preset)")
        defaults.update(m.paper)
    for key, value in defaults.items():
        if key not in explicit:
            setattr(cfg, key, value)

    if cfg.random_start is not None:
        if m.attack is None:
            fail("random_start", f"method {m.name!r} runs no attack")
        rs = cfg.random_start
        if rs is False or (isinstance(rs, str) and rs.lower() in ("none", "off", "false")):
            cfg.random_start = "none"
        elif rs is True:
            cfg.random_start = "uniform"
        elif not isinstance(rs, str) or rs.lower() not in ("uniform", "normal"):
            fail("random_start", f"must be 'uniform', 'normal' or 'none' (None: the method's "
                                 f"own), got {rs!r}")
        else:
            cfg.random_start = rs.lower()
    for opt in BOOL_OPTIONS:
        check_bool(opt, getattr(cfg, opt))
    if cfg.progress is not None and not isinstance(cfg.progress, bool):
        fail("progress", f"must be True, False or None (automatic), got {cfg.progress!r}",
             UserTypeError)
    if cfg.resume and cfg.overwrite:
        fail("overwrite", "and resume=True contradict each other: resume continues the run in "
                          "out_dir, overwrite replaces it")
    check_number("threads", cfg.threads, minimum=1, integer=True, allow_none=True)
    check_number("epochs", cfg.epochs, minimum=1, integer=True)
    # The method's own options (τ, ω, β, λ, ...): defaults and checks live with the method.
    for name, value in m.resolve({k: getattr(cfg, k) for k in METHOD_OPTIONS}, cfg.epochs).items():
        setattr(cfg, name, value)
    check_number("batch_size", cfg.batch_size, minimum=1, integer=True)
    if cfg.extra_data is not None:
        if not isinstance(cfg.extra_data, (str, os.PathLike)) or not str(cfg.extra_data):
            fail("extra_data", f"must be a file path, got {cfg.extra_data!r}", UserTypeError)
        cfg.extra_data = os.fspath(cfg.extra_data)
        cfg.extra_fraction = 0.5 if cfg.extra_fraction is None else cfg.extra_fraction
        check_number("extra_fraction", cfg.extra_fraction, minimum=0, strict=True)
        if cfg.extra_fraction >= 1:
            fail("extra_fraction", f"is the share of each batch from extra_data, below 1, got "
                                   f"{cfg.extra_fraction!r}")
        if cfg.batch_size < 2:
            fail("batch_size", "must be at least 2 to mix extra data into every batch")
    elif cfg.extra_fraction is not None:
        fail("extra_fraction", "applies only with extra_data (a file of extra images)")
    check_number("lr", cfg.lr, minimum=0, strict=True)
    check_number("momentum", cfg.momentum, minimum=0)
    check_number("weight_decay", cfg.weight_decay, minimum=0)
    if cfg.eval_alpha is not None:
        check_number("eval_alpha", cfg.eval_alpha, minimum=0, strict=True)
    if cfg.eval_autoattack is not None and cfg.eval_autoattack not in EVAL_AUTOATTACK:
        fail("eval_autoattack", f"must be one of {', '.join(EVAL_AUTOATTACK)} (AutoAttack's "
                                f"versions), got {cfg.eval_autoattack!r}")
    check_attack_budget(cfg.eps, cfg.alpha, cfg.steps)
    for opt in ("train_samples", "eval_samples"):
        if isinstance(getattr(cfg, opt), str) and getattr(cfg, opt).lower() == "all":
            setattr(cfg, opt, None)  # "all": every image (None would mean the default)
        check_number(opt, getattr(cfg, opt), minimum=1, integer=True, allow_none=True)
    check_number("eval_every", cfg.eval_every, minimum=0, integer=True)
    check_number("eval_batch_size", cfg.eval_batch_size, minimum=1, integer=True)
    check_number("seed", cfg.seed, minimum=0, integer=True)
    if isinstance(cfg.lr_schedule, str):
        if cfg.lr_schedule not in LR_SCHEDULES:
            fail("lr_schedule", f"unknown {cfg.lr_schedule!r}; available: {', '.join(LR_SCHEDULES)} "
                                f"or a dict(milestones=[fractions], factors=[...])")
    elif isinstance(cfg.lr_schedule, dict):
        check_milestones(cfg.lr_schedule)
    else:
        fail("lr_schedule", f"must be a name or a dict, got {type(cfg.lr_schedule).__name__}",
             UserTypeError)
    if isinstance(cfg.amp, str) and cfg.amp.lower() in ("none", "no", "off", "fp32"):
        cfg.amp = None
    if cfg.amp not in AMP_MODES:
        fail("amp", f"must be None or 'bf16', got {cfg.amp!r}")
    if not isinstance(cfg.model, str) or not cfg.model:
        fail("model", f"must be a model name, got {cfg.model!r}")
    from ..models import available_models, is_model_name
    if not is_model_name(cfg.model):
        fail("model", f"unknown model {cfg.model!r}{did_you_mean(cfg.model, available_models())}; "
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
        fail("device", f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        fail("device", f"{device!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        fail("device", f"{device!r}: this machine has {torch.cuda.device_count()} GPU(s), "
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
    # An option the run's config lacks was added to fastadv after the run started: the run had
    # its default (e.g. no eval_autoattack), so turning it on is a change like any other.
    was = dict(recipe)
    if stored:
        was.update({f.name: plain_config({f.name: f.default})[f.name]
                    for f in dataclasses.fields(TrainConfig)
                    if f.name in OPTION_NAMES and f.name not in RUNTIME_OPTIONS
                    and f.name not in recipe and f.name != "method"
                    and f.default is not dataclasses.MISSING})
    changed = [f"{k}={plain[k]!r} (the run: {was[k]!r})" for k in sorted(explicit)
               if k in was and k not in RESUME_CHANGEABLE and plain[k] != was[k]]
    if changed:
        fail("resume", f"{', '.join(changed)} differ from the run in {where}; a resume continues "
                        f"the run as it was started and may change only `epochs` (to extend it) "
                        f"and {', '.join(f'`{o}`' for o in RUNTIME_OPTIONS if o not in ('out_dir', 'resume', 'overwrite'))}; "
                        f"start a new run in another out_dir, or pass overwrite=True to replace it")
    options = {k: v for k, v in recipe.items() if k not in explicit}
    options.update({k: getattr(cfg, k) for k in explicit if k in OPTION_NAMES and k != "method"})
    merged = resolve_config(cfg.method_object or cfg.method, **options)
    if merged.epochs < epochs_done:
        fail("epochs", f"the run in {where} has done {epochs_done} epochs; epochs={merged.epochs} "
                        f"would end before where it stands (more epochs extend it)")
    return merged


def default_out_dir(cfg: TrainConfig) -> str:
    """``runs/<dataset>-<method>[-tau<τ>]-s<seed>``: deterministic, so ``resume=True`` finds it."""
    tau = f"-tau{cfg.tau}" if cfg.tau is not None else ""
    return f"runs/{cfg.dataset}-{cfg.method}{tau}-s{cfg.seed}"
