"""Multi-GPU and multi-node training on ``torch.distributed`` (DDP, launched by ``torchrun``).

``torchrun --nproc_per_node=8 -m fastadv train ...`` starts one process per GPU; each reads
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` from the environment
(:func:`init_distributed`). With ``WORLD_SIZE`` unset or 1 nothing here changes anything: the run is
the single-process one.

Design (the contract every piece below keeps):

* **Sharding** (:class:`ShardedBatchLoader`): every rank computes the *same* per-epoch plan
  (permutation, crop offsets, flips from ``(seed, epoch)``, exactly :class:`BatchLoader`'s), pads
  it to a multiple of the world size by repeating its first positions (as
  ``DistributedSampler(drop_last=False)`` does: nothing is skipped, at most ``world_size - 1``
  samples appear twice in an epoch, and those duplicates are trained on and counted like any other
  sample), and rank ``r`` takes positions ``r, r + W, r + 2W, …``. All ranks get the same number of
  samples and of batches. With a per-rank batch ``b``, the ranks' ``i``-th batches together are
  exactly the ``i``-th batch of size ``W·b`` of the one-process loader (same samples, same
  augmentation), so ``fastadv.train``'s ``batch_size`` is the *global* batch.
* **Attack** per rank, on the rank's shard, on the underlying module (``ddp.module``) in eval mode:
  no gradient all-reduce, no DDP hooks during ``autograd.grad`` w.r.t. the inputs. Early-stopped
  PGD compacts each rank's batch independently. The training forward/backward goes through the
  DDP wrapper (gradients averaged over ranks: with equal per-rank batches, the global batch mean).
* **Statistics**: per-epoch sums (loss·n, correct counts, Σ updates, Σ checks, n) are all-reduced,
  then divided: ``bp_avg = Σ_ranks updates / Σ_ranks samples``, as on one GPU.
* **BatchNorm**: per-rank batch statistics (``broadcast_buffers=False``); the running statistics
  are averaged over the ranks at the end of every epoch (before evaluation and checkpointing), so
  all ranks hold identical models at epoch boundaries. ``sync_bn=True`` converts the model to
  ``SyncBatchNorm`` (CUDA/NCCL only) for global batch statistics.
* **RNG**: every rank seeds the model initialisation with ``seed`` (and DDP broadcasts rank 0's
  weights anyway), then reseeds its global RNGs with :func:`rank_seed` ``(seed, rank)`` so that the
  ranks' random starts and dropout differ. Checkpoints hold every rank's RNG states (gathered to
  rank 0); a resume with the same world size restores each rank's own, so it continues exactly;
  with another world size the RNGs are reseeded with ``rank_seed(seed, rank, epoch)``.
* **Files**: metrics, logs and checkpoints are written by rank 0 only; every rank loads the
  checkpoint on resume.
"""
from __future__ import annotations

import datetime
import gc
import math
import os
from typing import Any, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from ..data.loader import BatchLoader
from ..errors import UserError


# --------------------------------------------------------------------------- process group
def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UserError(f"WORLD_SIZE must be an int, got {os.environ.get('WORLD_SIZE')!r}")


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(device: Optional[str] = None, backend: Optional[str] = None,
                     timeout_s: float = 1800.0):
    """Join the process group described by torchrun's environment variables when
    ``WORLD_SIZE > 1``; return ``(device, initialised_here)``.

    ``device``: ``None`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU; an explicit
    ``"cuda"`` also becomes ``cuda:LOCAL_RANK``. ``backend``: default ``nccl`` on GPUs, ``gloo`` on
    the CPU. With ``WORLD_SIZE`` unset or 1, or a process group already initialised, nothing is
    initialised (``initialised_here`` is False)."""
    world = env_world_size()
    try:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UserError(f"LOCAL_RANK must be an int (torchrun sets it), got "
                        f"{os.environ['LOCAL_RANK']!r}") from None
    if device is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and (world > 1 or is_distributed()):
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return dev, False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise UserError(f"WORLD_SIZE={world} but {var} is not set: launch with torchrun "
                            f"(torchrun --nproc_per_node=N -m fastadv train ...)")
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    kwargs = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_s)}
    if backend == "nccl" and dev.type == "cuda":
        kwargs["device_id"] = dev
    try:
        dist.init_process_group(**kwargs)
    except TypeError:  # an older torch without device_id
        kwargs.pop("device_id", None)
        dist.init_process_group(**kwargs)
    return dev, True


