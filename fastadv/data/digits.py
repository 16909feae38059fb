"""scikit-learn's bundled 8×8 handwritten digits (offline; for demos and tests).

The UCI Optical Recognition of Handwritten Digits data (Alpaydin & Kaynak, 1998, CC BY 4.0):
1,797 greyscale 8×8 images, values 0..16, 10 classes. Pixels are mapped to uint8 by
``round(v * 255 / 16)`` (0 → 0, 16 → 255) and kept at 8×8 (small and fast; ``SmallCNN`` handles it).

Split (fixed and documented so results are comparable): stratified by class, seeded with
``DIGITS_SPLIT_SEED = 0``: within each class the samples are permuted with a ``torch.Generator``
seeded with ``DIGITS_SPLIT_SEED + class`` and the first ``round(0.2 * n_class)`` go to ``test``.
That gives 1,438 train and 359 test images, each split in ascending original order.
No default augmentation (as for MNIST): a 1-pixel shift is 12 % of an 8×8 image and slows
learning; ``SmallCNN`` + Adam(1e-3) reaches ~98 % test accuracy in 5 epochs (about 2 s on a CPU).
"""
from __future__ import annotations

import torch

from .dataset import ImageDataset
from ..errors import MissingDependencyError

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def _split_indices(labels: torch.Tensor, num_classes: int = 10):
    test = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        g = torch.Generator().manual_seed(DIGITS_SPLIT_SEED + c)
        perm = idx[torch.randperm(idx.numel(), generator=g)]
        test.append(perm[: int(round(DIGITS_TEST_FRACTION * idx.numel()))])
    test_mask = torch.zeros(labels.numel(), dtype=torch.bool)
    test_mask[torch.cat(test)] = True
    return torch.nonzero(~test_mask).flatten(), torch.nonzero(test_mask).flatten()


def load_digits(split: str = "train") -> ImageDataset:
    """The ``digits`` dataset, ``split`` in ``train``, ``test`` or ``all``."""
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("the 'digits' dataset needs scikit-learn: pip install scikit-learn "
                                     "(or pip install fastadv[digits])") from e
    raw = _sk_load_digits()
    values = torch.as_tensor(raw.images, dtype=torch.float64)  # [1797, 8, 8], 0..16
    images = torch.round(values * (255.0 / 16.0)).to(torch.uint8).unsqueeze(1)
    labels = torch.as_tensor(raw.target, dtype=torch.int64)
    if split != "all":
        train_idx, test_idx = _split_indices(labels)
        idx = train_idx if split == "train" else test_idx
        images, labels = images[idx], labels[idx]
    return ImageDataset(images, labels, 10, name="digits", split=split,
                        classes=[str(i) for i in range(10)], augment=None)
