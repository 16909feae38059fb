"""``fastadv.train(method=..., tau=..., **options) -> TrainResult``: a whole run from options.

Order of work: validate every option (:func:`~fastadv.training.config.resolve_config`), check and
lock the run folder (refusing one that holds a run unless resuming or overwriting; a resume reads
``last.pt`` and continues with its options), load the data (a missing dataset fails here, before
any training), seed, build model/optimizer/loader, restore the checkpoint, then train with a
checkpoint every epoch.

Determinism: the model is initialised after ``torch.manual_seed(seed)``; the loader's order and
augmentation of epoch e depend on ``(seed, e)`` only; the attacks' random starts and dropout draw
from the global torch RNG, whose state (with numpy's and python's) is in every checkpoint. So a
run killed at any point and resumed with ``resume=True`` ends with the same history (up to
timings) as an uninterrupted one on the CPU.

Distributed (``torchrun --nproc_per_node=N -m fastadv train ...``; ``WORLD_SIZE > 1`` in the
environment): every rank joins the process group (NCCL on GPUs, gloo on the CPU), builds the same
model from ``seed`` (DDP broadcasts rank 0's weights anyway), then reseeds its RNGs with
``rank_seed(seed, rank)``; ``batch_size`` is the global batch (``batch_size / N`` per rank, a
multiple of N required), each rank trains on its shard (:class:`ShardedBatchLoader`); rank 0 alone
prints, logs and writes checkpoints, every rank resumes from them. The process group is destroyed
when ``train`` returns (if ``train`` created it). See :mod:`fastadv.training.distributed`.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

from ..errors import RunFolderError, UserError, is_user_error
from . import distributed as dist_utils
from .checkpoint import load_checkpoint, runtime_notes
from .checks import fail
from .config import (RUNTIME_OPTIONS, TrainConfig, default_out_dir, plain_config, resolve_config,
                     resume_config, unknown_options)
from .logging import RunLogger, read_history
from .run_folder import RunFolder
from .schedules import lr_at
from .trainer import Trainer


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained ``model`` (on its device), the per-epoch
    ``history``, the resolved ``config``, the run folder and its checkpoint paths."""
    model: nn.Module
    history: List[Dict[str, Any]]
    config: TrainConfig
    out_dir: Optional[str]
    last_checkpoint: Optional[str] = None
    best_checkpoint: Optional[str] = None
    best_pgd20: Optional[float] = None

    @property
    def final(self) -> Dict[str, Any]:
        """The last epoch's row."""
        return self.history[-1] if self.history else {}


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def build_model(cfg: TrainConfig, num_classes: int, in_channels: int) -> nn.Module:
    from .. import models
    return models.create(cfg.model, num_classes=num_classes, in_channels=in_channels)


def train(method=None, tau=None, **options) -> TrainResult:
    """Train with ``method`` (a name of :data:`~fastadv.training.methods.METHODS`: standard, at,
    fat, trades, fat-trades, mart, fat-mart, gairat, gair-fat, dat, cat, gair-rst, noilin-at,
    noilin-trades; or a :class:`~fastadv.training.methods.Method` of your own). Options: see
    :class:`~fastadv.training.config.TrainConfig` (dataset, data_dir, model, preset, epochs,
    batch_size, lr, lr_schedule, momentum, weight_decay, eps, alpha, steps, the methods' own tau,
    omega, beta, lam, weight_func, gair_start, noise_type, noise_min, noise_max, loss_weights,
    random_start, extra_data, extra_fraction, augment, train_samples, eval_samples, eval_every,
    eval_alpha, eval_autoattack, train_nat_acc, seed, device, amp, channels_last, compile, sync_bn, out_dir,
    resume, overwrite, threads, verify_data, progress, verbose). Under ``torchrun`` (``WORLD_SIZE > 1``) the run is
    distributed (see the module doc).

    ``out_dir=None`` uses ``runs/<dataset>-<method>[-tau<τ>]-s<seed>``; pass ``out_dir=False`` to
    write nothing (no checkpoints, no logs). The run folder is checked and locked before any work
    (:mod:`fastadv.training.run_folder`). A folder that already holds a run is refused unless
    ``resume=True`` (continue it: its own options; only ``epochs`` may grow, and the options of
    :data:`~fastadv.training.config.RUNTIME_OPTIONS` come from this call) or ``overwrite=True``
    (delete its files and start again). ``method=None``: the method of the run being resumed
    (``resume=True`` with an ``out_dir`` holding one), else ``"fat"``."""
    if tau is not None:
        options["tau"] = tau
    unknown_options(options)  # before anything reads them (a typo is not silently dropped)
    write = options.get("out_dir", None) is not False
    if options.get("out_dir") is False:
        options["out_dir"] = None
    explicit = {k for k, v in options.items() if v is not None}
    # Resuming a named folder: the run's own options fill in what this call leaves out, before
    # anything is validated (a typed --gair-start 60 fits the run's 120 epochs, not the default 20).
    stored = _stored_config(options)
    if method is None:
        method = stored.get("method") or "fat"
    elif stored.get("method") and str(method).lower() != stored["method"].lower():
        raise RunFolderError(f"resume: {os.path.join(options['out_dir'], 'last.pt')} is a "
                             f"{stored['method']!r} run, not {method!r}")
    if stored.get("extra_data") and not options.get("extra_data"):
        fail("extra_data", f"the run in {options['out_dir']} trained with extra data "
                           f"({stored['extra_data']}); a resume reads no path from a checkpoint: "
                           f"pass extra_data= again")
    recipe = {k: v for k, v in stored.items() if k in TrainConfig.__dataclass_fields__
              and k not in RUNTIME_OPTIONS and k != "method" and k not in explicit}
    cfg = resolve_config(method, **{**recipe, **{k: v for k, v in options.items() if v is not None}})
    device, created_group = dist_utils.init_distributed(cfg.device)
    threads = torch.get_num_threads()
    try:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        return _train(cfg, explicit, write, device)
    finally:
        torch.set_num_threads(threads)  # the caller's setting again
        if created_group:
            dist_utils.cleanup_distributed()


