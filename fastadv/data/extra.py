"""Extra (pseudo-labelled) training data, and batches that mix a share of it into every batch of
the labelled set: robust self-training (Carmon et al. 2019) as GAIR-RST uses it (official: half
of every batch from the 500k pseudo-labelled Tiny Images, yaircarmon/semisup-adv's sampler).

Files: ``.npz`` (arrays ``images`` or ``data``, and ``labels`` or ``extrapolated_targets``),
``.pt`` (a dict of the same tensors, read with ``weights_only=True``) or ``.pickle``/``.pkl``
(the official ``ti_500K_pseudo_labeled.pickle`` layout, read by the restricted unpickler:
arrays, numbers and strings only). Images are uint8, [N, C, H, W] or [N, H, W, C].
"""
from __future__ import annotations

import math
import os
from itertools import chain
from typing import Iterator

import numpy as np
import torch

from ..errors import UserError
from .dataset import ImageDataset

IMAGE_KEYS, LABEL_KEYS = ("images", "data"), ("labels", "extrapolated_targets")


def _fail(msg: str):
    raise UserError(f"extra_data: {msg}")


def _read(path: str) -> dict:
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npz", ".pt", ".pickle", ".pkl"):
        _fail(f"{path}: unknown file type {ext!r}; use .npz, .pt or .pickle")
    try:
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        if ext == ".pt":
            d = torch.load(path, map_location="cpu", weights_only=True)
        else:
            from .formats import safe_pickle_load
            d = safe_pickle_load(path)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: the user's, in one line
        _fail(f"{path} cannot be read as a {ext} file of arrays ({type(e).__name__}: "
              f"{str(e).splitlines()[0] if str(e) else e!r}); write images and labels with "
              f"numpy.savez or torch.save")
    if not isinstance(d, dict):
        _fail(f"{path} holds a {type(d).__name__}, not a dict of images and labels")
    return d


def load_extra_data(path: str, like: ImageDataset) -> ImageDataset:
    """The images and (pseudo-)labels of ``path`` as an :class:`ImageDataset` shaped like ``like``
    (its image shape, classes and augmentation). Errors name ``extra_data``."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        _fail(f"no file {path}")
    d = _read(path)
    img_key = next((k for k in IMAGE_KEYS if k in d), None)
    lab_key = next((k for k in LABEL_KEYS if k in d), None)
    if img_key is None or lab_key is None:
        _fail(f"{path} needs {' or '.join(IMAGE_KEYS)} and {' or '.join(LABEL_KEYS)}; it has "
              f"{', '.join(map(str, d)) or 'nothing'}")
    images = torch.as_tensor(np.asarray(d[img_key]))
    labels = torch.as_tensor(np.asarray(d[lab_key])).reshape(-1)
    if images.dtype != torch.uint8 or images.dim() != 4:
        _fail(f"images must be uint8 [N, C, H, W] or [N, H, W, C], got {images.dtype} "
              f"{tuple(images.shape)}")
    c, h, w = like.shape
    if tuple(images.shape[1:]) == (h, w, c) and tuple(images.shape[1:]) != (c, h, w):
        images = images.permute(0, 3, 1, 2)  # NHWC, the official pickles' layout
    if tuple(images.shape[1:]) != (c, h, w):
        _fail(f"images are {'×'.join(map(str, images.shape[1:]))}, the training set's "
              f"{c}×{h}×{w}")
    if labels.shape[0] != images.shape[0]:
        _fail(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        _fail(f"labels must be integers, got {labels.dtype}")
    labels = labels.to(torch.int64)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= like.num_classes):
        _fail(f"labels must lie in [0, {like.num_classes}) (unlabelled rows, -1, are not "
              f"supported: give pseudo-labels), got [{int(labels.min())}, {int(labels.max())}]")
    return ImageDataset(images.contiguous(), labels, like.num_classes, name=f"{like.name}+extra",
                        split="extra", classes=like.classes, augment=like.augment)


def fingerprint(ds: ImageDataset) -> str:
    """``"<N> images, sha1 <16 hex>"`` of the labels and every 64th image: what a resume compares
    to be sure it continues with the same extra data (cheap even for 500k images)."""
    import hashlib
    h = hashlib.sha1(ds.labels.numpy().tobytes())
    h.update(ds.images[::64].contiguous().numpy().tobytes())
    return f"{len(ds)} images, sha1 {h.hexdigest()[:16]}"


def extra_batch_size(batch_size: int, fraction: float) -> int:
    """Rows of each batch taken from the extra data: ``round(fraction·batch_size)``, at least 1
    and at most ``batch_size − 1`` (official: half)."""
    return min(max(int(round(fraction * batch_size)), 1), batch_size - 1)


class MixedBatchLoader:
    """Each batch: a batch of ``base`` (the labelled loader, ``B − b`` rows) followed by ``b`` rows
    of ``extra`` (a loader over the extra data with batch size ``b``, ``drop_last``). An epoch is
    one pass over the labelled data; the extra rows of epoch e come from the extra loader's epochs
    ``e·R … e·R + R − 1`` (R: as many as one labelled epoch needs), so every epoch's batches are
    a function of the seeds and e alone (an exact resume)."""

    def __init__(self, base, extra):
        if len(extra) == 0:
            raise UserError(f"extra_data: {extra.num_samples} extra images are fewer than the "
                            f"{extra.batch_size} each batch takes")
        self.base, self.extra = base, extra
        self.epoch = 0

    @property
    def batch_size(self) -> int:
        return self.base.batch_size + self.extra.batch_size

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.base.seed, "extra_seed": self.extra.seed}

    def epoch_batches(self, epoch: int) -> Iterator:
        rounds = math.ceil(len(self.base) / len(self.extra))
        extra = chain.from_iterable(self.extra.epoch_batches(epoch * rounds + r) for r in range(rounds))
        for (x, y), (xe, ye) in zip(self.base.epoch_batches(epoch), extra):
            yield torch.cat([x, xe]), torch.cat([y, ye])

    def __iter__(self) -> Iterator:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self.epoch_batches(epoch)

    def __repr__(self) -> str:
        return f"MixedBatchLoader(base={self.base!r}, extra={self.extra!r})"
