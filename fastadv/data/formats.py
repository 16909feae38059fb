"""Readers for the official file formats (no torchvision needed).

* MNIST / Fashion-MNIST **idx**: optional gzip, then a big-endian header ``0x00 0x00 <type> <ndim>``
  followed by ``ndim`` uint32 sizes, then the payload (type 0x08 = uint8, the only one used).
* CIFAR-10/100 **python batches**: a pickle of a dict with ``b'data'`` uint8 [N, 3072] (each row the
  1024 R, then G, then B values, row-major 32×32) and ``b'labels'`` (CIFAR-10) or
  ``b'fine_labels'``/``b'coarse_labels'`` (CIFAR-100).
* SVHN **.mat** (cropped digits, format 2): ``X`` uint8 [32, 32, 3, N], ``y`` [N, 1] with the digit
  0 stored as label 10. Reading it needs SciPy.
"""
from __future__ import annotations

import gzip
import pickle

import numpy as np
import torch

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_maybe_gzip(path: str) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == _GZIP_MAGIC else open  # decide by content, not by file name
    with opener(path, "rb") as f:
        return f.read()


def read_idx(path: str) -> np.ndarray:
    """Read an idx file (gzipped or not) into a numpy array of its declared shape."""
    raw = _read_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an idx file (bad magic {raw[:4]!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: idx header says shape {dims} ({expected} bytes of data) but the "
                         f"file holds {len(raw) - header} bytes (truncated or corrupt?)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def read_idx_images_labels(images_path: str, labels_path: str):
    """An MNIST-style pair of idx files → (uint8 [N, 1, H, W], int64 [N]) tensors."""
    x = read_idx(images_path)
    y = read_idx(labels_path)
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{images_path} / {labels_path}: expected images [N, H, W] and labels [N], "
                         f"got {x.shape} and {y.shape}")
    return (torch.from_numpy(np.array(x, dtype=np.uint8)).unsqueeze(1),  # a writable copy
            torch.from_numpy(y.astype(np.int64)))


def read_cifar_batch(path: str, label_key: str = "labels"):
    """One CIFAR python batch → (uint8 [N, 3, 32, 32], int64 [N])."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")  # official batches are Python 2 pickles of bytes keys
    key = label_key.encode()
    if b"data" not in d or key not in d:
        raise ValueError(f"{path}: not a CIFAR python batch with b'data' and b'{label_key}' "
                         f"(keys: {sorted(d)})")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: b'data' must be uint8 [N, 3072], got {data.shape}")
    labels = np.asarray(d[key], dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    return (torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels))


def read_meta_names(path: str, key: str):
    """Class names from a CIFAR ``batches.meta``/``meta`` pickle (``key``: label_names/fine_label_names)."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in d[key.encode()]]


def read_svhn_mat(path: str):
    """An SVHN cropped-digits .mat file → (uint8 [N, 3, 32, 32], int64 [N] with 10 → 0)."""
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise ImportError(f"reading SVHN ({path}) needs SciPy: pip install scipy") from e
    m = loadmat(path)
    x = np.asarray(m["X"], dtype=np.uint8)  # [32, 32, 3, N]
    y = np.asarray(m["y"], dtype=np.int64).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise ValueError(f"{path}: expected X [32, 32, 3, N] and y [N, 1], got {x.shape}, {m['y'].shape}")
    y[y == 10] = 0  # SVHN stores the digit 0 as class 10
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))), torch.from_numpy(y)