def _stored_config(options: Dict[str, Any]) -> Dict[str, Any]:
    """The config stored in ``<out_dir>/last.pt`` when resuming a named out_dir, else {}."""
    out_dir = options.get("out_dir")
    if not out_dir or options.get("resume") is not True:
        return {}
    last = os.path.join(os.path.expanduser(os.fspath(out_dir)), "last.pt")
    if not os.path.isfile(last):
        return {}
    stored = load_checkpoint(last).get("config")
    return stored if isinstance(stored, dict) else {}


def _on_main(fn, distributed: bool, main: bool):
    """``fn()`` on rank 0, its result shared with every rank; if it raises, every rank raises (a
    rank left waiting in the next collective would hang): the user error itself, or a
    RuntimeError naming rank 0's bug. (torchrun also stops the other ranks when one exits.)"""
    if not distributed:
        return fn()
    result = error = None
    if main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - shared below, then re-raised
            error = e
    shared = error if error is None or is_user_error(error) else \
        RuntimeError(f"rank 0 failed: {type(error).__name__}: {error}")
    result, shared = dist_utils.broadcast_object((result, shared) if main else None)
    if error is not None:
        raise error
    if shared is not None:
        raise shared
    return result


def _claim(folder: RunFolder, cfg: TrainConfig) -> bool:
    """Lock ``folder`` and decide what this run does with it: True = resume from its last.pt.
    Refuses a folder that holds a run unless told to resume or overwrite it."""
    folder.open()
    files = folder.run_files()
    if cfg.overwrite:
        return False  # the old run is deleted once everything is built and checked (_run)
    if cfg.resume:
        if "last.pt" in files:
            return True
        if files:
            raise RunFolderError(f"resume: {folder.path} has no last.pt to resume from but holds "
                                 f"{', '.join(files)}; pass overwrite=True to "
                                 f"replace that run")
        return False
    if files:
        raise RunFolderError(f"out_dir: {folder.path} holds a run ({', '.join(files)}); pass "
                             f"resume=True to continue it, overwrite=True "
                             f"to replace it, or choose another out_dir")
    return False


def _load_resume_state(last: str) -> Dict[str, Any]:
    """Every rank loads ``last``; ranks that cannot see rank 0's file (multi-node without a shared
    filesystem) receive it from rank 0."""
    have = dist_utils.all_gather_objects(os.path.isfile(last))
    if all(have):
        return load_checkpoint(last)  # the same file everywhere: every rank fails alike, if at all
    return _on_main(lambda: load_checkpoint(last), True, dist_utils.get_rank() == 0)