def cleanup_distributed() -> None:
    """Leave the process group: a barrier first (no rank tears down its connections while a peer
    still talks to it), then ``destroy_process_group``. Unreferenced DDP wrappers are collected
    first, while the group they hold is still alive (a reducer outliving its gloo group is the
    suspected cause of a rare "terminate called" abort at exit, seen once in CI, not reproduced)."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        try:
            if dist.get_world_size() > 1:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _comm_device(fallback: torch.device) -> torch.device:
    """Where collective tensors live: the GPU for NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if fallback is None else fallback


def all_reduce_sum(t: Tensor) -> Tensor:
    """Σ over ranks of ``t`` (a new tensor on ``t``'s device; ``t`` itself when not distributed)."""
    if not is_distributed():
        return t
    dev = _comm_device(t.device)
    out = t.detach().to(dev, copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def all_reduce_max(value: float) -> float:
    if not is_distributed():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(torch.device("cpu")))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_gather_objects(obj: Any) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def rank_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """The seed of rank ``rank``'s global RNGs (random starts, dropout, FAT's ω noise): distinct per
    rank, a pure function of ``(seed, rank, epoch)``. ``epoch`` > 0 is used only when a checkpoint
    written with another world size is resumed (its per-rank RNG states do not fit)."""
    return (int(seed) * 1000003 + (int(rank) + 1) * 7919 + int(epoch) * 104729) % (1 << 31)


def average_buffers(module: torch.nn.Module) -> None:
    """Average the floating buffers (BatchNorm running mean/var) over the ranks, in place; integer
    buffers (``num_batches_tracked``, equal on every rank) are left alone."""
    if not is_distributed():
        return
    bufs = [b for b in module.buffers() if b.is_floating_point()]
    if not bufs:
        return
    world = dist.get_world_size()
    dev = _comm_device(bufs[0].device)
    flat = torch.cat([b.detach().reshape(-1).to(dev, torch.float64) for b in bufs])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    offset = 0
    with torch.no_grad():
        for b in bufs:
            k = b.numel()
            b.copy_(flat[offset:offset + k].view_as(b).to(b.device, b.dtype))
            offset += k


# --------------------------------------------------------------------------- sharded loader
class ShardedBatchLoader(BatchLoader):
    """A :class:`~fastadv.data.BatchLoader` over rank ``rank``'s shard of every epoch
    (the distributed sampler of this package; see the module doc for the layout).

    ``batch_size`` is the per-rank batch. ``rank``/``world_size`` default to the process group's.
    Every rank gets ``ceil(N / world_size)`` samples per epoch (padding: the epoch's first
    positions repeated). ``set_epoch``, ``state_dict``, ``epoch_plan`` behave as in the base class
    (the plan is the global one, identical on every rank)."""

    def __init__(self, data, batch_size: int = 128, *, rank: Optional[int] = None,
                 world_size: Optional[int] = None, **kwargs):
        super().__init__(data, batch_size=batch_size, **kwargs)
        world_size = get_world_size() if world_size is None else world_size
        rank = get_rank() if rank is None else rank
        if not isinstance(world_size, int) or world_size < 1:
            raise UserError(f"world_size must be an int >= 1, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise UserError(f"rank must be an int in [0, {world_size}), got {rank!r}")
        self.rank, self.world_size = rank, world_size

    @property
    def num_shard_samples(self) -> int:
        """Samples this rank sees per epoch (padding included): ``ceil(N / world_size)``."""
        return math.ceil(self.images.shape[0] / self.world_size)

    @property
    def num_padded(self) -> int:
        """Samples repeated per epoch to even out the shards (``< world_size``)."""
        return self.num_shard_samples * self.world_size - self.images.shape[0]

    def __len__(self) -> int:
        s = self.num_shard_samples
        return s // self.batch_size if self.drop_last else math.ceil(s / self.batch_size)

    def shard_positions(self) -> Tensor:
        """Positions (into the epoch's permutation) of this rank's samples, in order."""
        n = self.images.shape[0]
        pos = torch.arange(n)
        if self.num_padded:
            pos = torch.cat([pos, pos[:self.num_padded] if self.num_padded <= n else
                             pos.repeat(math.ceil(self.num_padded / max(n, 1)))[:self.num_padded]])
        return pos[self.rank::self.world_size]

    def _this_process(self, perm, offsets, flips):
        pos = self.shard_positions()
        return (perm[pos], offsets[pos] if offsets is not None else None,
                flips[pos] if flips is not None else None)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed, "world_size": self.world_size}

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", rank={self.rank}, world_size={self.world_size})"


def shard_indices(n: int, rank: Optional[int] = None, world_size: Optional[int] = None) -> Tensor:
    """Evaluation sharding (no padding: counts are summed, so the result is exact):
    rows ``rank, rank + W, …`` of ``n``."""
    world_size = get_world_size() if world_size is None else world_size
    rank = get_rank() if rank is None else rank
    return torch.arange(rank, n, world_size)
