"""A device-resident batch iterator with the papers' augmentation done on the device, in batch.

The whole dataset stays on ``device`` as uint8 (CIFAR-10 train: 150 MB), so an epoch costs one
gather + crop + flip + convert per batch and no host→device copies: the loader is never the
bottleneck of adversarial training (which runs 11+ forward/backward passes per batch).

Augmentation (``augment=``): ``RandomCrop(H×W, padding=p)`` with zero fill, then an optional
horizontal flip with probability ½, exactly torchvision's ``RandomCrop(32, padding=4)`` +
``RandomHorizontalFlip()`` used by the FAT/GAIRAT/TRADES/MART code:

* ``None``/``False``: none;  ``True``: the dataset's default (``ImageDataset.augment``: CIFAR
  crop 4 + flip, SVHN crop 4 no flip, MNIST/Fashion-MNIST/digits none; raw tensors: crop 4 + flip);
* ``"crop-flip"`` (padding 4 + flip), ``"crop"`` (padding 4), ``"flip"``;
* a dict ``{"padding": p, "flip": bool}``.

Reproducibility: epoch ``e`` draws its permutation, crop offsets and flips from a CPU
``torch.Generator`` seeded with ``(seed, e)`` alone, so the batches of an epoch are identical on
any device and whatever ran before. ``set_epoch(e)`` picks the epoch of the next ``iter()``;
without it each ``iter()`` uses the next epoch (0, 1, 2, …). A resumed run calls ``set_epoch``
(or ``load_state_dict``) and gets the same order; ``epoch_batches(e, start_batch=b)`` even resumes
mid-epoch.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .dataset import ImageDataset
from ..errors import UserError, UserTypeError

_NAMED_AUGMENT = {"crop-flip": {"padding": 4, "flip": True}, "crop": {"padding": 4, "flip": False},
                  "flip": {"padding": 0, "flip": True}}


def _epoch_seed(seed: int, epoch: int) -> int:
    # Mix (seed, epoch) so that neighbouring seeds do not share epochs' streams.
    return (int(seed) * 0x9E3779B97F4A7C15 + int(epoch) * 0xBF58476D1CE4E5B9 + 1) % (1 << 63)


def crop_flip(x: Tensor, offsets: Optional[Tensor], flips: Optional[Tensor], padding: int) -> Tensor:
    """Zero-padded random crop back to H×W at per-sample ``offsets`` [B, 2] (dy, dx in 0..2p), then
    mirror the samples where ``flips`` [B] is True. Any dtype; runs on x's device; a new tensor.

    Crop and flip are one gather: each output pixel's source index in the padded image is computed
    per sample (a flipped sample reads its source columns in reverse)."""
    b, c, h, w = x.shape
    if padding <= 0 or offsets is None:
        if flips is None:
            return x.clone()
        return torch.where(flips.view(-1, 1, 1, 1), x.flip(3), x)
    wp = w + 2 * padding
    xp = F.pad(x, (padding, padding, padding, padding)).view(b, c, -1)
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # [B, H] source rows
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # [B, W] source columns
    if flips is not None:
        cols = torch.where(flips.view(-1, 1), cols.flip(1), cols)
    src = (rows.unsqueeze(2) * wp + cols.unsqueeze(1)).view(b, 1, h * w)  # [B, 1, H*W] flat index
    return xp.gather(2, src.expand(b, c, h * w)).view(b, c, h, w)


def augment_batch(x: Tensor, padding: int = 4, flip: bool = True,
                  generator: Optional[torch.Generator] = None) -> Tensor:
    """Random crop (zero padding ``padding``) + optional horizontal flip of a batch [B, C, H, W].

    Random numbers come from ``generator`` (a CPU generator; default: the global one)."""
    if x.dim() != 4:
        raise UserError(f"x must be a batch [B, C, H, W], got shape {tuple(x.shape)}")
    if padding < 0:
        raise UserError(f"padding must be >= 0, got {padding}")
    b = x.shape[0]
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator).to(x.device)
    flips = (torch.randint(0, 2, (b,), generator=generator).bool().to(x.device) if flip else None)
    return crop_flip(x, offsets, flips, padding)


def _resolve_augment(augment, default) -> Optional[dict]:
    if augment is None or augment is False:
        return None
    if augment is True:
        return dict(default) if default else None  # the dataset's own default (may be none)
    if isinstance(augment, str):
        if augment not in _NAMED_AUGMENT:
            raise UserError(f"augment: unknown {augment!r}; use None, True, "
                            f"{', '.join(map(repr, _NAMED_AUGMENT))} or a dict(padding=, flip=)")
        return dict(_NAMED_AUGMENT[augment])
    if isinstance(augment, dict):
        extra = set(augment) - {"padding", "flip"}
        if extra:
            raise UserError(f"augment: unknown keys {sorted(extra)} (allowed: padding, flip)")
        p = augment.get("padding", 0)
        if not isinstance(p, int) or p < 0:
            raise UserError(f"augment: padding must be an int >= 0, got {p!r}")
        return {"padding": p, "flip": bool(augment.get("flip", False))}
    raise UserTypeError(f"augment must be None, bool, str or dict, got {type(augment).__name__}")


def unpack_batch(batch):
    """``(x, y)`` from a loader's batch: a tuple or list ``(x, y, ...)``, or a dict with the images
    under ``x``/``image``/``images``/``input``/``inputs`` and the labels under
    ``y``/``label``/``labels``/``target``/``targets``."""
    if isinstance(batch, dict):
        x = next((batch[k] for k in ("x", "image", "images", "input", "inputs") if k in batch), None)
        y = next((batch[k] for k in ("y", "label", "labels", "target", "targets") if k in batch), None)
        if x is None or y is None:
            raise UserTypeError(f"batch: a dict needs the images under 'x' (or image(s), "
                                f"input(s)) and the labels under 'y' (or label(s), target(s)); got "
                                f"keys {sorted(batch)}")
        return x, y
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise UserTypeError(f"batch: must be (x, y), (x, y, ...) or a dict with 'x' and 'y', got "
                        f"{type(batch).__name__}{f' of length {len(batch)}' if hasattr(batch, '__len__') else ''}")


class BatchLoader:
    """Iterate ``(x, y)`` batches: ``x`` float [B, C, H, W] in [0, 1] on ``device``, ``y`` int64.

    ``data``: an :class:`ImageDataset` or a tuple ``(images, labels)`` with images uint8 (0..255)
    or floating ([0, 1]) [N, C, H, W]. ``device``: default CUDA if available, else CPU.
    ``dtype``: of ``x`` (float32 default). ``channels_last``: return x in channels_last layout.
    ``return_index``: also yield the dataset row of each sample, ``(x, y, idx)``.
    """

    def __init__(self, data: Union[ImageDataset, Tuple[Tensor, Tensor]], batch_size: int = 128,
                 shuffle: bool = True, augment=None, device=None, drop_last: bool = False,
                 seed: int = 0, dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 return_index: bool = False):
        if isinstance(data, ImageDataset):
            images, labels, default_aug = data.images, data.labels, data.augment
        elif isinstance(data, (tuple, list)) and len(data) == 2:
            (images, labels), default_aug = data, _NAMED_AUGMENT["crop-flip"]
        else:
            raise UserTypeError(f"data must be an ImageDataset or a tuple (images, labels), "
                                f"got {type(data).__name__}")
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise UserError(f"data: images must be a tensor [N, C, H, W], got shape "
                            f"{tuple(getattr(images, 'shape', ()))}")
        if not (images.dtype == torch.uint8 or images.is_floating_point()):
            raise UserTypeError(f"data: images must be uint8 or floating, got {images.dtype}")
        if not isinstance(labels, Tensor) or labels.shape != (images.shape[0],):
            raise UserError(f"data: labels must be a tensor [{images.shape[0]}], got shape "
                            f"{tuple(getattr(labels, 'shape', ()))}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise UserError(f"batch_size must be a positive int, got {batch_size!r}")
        if not dtype.is_floating_point:
            raise UserTypeError(f"dtype must be a floating dtype, got {dtype}")
        self.device = torch.device(device if device is not None else
                                   ("cuda" if torch.cuda.is_available() else "cpu"))
        self.images = images.to(self.device).contiguous()  # resident for the loader's lifetime
        self.labels = labels.to(device=self.device, dtype=torch.int64)
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.augment = _resolve_augment(augment, default_aug)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.dtype = dtype
        self.channels_last = bool(channels_last)
        self.return_index = bool(return_index)
        self.epoch = 0

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return self.images.shape[0]

    def set_epoch(self, epoch: int) -> None:
        """The next ``iter()`` yields epoch ``epoch`` (its order and augmentation)."""
        if not isinstance(epoch, int) or epoch < 0:
            raise UserError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]))

    def epoch_plan(self, epoch: int):
        """(permutation [N], crop offsets [N, 2] or None, flips [N] or None) of ``epoch``, on CPU."""
        n = self.images.shape[0]
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        perm = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        offsets = flips = None
        if self.augment and self.augment["padding"] > 0:
            offsets = torch.randint(0, 2 * self.augment["padding"] + 1, (n, 2), generator=g)
        if self.augment and self.augment["flip"]:
            flips = torch.randint(0, 2, (n,), generator=g).bool()
        return perm, offsets, flips

    def epoch_batches(self, epoch: int, start_batch: int = 0) -> Iterator:
        """The batches of ``epoch``, from batch number ``start_batch`` on."""
        perm, offsets, flips = self._this_process(*self.epoch_plan(epoch))
        # One host->device copy per epoch for the random plan; the rest stays on the device.
        perm = perm.to(self.device)
        offsets = offsets.to(self.device) if offsets is not None else None
        flips = flips.to(self.device) if flips is not None else None
        padding = self.augment["padding"] if self.augment else 0
        n, bs = perm.shape[0], self.batch_size
        for b in range(start_batch, len(self)):
            lo, hi = b * bs, min((b + 1) * bs, n)
            idx = perm[lo:hi]
            x = self.images.index_select(0, idx)
            if offsets is not None or flips is not None:
                x = crop_flip(x, offsets[lo:hi] if offsets is not None else None,
                              flips[lo:hi] if flips is not None else None, padding)
            x = x.to(self.dtype)
            if self.images.dtype == torch.uint8:
                x = x.div_(255)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = self.labels.index_select(0, idx)
            yield (x, y, idx) if self.return_index else (x, y)

    def _this_process(self, perm, offsets, flips):
        """The part of an epoch's plan that this process trains on: all of it here (the
        distributed ``ShardedBatchLoader`` takes its rank's shard)."""
        return perm, offsets, flips

    def __iter__(self) -> Iterator:
        epoch = self.epoch
        self.epoch = epoch + 1  # a plain loop over epochs advances automatically
        return self.epoch_batches(epoch)

    def __repr__(self) -> str:
        return (f"BatchLoader(n={self.num_samples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, augment={self.augment}, device={self.device}, "
                f"drop_last={self.drop_last}, seed={self.seed}, epoch={self.epoch})")