def _train(cfg: TrainConfig, explicit, write: bool, device: torch.device) -> TrainResult:
    distributed = dist_utils.is_distributed()
    rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
    main = rank == 0
    out_dir = (cfg.out_dir or default_out_dir(cfg)) if write else None
    folder = RunFolder(out_dir) if write else None
    try:
        # The folder first: a bad, busy or occupied folder fails before any data or model exists.
        state = None
        if folder is not None and _on_main(lambda: _claim(folder, cfg), distributed, main):
            state = _load_resume_state(folder.file("last.pt"))
            stored = state.get("config") or {}
            if stored.get("method", cfg.method) != cfg.method:
                raise RunFolderError(f"resume: {folder.file('last.pt')} is a "
                                     f"{stored.get('method')!r} run, not {cfg.method!r}")
            cfg = resume_config(cfg, explicit, stored, int(state["epoch"]), folder.path)
        if write:
            cfg.out_dir = out_dir
        return _run(cfg, folder, state, device)
    finally:
        if folder is not None:
            folder.close()


def _run(cfg: TrainConfig, folder: Optional[RunFolder], state: Optional[Dict[str, Any]],
         device: torch.device) -> TrainResult:
    from ..data import BatchLoader, load_dataset
    from ..data.extra import MixedBatchLoader, extra_batch_size, fingerprint
    distributed = dist_utils.is_distributed()
    rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
    main = rank == 0
    if world > 1 and cfg.batch_size % world:
        raise UserError(f"batch_size: {cfg.batch_size} is the global batch and must be a "
                        f"multiple of the {world} processes (each trains on batch_size / {world})")

    # Data next: a missing dataset fails before anything else is built. Distributed: rank 0
    # loads (downloads) first, the others wait and then read the files it wrote.
    data = dict(data_dir=cfg.data_dir, download=cfg.download, verify=cfg.verify_data)
    load = lambda: (load_dataset(cfg.dataset, split="train", **data),  # noqa: E731
                    load_dataset(cfg.dataset, split="test", **data))
    if distributed:  # rank 0 first (it downloads); its failure reaches every rank
        first = {}
        _on_main(lambda: first.setdefault("data", load()) and None, True, main)
        train_ds, test_ds = first["data"] if main else load()
    else:
        train_ds, test_ds = load()
    if cfg.train_samples is not None:
        train_ds = train_ds.subset(slice(0, cfg.train_samples))
    extra_ds = None
    if cfg.extra_data is not None:
        from ..data.extra import load_extra_data
        extra_ds = load_extra_data(cfg.extra_data, train_ds)
    val_ds = None
    if cfg.method_object.needs_validation:  # NoiLIn, CAT: a validation split, never trained on
        train_ds, val_ds = split_validation(train_ds)

    seed_everything(cfg.seed)
    model = build_model(cfg, train_ds.num_classes, train_ds.shape[0])
    if distributed:
        # Same initial weights everywhere (above); from here on, distinct per-rank streams
        # (random starts, dropout, ω noise).
        seed_everything(dist_utils.rank_seed(cfg.seed, rank))
    from ..models import weight_parameters  # less DS-Net's α, which has its own optimizer
    optimizer = torch.optim.SGD(weight_parameters(model), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    if folder is not None:
        _on_main(lambda: folder.check_free_space(model, optimizer), distributed, main)
    loader_type = dist_utils.ShardedBatchLoader if distributed else BatchLoader
    batch = cfg.batch_size // world  # this process's share of the global batch
    common = dict(shuffle=True, augment=cfg.augment, device=device, channels_last=cfg.channels_last)
    if extra_ds is None:
        loader = loader_type(train_ds, batch_size=batch, seed=cfg.seed, **common)
    else:  # robust self-training: every batch = labelled rows + a share of the extra data
        if batch < 2:
            fail("batch_size", f"{cfg.batch_size} over {world} processes leaves {batch} row per "
                               f"process, too few to mix in extra data (2 at least)")
        b = extra_batch_size(batch, cfg.extra_fraction)
        loader = MixedBatchLoader(
            loader_type(train_ds, batch_size=batch - b, seed=cfg.seed, **common),
            loader_type(extra_ds, batch_size=b, seed=cfg.seed + 1, drop_last=True, **common))
    n_eval = len(test_ds) if cfg.eval_samples is None else min(cfg.eval_samples, len(test_ds))
    test_data = test_ds.subset(slice(0, n_eval))  # a fixed subset: the same images every epoch
    logger = RunLogger(folder.path if folder is not None and main else None,
                       verbose=cfg.verbose and main)
    meta = {"model": cfg.model, "num_classes": train_ds.num_classes,
            "in_channels": train_ds.shape[0], "input_shape": list(train_ds.shape),
            "dataset": cfg.dataset, "eps": cfg.eps, "eval_alpha": cfg.eval_alpha,
            "method": cfg.method,
            "extra_data": fingerprint(extra_ds) if extra_ds is not None else None}
    if state is not None and (state.get("meta") or {}).get("extra_data") != meta["extra_data"]:
        fail("extra_data", f"{cfg.extra_data or 'none'} is not the extra data the run in "
                           f"{cfg.out_dir} trained with ({(state.get('meta') or {}).get('extra_data')}"
                           f"); a resume continues with the same data")
    trainer = Trainer(model, optimizer, cfg.method_object, eps=cfg.eps, alpha=cfg.alpha,
                      steps=cfg.steps, tau=cfg.tau, omega=cfg.omega, beta=cfg.beta, lam=cfg.lam,
                      weight_func=cfg.weight_func, gair_start=cfg.gair_start,
                      noise_type=cfg.noise_type, noise_min=cfg.noise_min, noise_max=cfg.noise_max,
                      loss_weights=cfg.loss_weights,
                      epochs=cfg.epochs,
                      lr_fn=lambda e: lr_at(e, cfg.lr, cfg.epochs, cfg.lr_schedule),
                      device=device, amp=cfg.amp, channels_last=cfg.channels_last,
                      compile=cfg.compile, eval_alpha=cfg.eval_alpha,
                      eval_autoattack=cfg.eval_autoattack,
                      train_nat_acc=cfg.train_nat_acc,
                      progress=cfg.progress if main else False,
                      logger=logger, config=plain_config(cfg.to_dict()), meta=meta,
                      random_start="method" if cfg.random_start is None else cfg.random_start,
                      distributed=distributed, sync_bn=cfg.sync_bn)

    last = folder.file("last.pt") if folder is not None else None
    if state is not None:
        # Verbose, the differences that cost bit-exactness are printed with the other resume
        # notes; quiet, load_checkpoint warns (they are never silent).
        trainer.load_checkpoint(state, source=last, warn_not_exact=main and not logger.verbose)
        logger.print(f"resumed from {last} after epoch {trainer.epoch}")
        for note in _resume_notes(state, cfg) + trainer.not_exact_notes:
            logger.print(f"resume: {note}")
    elif cfg.resume:
        logger.print(f"resume: no checkpoint at {last}; starting from scratch")
    logger.print(_banner(cfg, train_ds, n_eval, device, world)
                 + (f" | {len(val_ds)} training images held out for validation" if val_ds else "")
                 + (f" | + {len(extra_ds)} extra images ({cfg.extra_fraction:g} of each batch, "
                    f"{cfg.extra_data})" if extra_ds is not None else ""))
    if folder is not None and cfg.overwrite:
        # Only now, with data, model, loader and trainer built and checked: an --overwrite that
        # fails on a typo must not cost the old run.
        _on_main(folder.clear, distributed, main)
    if trainer.history:
        logger.write(trainer.history)  # the files match the checkpoint, whatever was there
    trainer.fit(loader, test_data, cfg.epochs, eval_every=cfg.eval_every,
                eval_samples=None, eval_batch_size=cfg.eval_batch_size, out_dir=folder,
                loader_state=loader.state_dict, val_data=val_ds)
    _summary(logger, trainer, cfg)
    best = folder.file("best.pt") if folder is not None else None
    return TrainResult(model=trainer.model, history=trainer.history, config=cfg,
                       out_dir=cfg.out_dir if folder is not None else None,
                       last_checkpoint=last if last and os.path.isfile(last) else None,
                       best_checkpoint=best if best and os.path.isfile(best) else None,
                       best_pgd20=trainer.best_pgd20)


# The validation split of NoiLIn and CAT: their official scripts hold out 2 % (NoiLIn's CIFAR
# script of the test set; CAT's of the training set, per class); here the last 2 % of the
# training images, at least 64 so the accuracy is not too coarse.
VALIDATION_FRACTION, VALIDATION_MIN = 0.02, 64


def split_validation(train_ds):
    """``(train, validation)``: the last ``max(2 %, 64)`` training images held out."""
    n = len(train_ds)
    k = max(int(round(VALIDATION_FRACTION * n)), VALIDATION_MIN)
    if k >= n // 2:
        fail("train_samples", f"{n} training images are too few to hold out the validation "
                              f"split of {k} images; use at least {2 * k + 2}")
    return train_ds.subset(slice(0, n - k)), train_ds.subset(slice(n - k, n))


def _resume_notes(state: Dict[str, Any], cfg: TrainConfig) -> List[str]:
    """What a resume with this config changes in the run (its length)."""
    stored_epochs = (state.get("config") or {}).get("epochs")
    if stored_epochs is not None and stored_epochs != cfg.epochs:
        return [f"the run now ends after {cfg.epochs} epochs instead of {stored_epochs} (its lr "
                f"and tau schedules follow the new length from here on)"]
    return []


# The options an AT run must share with this one for its time to be a fair reference.
_SAME_SETTINGS = ("dataset", "model", "epochs", "batch_size", "train_samples", "steps", "eps",
                  "alpha", "seed", "amp", "channels_last", "compile", "eval_every", "eval_samples")


def _at_reference(cfg: TrainConfig, device=None):
    """(folder, training seconds) of a finished AT run with the same settings in the default
    place (``runs/<dataset>-at-s<seed>``), run on the same device, CPU thread count and torch
    (its times are comparable), or None."""
    import dataclasses
    at = dataclasses.replace(cfg, method="at", tau=None)
    folder = default_out_dir(at)
    last = os.path.join(folder, "last.pt")
    if os.path.abspath(folder) == os.path.abspath(cfg.out_dir or "") or not os.path.isfile(last):
        return None
    try:
        state = load_checkpoint(last)
        stored = state.get("config") or {}
        history = read_history(folder)
    except (OSError, ValueError):  # an unreadable AT run is no reference
        return None
    mine = plain_config(cfg.to_dict())
    if stored.get("method") != "at" or any(stored.get(k) != mine.get(k) for k in _SAME_SETTINGS) \
            or len(history) != cfg.epochs or runtime_notes(state, device):
        return None
    return folder, sum(r.get("seconds") or 0.0 for r in history)


def _banner(cfg: TrainConfig, train_ds, n_eval: int, device, world: int = 1) -> str:
    extra = []
    if cfg.tau is not None:
        extra.append(f"tau={cfg.tau}")
    if cfg.beta is not None:
        extra.append(f"beta={cfg.beta:g}")
    if cfg.lam is not None:
        extra.append(f"lam={cfg.lam:g} from epoch {cfg.gair_start + 1}")
    if cfg.random_start is not None:
        extra.append(f"random_start={cfg.random_start}")
    if cfg.noise_type is not None:
        extra.append(f"{cfg.noise_type} label noise {cfg.noise_min:g}..{cfg.noise_max:g}")
    where = (f"{world} processes ({device.type}{', sync BN' if cfg.sync_bn else ''}, batch "
             f"{cfg.batch_size // world} per process)" if world > 1 else str(device))
    return (f"fastadv: {cfg.method} {' '.join(extra)} | {cfg.dataset} ({len(train_ds)} train, "
            f"{n_eval} eval) | {cfg.model} | eps={cfg.eps:.4g} alpha={cfg.alpha:.4g} K={cfg.steps} "
            f"| {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr:g} ({cfg.lr_schedule}) | "
            f"{where}{' bf16' if cfg.amp else ''} | run folder: {cfg.out_dir}")


def _summary(logger: RunLogger, trainer: Trainer, cfg: TrainConfig) -> None:
    h = trainer.history
    if not h or cfg.method_object.attack is None:  # no attack, no BPs to report
        return
    total_bp = sum(r["bp_avg"] for r in h)
    total_exec = sum(r["bp_executed_avg"] for r in h)
    k_total = cfg.steps * len(h)
    logger.print(f"BPs per training image over {len(h)} epochs: {total_bp:.2f} updates "
                 f"({total_exec:.2f} executed) vs {k_total} for PGD-{cfg.steps}: "
                 f"{100 * (1 - total_bp / k_total):.1f}% saved "
                 f"({100 * (1 - total_exec / k_total):.1f}% executed)")
    train_s = sum(r.get("seconds") or 0.0 for r in h)
    eval_s = sum(r.get("eval_seconds") or 0.0 for r in h)
    line = f"time: {train_s:.1f} s training + {eval_s:.1f} s evaluation"
    ref = _at_reference(cfg, trainer.device) if cfg.method != "at" else None
    if ref is not None and train_s > 0:
        where, at_s = ref
        line += (f"; the AT run with the same settings in {where} trained in {at_s:.1f} s: this "
                 f"run took {train_s / at_s:.2f}x its time")
    logger.print(line)
    last = h[-1]
    if last.get("test_pgd20_acc") is not None:
        logger.print(f"final: natural {last['test_nat_acc']:.2f}%, PGD-{trainer.eval_steps} "
                     f"{last['test_pgd20_acc']:.2f}% (best {trainer.best_pgd20:.2f}%)")
