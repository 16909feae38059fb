"""The in-memory image dataset every reader returns."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor
from ..errors import UserError


class ImageDataset:
    """A whole image-classification split held in memory.

    ``images`` is a uint8 tensor [N, C, H, W] (the pixels exactly as stored in the official files),
    ``labels`` an int64 tensor [N] in ``0 … num_classes-1``. ``float_images()`` gives float32 in
    [0, 1] (``images / 255``), which is what every model and attack in fastadv expects.
    ``augment`` is the dataset's default training augmentation (see ``fastadv.data.loader``).
    """

    def __init__(self, images: Tensor, labels: Tensor, num_classes: int, name: str = "custom",
                 split: str = "train", classes: Optional[Sequence[str]] = None,
                 augment: Optional[dict] = None):
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise UserError(f"images must be a uint8 tensor [N, C, H, W], got "
                            f"{getattr(images, 'dtype', type(images))} of shape "
                            f"{tuple(getattr(images, 'shape', ()))}")
        if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise UserError(f"labels must be a tensor [N] with N = {images.shape[0]} (images), got "
                            f"shape {tuple(getattr(labels, 'shape', ()))}")
        labels = labels.to(torch.int64)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise UserError(f"labels must lie in [0, {num_classes - 1}] (num_classes={num_classes}), "
                            f"got range [{int(labels.min())}, {int(labels.max())}]")
        self.images = images.contiguous()
        self.labels = labels.contiguous()
        self.num_classes = int(num_classes)
        self.name = name
        self.split = split
        self.classes = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
        self.augment = dict(augment) if augment else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        """``(image float32 [C, H, W] in [0, 1], label int)``, like a torchvision dataset."""
        return self.images[i].float().div_(255), int(self.labels[i])

    @property
    def shape(self):
        """Per-image shape ``(C, H, W)``."""
        return tuple(self.images.shape[1:])

    def float_images(self) -> Tensor:
        """All images as float32 [N, C, H, W] in [0, 1]."""
        return self.images.float().div_(255)

    def subset(self, indices) -> "ImageDataset":
        """A new dataset with the rows ``indices`` (a slice, index tensor or list), same metadata."""
        if isinstance(indices, slice):
            images, labels = self.images[indices], self.labels[indices]
        else:
            idx = torch.as_tensor(indices, dtype=torch.int64)
            images, labels = self.images[idx], self.labels[idx]
        return ImageDataset(images, labels, self.num_classes, self.name, self.split, self.classes,
                            self.augment)

    def class_counts(self) -> Tensor:
        """Number of samples per class, int64 [num_classes]."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def __repr__(self) -> str:
        return (f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"shape={self.shape}, num_classes={self.num_classes})")
