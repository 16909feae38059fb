"""``fastadv.train(method=..., tau=..., **options) -> TrainResult``: a whole run from options.

Order of work: validate every option (:func:`~fastadv.training.config.resolve_config`), load the
data (a missing dataset fails here, before any training), seed, build model/optimizer/loader,
resume from ``<out_dir>/last.pt`` if asked, then train with a checkpoint every epoch.

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

from . import distributed as dist_utils
from .checkpoint import load_checkpoint
from .config import TrainConfig, default_out_dir, resolve_config
from .logging import RunLogger
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


def train(method: str = "fat", tau=None, **options) -> TrainResult:
    """Train with ``method`` (standard, at, fat, trades, fat-trades, mart, fat-mart, gairat,
    gair-fat). Options: see :class:`~fastadv.training.config.TrainConfig` (dataset, data_dir,
    model, preset, epochs, batch_size, lr, lr_schedule, momentum, weight_decay, eps, alpha, steps,
    omega, random_start, beta, lam, weight_func, gair_start, augment, train_samples, eval_samples,
    eval_every, seed, device, amp, channels_last, compile, sync_bn, out_dir, resume, progress,
    verbose). Under ``torchrun`` (``WORLD_SIZE > 1``) the run is distributed (see the module doc).

    ``out_dir=None`` uses ``runs/<dataset>-<method>[-tau<τ>]-s<seed>``; pass ``out_dir=False`` to
    write nothing (no checkpoints, no logs)."""
    if tau is not None:
        options["tau"] = tau
    write = options.get("out_dir", None) is not False
    if options.get("out_dir") is False:
        options["out_dir"] = None
    cfg = resolve_config(method, **options)
    world = dist_utils.env_world_size() if not dist_utils.is_distributed() else \
        dist_utils.get_world_size()
    if world > 1 and cfg.batch_size % world:
        raise ValueError(f"batch_size: {cfg.batch_size} is the global batch and must be a "
                         f"multiple of the {world} processes (each trains on batch_size / {world})")
    device, created_group = dist_utils.init_distributed(cfg.device)
    try:
        return _train(cfg, write, device)
    finally:
        if created_group:
            dist_utils.cleanup_distributed()


def _train(cfg: TrainConfig, write: bool, device: torch.device) -> TrainResult:
    from ..data import BatchLoader, load_dataset
    distributed = dist_utils.is_distributed()
    rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
    main = rank == 0

    # Data first: a missing dataset fails before anything else is built. Distributed: rank 0
    # loads (downloads) first, the others wait and then read the files it wrote.
    if distributed and not main:
        dist_utils.barrier()
    train_ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir, split="train", download=cfg.download)
    test_ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir, split="test", download=cfg.download)
    if distributed and main:
        dist_utils.barrier()
    if cfg.train_samples is not None:
        train_ds = train_ds.subset(slice(0, cfg.train_samples))
    out_dir = (cfg.out_dir or default_out_dir(cfg)) if write else None
    if write:
        cfg.out_dir = out_dir

    seed_everything(cfg.seed)
    model = build_model(cfg, train_ds.num_classes, train_ds.shape[0])
    if distributed:
        # Same initial weights everywhere (above); from here on, distinct per-rank streams
        # (random starts, dropout, ω noise).
        seed_everything(dist_utils.rank_seed(cfg.seed, rank))
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    if distributed:
        loader = dist_utils.ShardedBatchLoader(
            train_ds, batch_size=cfg.batch_size // world, shuffle=True, augment=cfg.augment,
            device=device, seed=cfg.seed, channels_last=cfg.channels_last)
    else:
        loader = BatchLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, augment=cfg.augment,
                             device=device, seed=cfg.seed, channels_last=cfg.channels_last)
    n_eval = len(test_ds) if cfg.eval_samples is None else min(cfg.eval_samples, len(test_ds))
    test_data = test_ds.subset(slice(0, n_eval))  # a fixed subset: the same images every epoch
    logger = RunLogger(out_dir if main else None, verbose=cfg.verbose and main)
    meta = {"model": cfg.model, "num_classes": train_ds.num_classes,
            "in_channels": train_ds.shape[0], "dataset": cfg.dataset, "eps": cfg.eps,
            "method": cfg.method}
    trainer = Trainer(model, optimizer, cfg.method, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps,
                      tau=cfg.tau, omega=cfg.omega or 0.0, beta=cfg.beta, lam=cfg.lam,
                      weight_func=cfg.weight_func or "tanh", gair_start=cfg.gair_start,
                      epochs=cfg.epochs,
                      lr_fn=lambda e: lr_at(e, cfg.lr, cfg.epochs, cfg.lr_schedule),
                      device=device, amp=cfg.amp, channels_last=cfg.channels_last,
                      compile=cfg.compile, progress=cfg.progress if main else False,
                      logger=logger, config=_plain(cfg.to_dict()), meta=meta,
                      random_start="method" if cfg.random_start is None else cfg.random_start,
                      distributed=distributed, sync_bn=cfg.sync_bn)

    last = os.path.join(out_dir, "last.pt") if out_dir else None
    if cfg.resume:
        # Every rank loads the checkpoint; ranks that cannot see rank 0's file (multi-node
        # without a shared filesystem) receive it from rank 0.
        have = dist_utils.all_gather_objects(bool(last and os.path.isfile(last)))
        if have[0]:
            if all(have):
                state = trainer.load_checkpoint(last)
            else:
                state = trainer.load_checkpoint(dist_utils.broadcast_object(
                    load_checkpoint(last) if main else None))
            if state.get("config") and state["config"].get("method") != cfg.method:
                raise ValueError(f"resume: {last} is a {state['config'].get('method')!r} run, "
                                 f"not {cfg.method!r}")
            logger.print(f"resumed from {last} after epoch {trainer.epoch}")
        else:
            logger.print(f"resume: no checkpoint at {last}; starting from scratch")
    logger.print(_banner(cfg, train_ds, n_eval, device, world))
    if trainer.history:
        logger.write(trainer.history)  # the files match the checkpoint, whatever was there
    trainer.fit(loader, test_data, cfg.epochs, eval_every=cfg.eval_every,
                eval_samples=None, eval_batch_size=cfg.eval_batch_size, out_dir=out_dir,
                loader_state=loader.state_dict)
    _summary(logger, trainer, cfg)
    best = os.path.join(out_dir, "best.pt") if out_dir else None
    return TrainResult(model=trainer.model, history=trainer.history, config=cfg, out_dir=out_dir,
                       last_checkpoint=last if last and os.path.isfile(last) else None,
                       best_checkpoint=best if best and os.path.isfile(best) else None,
                       best_pgd20=trainer.best_pgd20)


def _plain(d: Dict[str, Any]) -> Dict[str, Any]:
    """Config values in weights_only-safe types (str/int/float/bool/None/list/dict)."""
    out = {}
    for k, v in d.items():
        out[k] = v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)
    return out


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
    where = (f"{world} processes ({device.type}{', sync BN' if cfg.sync_bn else ''}, batch "
             f"{cfg.batch_size // world} per process)" if world > 1 else str(device))
    return (f"fastadv: {cfg.method} {' '.join(extra)} | {cfg.dataset} ({len(train_ds)} train, "
            f"{n_eval} eval) | {cfg.model} | eps={cfg.eps:.4g} alpha={cfg.alpha:.4g} K={cfg.steps} "
            f"| {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr:g} ({cfg.lr_schedule}) | "
            f"{where}{' bf16' if cfg.amp else ''} | run folder: {cfg.out_dir}")


def _summary(logger: RunLogger, trainer: Trainer, cfg: TrainConfig) -> None:
    h = trainer.history
    if not h or cfg.method == "standard":  # no attack, no BPs to report
        return
    total_bp = sum(r["bp_avg"] for r in h)
    total_exec = sum(r["bp_executed_avg"] for r in h)
    k_total = cfg.steps * len(h)
    logger.print(f"BPs per training image over {len(h)} epochs: {total_bp:.2f} updates "
                 f"({total_exec:.2f} executed) vs {k_total} for PGD-{cfg.steps}: "
                 f"{100 * (1 - total_bp / k_total):.1f}% saved "
                 f"({100 * (1 - total_exec / k_total):.1f}% executed)")
    last = h[-1]
    if last.get("test_pgd20_acc") is not None:
        logger.print(f"final: natural {last['test_nat_acc']:.2f}%, PGD-{trainer.eval_steps} "
                     f"{last['test_pgd20_acc']:.2f}% (best {trainer.best_pgd20:.2f}%)")
