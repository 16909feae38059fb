"""Build official-format dataset files from the real pixels in ``../shared/data`` (tests only).

The shared folder (see its README) holds lossless PNG sprites and some official idx files. These
helpers write them back out in the official formats (CIFAR python batches, MNIST idx, SVHN .mat)
so the tests read real pixels through the real readers. The folder is ``<repo>/../shared/data``,
or ``$FASTADV_SHARED_DATA``; tests that need it skip with a reason only if it is absent.
"""
from __future__ import annotations

import gzip
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# md5 of the original, uncompressed train-images-idx3-ubyte (verify_data.py in the shared folder).
MNIST_TRAIN_IMAGES_RAW_MD5 = "6bbc9ace898e44ae57da46a324031adb"
# sha256 of CIFAR-10 test image 0's raw RGB bytes (HWC), a published value (verify_data.py).
CIFAR10_TEST0_SHA256 = "af12e1241a1e7a0c9ba326825279bef5fe961ceb5f95212a99f9b1f22711f913"


def shared_data_dir() -> Optional[Path]:
    p = Path(os.environ.get("FASTADV_SHARED_DATA") or REPO.parent / "shared" / "data")
    return p if p.is_dir() else None


def require_shared_data() -> Path:
    p = shared_data_dir()
    if p is None:
        pytest.skip("real test data not found: expected <repo>/../shared/data or $FASTADV_SHARED_DATA "
                    "(README, 'Real data for the tests')")
    return p


def _image():
    return pytest.importorskip("PIL.Image", reason="reading the shared PNG sprites needs Pillow")


def read_sprite(path: Path, n: int, h: int, w: int, c: int) -> np.ndarray:
    """A convnetjs sprite PNG (one image per row) → uint8 [n, h, w, c]."""
    a = np.array(_image().open(path))  # a writable copy (torch.from_numpy warns otherwise)
    return a.reshape(n, h, w, c)


def read_png(path: Path) -> np.ndarray:
    return np.array(_image().open(path))


def read_js_labels(path: Path) -> np.ndarray:
    return np.array([int(x) for x in re.findall(r"\d+", path.read_text())], dtype=np.int64)


def foolbox_samples(folder: Path):
    """``<dataset>_<NN>_<label>.png`` files → list of (index, label, pixels) sorted by index."""
    out = []
    for f in sorted(folder.iterdir()):
        _, i, y = f.stem.rsplit("_", 2)
        out.append((int(i), int(y), read_png(f)))
    return sorted(out, key=lambda t: t[0])


# ---------------------------------------------------------------------------- CIFAR
def cifar10_lossless(root: Path):
    """(train HWC uint8 [4000, 32, 32, 3], train labels, test [1000, ...], test labels)."""
    d = root / "cifar10" / "convnetjs"
    labels = read_js_labels(d / "cifar10_labels.js")
    train = np.concatenate([read_sprite(d / f"cifar10_batch_{k}.png", 1000, 32, 32, 3)
                            for k in range(4)])
    test = read_sprite(d / "cifar10_batch_50.png", 1000, 32, 32, 3)
    return train, labels[:4000], test, labels[50000:51000]


def _write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official batches are protocol-2 pickles


def _cifar_dict(images_hwc: np.ndarray, labels: np.ndarray, label_key: bytes, batch_label: str):
    # Official row layout: 1024 R values, then 1024 G, then 1024 B (each 32×32 row-major).
    data = np.ascontiguousarray(images_hwc.transpose(0, 3, 1, 2).reshape(len(images_hwc), 3072))
    return {b"batch_label": batch_label.encode(), label_key: [int(v) for v in labels],
            b"data": data, b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(labels))]}


def build_cifar10_batches(root: Path, dest: Path) -> dict:
    """Write ``dest/cifar-10-batches-py`` (data_batch_1..5 = the 4,000 lossless train images in
    5 batches of 800, test_batch = test 0..999, batches.meta); return the source arrays."""
    train, ytr, test, yte = cifar10_lossless(root)
    out = dest / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    for b in range(5):
        s = slice(800 * b, 800 * (b + 1))
        _write_pickle(out / f"data_batch_{b + 1}",
                      _cifar_dict(train[s], ytr[s], b"labels", f"training batch {b + 1} of 5"))
    _write_pickle(out / "test_batch", _cifar_dict(test, yte, b"labels", "testing batch 1 of 1"))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _write_pickle(out / "batches.meta", {b"label_names": [n.encode() for n in names],
                                         b"num_cases_per_batch": 800, b"num_vis": 3072})
    return {"train": train, "train_labels": ytr, "test": test, "test_labels": yte}


def build_cifar100(root: Path, dest: Path) -> dict:
    """Write ``dest/cifar-100-python/{train,test,meta}`` from the 20 real CIFAR-100 test images."""
    samples = foolbox_samples(root / "cifar100" / "foolbox")
    x = np.stack([s[2] for s in samples])
    y = np.array([s[1] for s in samples])
    out = dest / "cifar-100-python"
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        d = _cifar_dict(x, y, b"fine_labels", split)
        d[b"coarse_labels"] = [0] * len(y)
        _write_pickle(out / split, d)
    _write_pickle(out / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                                 b"coarse_label_names": [f"s{i}".encode() for i in range(20)]})
    return {"images": x, "labels": y}


# ---------------------------------------------------------------------------- MNIST-style idx
def idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding of a uint8 array: 0x00 0x00 0x08 ndim, big-endian uint32 dims, data."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return header + a.tobytes()


def build_mnist(root: Path, dest: Path) -> dict:
    """Write ``dest/mnist``: train images rebuilt from the sprites as an *uncompressed* idx file,
    the official train labels and t10k files copied as .gz. Returns the train images [60000, 28, 28]."""
    d = root / "mnist"
    train = np.concatenate([read_sprite(d / "convnetjs" / f"mnist_batch_{k}.png", 3000, 28, 28, 1)
                            for k in range(20)])[..., 0]
    out = dest / "mnist"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train-images-idx3-ubyte").write_bytes(idx_bytes(train))
    for f in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copyfile(d / f, out / f)
    return {"train": train}


def build_fashion_test(root: Path, dest: Path) -> dict:
    """Write ``dest/fashion-mnist/t10k-*`` holding the 20 real test images and the first 20 of the
    official test labels (gzipped idx, as distributed)."""
    d = root / "fashion-mnist"
    samples = foolbox_samples(d / "foolbox")
    x = np.stack([s[2] for s in samples])
    with gzip.open(d / "t10k-labels-idx1-ubyte.gz") as f:
        raw = f.read()
    labels = np.frombuffer(raw, dtype=np.uint8, offset=8)[: len(x)]
    out = dest / "fashion-mnist"
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(out / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(idx_bytes(x))
    with gzip.open(out / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(idx_bytes(labels))
    return {"images": x, "labels": labels, "file_labels": np.array([s[1] for s in samples])}


# ---------------------------------------------------------------------------- SVHN
def build_svhn_mat(path: Path, images_hwc: np.ndarray, digits: np.ndarray) -> None:
    """An SVHN-format .mat: X uint8 [32, 32, 3, N], y [N, 1] with the digit 0 stored as 10."""
    from scipy.io import savemat
    y = digits.astype(np.uint8).reshape(-1, 1).copy()
    y[y == 0] = 10
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"X": np.ascontiguousarray(images_hwc.transpose(1, 2, 3, 0)), "y": y})
