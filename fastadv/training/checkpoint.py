"""Atomic checkpoints with every RNG state, loadable with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only (no pickled classes),
so ``weights_only=True`` loads it:

``model`` (state dict), ``optimizer``, ``scheduler`` (state dict or None), ``epoch`` (epochs
completed), ``rng`` (torch CPU, CUDA, numpy, python), ``loader`` (the loader's state), ``history``,
``config``, ``best_pgd20``, ``meta``, ``world_size`` and ``rng_per_rank`` (every DDP rank's RNG
states, rank order; None for a single process) (model name, classes, input shape: enough for ``fastadv eval``).
Writes go to ``<path>.tmp`` then ``os.replace``: a crash leaves the previous file intact.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, Optional

import numpy as np
import torch


def rng_state(cuda_device=None) -> Dict[str, Any]:
    """Every RNG a training step touches, in weights_only-safe types. ``cuda_device``: capture
    only that GPU's generator (a DDP rank's own), instead of every visible GPU's."""
    np_state = np.random.get_state(legacy=False)
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": ([] if not torch.cuda.is_available() else
                 [torch.cuda.get_rng_state(cuda_device)] if cuda_device is not None else
                 torch.cuda.get_rng_state_all()),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }


def set_rng_state(state: Dict[str, Any], cuda_device=None) -> None:
    """Restore what :func:`rng_state` captured (``cuda_device``: as there; a single captured GPU
    state is restored on ``cuda_device``, default the current GPU)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        if cuda_device is not None or len(state["cuda"]) == 1:
            torch.cuda.set_rng_state(state["cuda"][0], cuda_device if cuda_device is not None
                                     else torch.cuda.current_device())
        else:
            torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path.tmp``, fsync, then ``os.replace`` (atomic on POSIX and Windows)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: no file at {path!r}")
    return torch.load(path, map_location=map_location, weights_only=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose state dict has clean keys (strips ``torch.compile`` and DDP wrappers)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def make_checkpoint(*, model, optimizer, scheduler=None, epoch: int, history, config: Optional[dict],
                    loader_state: Optional[dict] = None, best_pgd20: Optional[float] = None,
                    meta: Optional[dict] = None, rng: Optional[Dict[str, Any]] = None,
                    rng_per_rank: Optional[list] = None, world_size: int = 1) -> Dict[str, Any]:
    """The checkpoint dict. ``rng``: default the calling process's states. Distributed runs (rank 0
    writes) pass ``rng_per_rank``, every rank's states in rank order, and ``world_size``."""
    return {
        "format": "fastadv-checkpoint-1",
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "rng": rng if rng is not None else rng_state(),
        "rng_per_rank": rng_per_rank,
        "world_size": int(world_size),
        "loader": loader_state,
        "history": list(history),
        "config": config,
        "best_pgd20": best_pgd20,
        "meta": meta or {},
    }
