"""Atomic checkpoints with every RNG state, loadable with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only (no pickled classes),
so ``weights_only=True`` loads it:

``model`` (state dict), ``optimizer``, ``scheduler`` (state dict or None), ``epoch`` (epochs
completed), ``rng`` (torch CPU, CUDA, numpy, python), ``loader`` (the loader's state), ``history``,
``config``, ``best_pgd20``, ``meta`` (model name, classes, input shape: enough for
``fastadv eval``), ``world_size``, ``rng_per_rank`` (every DDP rank's RNG states, rank order; None
for a single process) and ``runtime`` (torch's thread count, the device and the torch version: a
resume on another machine says that it is not bit-exact).
Writes go to a uniquely named temporary file, then ``os.replace``
(:func:`~fastadv.training.run_folder.atomic_write`): a crash leaves the previous file intact.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..errors import CheckpointError
from .run_folder import atomic_write


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
    """``torch.save`` through :func:`~fastadv.training.run_folder.atomic_write`: a unique temporary
    file, fsync, then ``os.replace``; a failure (a full disk) leaves ``path`` as it was."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    """Load a fastadv checkpoint safely (``weights_only=True``: tensors and plain data only, never
    code). A missing, empty, truncated or foreign file raises :class:`CheckpointError` (one line)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: no file at {path!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # empty, cut short, not a torch file, or a pickle of code
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint: {path} cannot be read ({type(e).__name__}: "
                              f"{reason[:160]}); it is truncated, damaged or not a fastadv "
                              f"checkpoint; pass a run's best.pt or last.pt written by fastadv "
                              f"train") from e
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or \
            not str(state.get("format", "")).startswith("fastadv-checkpoint") or \
            not isinstance(state.get("epoch"), int):
        raise CheckpointError(f"checkpoint: {path} is not a fastadv checkpoint (written by fastadv "
                              f"train, with 'format', 'model' and 'epoch' entries); pass a run's "
                              f"best.pt or last.pt (official FAT/GAIRAT weights: "
                              f"fastadv.models.load_official_state_dict)")
    return state


def load_model_state(model: torch.nn.Module, state_dict: Dict[str, Any], source: str) -> None:
    """``model.load_state_dict(state_dict)``, or a one-line :class:`CheckpointError` saying how the
    checkpoint's architecture differs (missing, unexpected and mis-shaped entries)."""
    model = unwrap(model)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state_dict and hasattr(state_dict[k], "shape") and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)) if v]
        raise CheckpointError(f"checkpoint: {source} holds the weights of another architecture than "
                              f"this {type(model).__name__}: {', '.join(parts)}; pass the model it "
                              f"was trained with")
    model.load_state_dict(state_dict)


def runtime_info(device=None) -> Dict[str, Any]:
    """What makes a run bit-exact on one machine and not another: torch's CPU thread count, the
    device (and GPU name) and the torch version."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"threads": torch.get_num_threads(), "device": str(device), "device_name": name,
            "torch": str(torch.__version__)}


def runtime_notes(state: Dict[str, Any], device=None) -> List[str]:
    """Where this process differs from the one that wrote ``state`` in a way that makes the rest
    of a resumed run deterministic but not bit-identical to an uninterrupted one (item 6 of the
    run-folder guarantees: the thread count, the device, the GPU, the torch version)."""
    was, now = state.get("runtime") or {}, runtime_info(device)
    notes = []
    if was.get("threads") is not None and was["threads"] != now["threads"]:
        notes.append(f"the checkpoint was written with {was['threads']} CPU threads and this "
                     f"process uses {now['threads']}: the rest of the run is deterministic, but "
                     f"not bit-identical to an uninterrupted run (threads={was['threads']} / "
                     f"--threads {was['threads']} matches it)")
    kind = lambda d: torch.device(d).type if d else d  # noqa: E731 - cuda:0 and cuda:1 alike
    if was.get("device") is not None and kind(was["device"]) != kind(now["device"]):
        notes.append(f"the checkpoint was written on device {was['device']} and this process runs "
                     f"on {now['device']}: not bit-identical to an uninterrupted run")
    for key, what in (("device_name", "GPU"), ("torch", "torch version")):
        if was.get(key) is not None and was[key] != now[key]:
            notes.append(f"the checkpoint was written on {what} {was[key]} and this process runs "
                         f"on {now[key]}: not bit-identical to an uninterrupted run")
    return notes


class NotBitExactWarning(UserWarning):
    """A resume on another thread count, device or torch: deterministic, not bit-identical."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose state dict has clean keys (strips ``torch.compile`` and DDP wrappers)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def make_checkpoint(*, model, optimizer, scheduler=None, epoch: int, history, config: Optional[dict],
                    loader_state: Optional[dict] = None, best_pgd20: Optional[float] = None,
                    meta: Optional[dict] = None, rng: Optional[Dict[str, Any]] = None,
                    rng_per_rank: Optional[list] = None, world_size: int = 1,
                    runtime: Optional[Dict[str, Any]] = None,
                    method_state: Optional[Dict[str, Any]] = None,
                    own_optimizers: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The checkpoint dict. ``rng``: default the calling process's states. Distributed runs (rank 0
    writes) pass ``rng_per_rank``, every rank's states in rank order, and ``world_size``.
    ``method_state``: what a method keeps across epochs (CAT's best model of the current k).
    ``own_optimizers``: the state dicts of the model's own optimizers by name (DS-Net's α)."""
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
        "runtime": runtime if runtime is not None else runtime_info(),
        "method_state": method_state or {},
        "own_optimizers": own_optimizers or {},
    }
