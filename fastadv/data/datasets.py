"""Dataset registry and :func:`load_dataset`.

On-disk layout under ``data_dir`` (default ``$FASTADV_DATA`` or ``~/.cache/fastadv``); the
torchvision layout is accepted too, so an existing torchvision download is reused:

==============  ===============================================  =================================
name            files fastadv reads                              also found at (torchvision)
==============  ===============================================  =================================
cifar10         ``cifar-10-batches-py/data_batch_{1..5}``,        same
                ``test_batch`` (python pickles)
cifar100        ``cifar-100-python/train``, ``test``             same
svhn            ``svhn/{train,test,extra}_32x32.mat``            ``<data_dir>/*_32x32.mat``
mnist           ``mnist/{train,t10k}-{images-idx3,labels-idx1}``  ``MNIST/raw/``
                ``-ubyte[.gz]``
fashion-mnist   ``fashion-mnist/`` (same names as mnist)         ``FashionMNIST/raw/``
digits          none (bundled with scikit-learn)
==============  ===============================================  =================================

Each split is one :class:`~fastadv.data.dataset.ImageDataset`; uint8 pixels exactly as stored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import formats
from .dataset import ImageDataset
from .digits import load_digits
from .download import DownloadError, download_url, extract_tar
from .integrity import verify_official
from ..errors import UserError, UserTypeError, did_you_mean

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]

# Official URLs and md5 sums (the same as torchvision's lists).
MNIST_MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"]
FASHION_MIRRORS = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
RESOURCES: Dict[str, Dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz":
                "c58f30108f718f92721af3b95e74349a"},
    "cifar100": {"https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz":
                 "eb9058c3a382ffc7106e4002c42a8d85"},
    "svhn": {
        "http://ufldl.stanford.edu/housenumbers/train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "http://ufldl.stanford.edu/housenumbers/test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
        "http://ufldl.stanford.edu/housenumbers/extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
    },
}


def default_data_dir() -> str:
    """``$FASTADV_DATA`` if set, else ``~/.cache/fastadv``."""
    return os.environ.get("FASTADV_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "fastadv")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    shape: Tuple[int, int, int]
    splits: Tuple[str, ...]
    # (data_dir, split, download, verify) -> dataset; verify: check the official checksums
    load: Callable[[str, str, bool, bool], ImageDataset]
    # Default training augmentation: RandomCrop(size, padding) [+ horizontal flip]; None = none.
    augment: Optional[dict] = None
    mean: Tuple[float, ...] = field(default=())
    std: Tuple[float, ...] = field(default=())


def _offline_error(name: str, where: str, files: Sequence[str], urls: Sequence[str], cause=None):
    lines = "\n".join(f"  {f}" for f in files)
    srcs = "\n".join(f"  {u}" for u in urls)
    return DownloadError(
        f"dataset {name!r} is not in {where} and could not be downloaded"
        f"{f' ({cause})' if cause else ''}.\nPut these files there:\n{lines}\n"
        f"(from:\n{srcs}\n) or pass data_dir=... / set $FASTADV_DATA to the folder that holds them.")


# ---------------------------------------------------------------------------- MNIST-style (idx)
def _find_idx(folder_candidates: List[str], stem: str) -> Optional[str]:
    for d in folder_candidates:
        for suffix in (".gz", ""):
            p = os.path.join(d, stem + suffix)
            if os.path.isfile(p):
                return p
    return None


def _load_idx_dataset(name: str, tv_name: str, mirrors: List[str], classes: List[str], augment,
                      data_dir: str, split: str, download: bool) -> ImageDataset:
    prefix = "train" if split == "train" else "t10k"
    stems = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    folder = os.path.join(data_dir, name)
    candidates = [folder, os.path.join(data_dir, tv_name, "raw")]
    paths = [_find_idx(candidates, s) for s in stems]
    if None in paths:
        gz = [s + ".gz" for s in stems]
        if not download:
            raise _offline_error(name, folder, gz, [m + f for m in mirrors[:1] for f in gz],
                                 "download=False")
        for f in gz:
            last = None
            for mirror in mirrors:
                try:
                    download_url(mirror + f, os.path.join(folder, f), RESOURCES[name][f])
                    break
                except DownloadError as e:
                    last = e
            else:
                raise _offline_error(name, folder, gz, [m + f for m in mirrors for f in gz], last)
        paths = [os.path.join(folder, f) for f in gz]
    x, y = formats.read_idx_images_labels(*paths)
    return ImageDataset(x, y, 10, name=name, split=split, classes=classes, augment=augment)


# ---------------------------------------------------------------------------- CIFAR
def _load_cifar(name: str, data_dir: str, split: str, download: bool, verify: bool) -> ImageDataset:
    if name == "cifar10":
        folder, files = "cifar-10-batches-py", (
            [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"])
        label_key, meta, meta_key, k = "labels", "batches.meta", "label_names", 10
    else:
        folder, files = "cifar-100-python", ["train" if split == "train" else "test"]
        label_key, meta, meta_key, k = "fine_labels", "meta", "fine_label_names", 100
    root = os.path.join(data_dir, folder)
    paths = [os.path.join(root, f) for f in files]
    if not all(os.path.isfile(p) for p in paths):
        (url, md5), = RESOURCES[name].items()
        if not download:
            raise _offline_error(name, root, files, [url], "download=False")
        archive = os.path.join(data_dir, os.path.basename(url))
        try:
            download_url(url, archive, md5)
        except DownloadError as e:
            raise _offline_error(name, root, files, [url + " (extract it into data_dir)"], e) from e
        extract_tar(archive, data_dir)
    for p in paths:
        verify_official(p, name, verify)  # before unpickling: a planted file is never read
    parts = [formats.read_cifar_batch(p, label_key) for p in paths]
    x = torch.cat([p[0] for p in parts])
    y = torch.cat([p[1] for p in parts])
    meta_path = os.path.join(root, meta)
    classes = CIFAR10_CLASSES if k == 10 else None
    if os.path.isfile(meta_path):
        verify_official(meta_path, name, verify)
        classes = formats.read_meta_names(meta_path, meta_key)
    return ImageDataset(x, y, k, name=name, split=split, classes=classes,
                        augment={"padding": 4, "flip": True})


# ---------------------------------------------------------------------------- SVHN
def _load_svhn(data_dir: str, split: str, download: bool, verify: bool) -> ImageDataset:
    fname = f"{split}_32x32.mat"
    folder = os.path.join(data_dir, "svhn")
    path = next((p for p in (os.path.join(folder, fname), os.path.join(data_dir, fname))
                 if os.path.isfile(p)), None)
    if path is None:
        url = next(u for u in RESOURCES["svhn"] if u.endswith(fname))
        if not download:
            raise _offline_error("svhn", folder, [fname], [url], "download=False")
        path = os.path.join(folder, fname)
        try:
            download_url(url, path, RESOURCES["svhn"][url])
        except DownloadError as e:
            raise _offline_error("svhn", folder, [fname], [url], e) from e
    x, y = formats.read_svhn_mat(path)
    return ImageDataset(x, y, 10, name="svhn", split=split, classes=[str(i) for i in range(10)],
                        augment={"padding": 4, "flip": False})  # no flip: digits are not symmetric


DATASETS: Dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32), ("train", "test"),
                           lambda d, s, dl, v: _load_cifar("cifar10", d, s, dl, v), {"padding": 4, "flip": True},
                           (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": DatasetInfo("cifar100", 100, (3, 32, 32), ("train", "test"),
                            lambda d, s, dl, v: _load_cifar("cifar100", d, s, dl, v),
                            {"padding": 4, "flip": True},
                            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": DatasetInfo("svhn", 10, (3, 32, 32), ("train", "test", "extra"), _load_svhn,
                        {"padding": 4, "flip": False},
                        (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    # MNIST-style: no augmentation by default, as in the FAT/TRADES MNIST recipes.
    "mnist": DatasetInfo("mnist", 10, (1, 28, 28), ("train", "test"),
                         lambda d, s, dl, v: _load_idx_dataset("mnist", "MNIST", MNIST_MIRRORS,
                                                            [str(i) for i in range(10)], None, d, s, dl),
                         None, (0.1307,), (0.3081,)),
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, (1, 28, 28), ("train", "test"),
                                 lambda d, s, dl, v: _load_idx_dataset("fashion-mnist", "FashionMNIST",
                                                                    FASHION_MIRRORS, FASHION_CLASSES,
                                                                    None, d, s, dl),
                                 None, (0.2860,), (0.3530,)),
    "digits": DatasetInfo("digits", 10, (1, 8, 8), ("train", "test", "all"),
                          lambda d, s, dl, v: load_digits(s), None),
}


def available_datasets() -> List[str]:
    return sorted(DATASETS)


def load_dataset(name: str, data_dir: Optional[str] = None, split: str = "train",
                 download: bool = True, verify: bool = True) -> ImageDataset:
    """Load one split of a dataset as an in-memory :class:`ImageDataset`.

    ``name``: ``cifar10``, ``cifar100``, ``svhn``, ``mnist``, ``fashion-mnist``, ``digits``.
    ``split``: ``train`` or ``test`` (``svhn`` also ``extra``; ``digits`` also ``all``).
    ``download``: fetch missing files (md5-verified) from the official URLs; if that is off or
    impossible, a :class:`DownloadError` says which files to put where.
    ``verify``: check the pickled CIFAR files against their official md5 before reading them
    (stamped after the first check; see :mod:`fastadv.data.integrity`); ``False`` for CIFAR-format
    files you made yourself. Pickles are always read by a restricted unpickler that builds data
    only, never code.
    """
    if not isinstance(name, str) or name.lower() not in DATASETS:
        raise UserError(f"dataset: unknown dataset {name!r}{did_you_mean(name, DATASETS)}; "
                        f"available: {', '.join(available_datasets())}")
    info = DATASETS[name.lower()]
    if split not in info.splits:
        raise UserError(f"split: {name!r} has splits {', '.join(info.splits)}, got {split!r}")
    data_dir = os.path.expanduser(os.fspath(data_dir)) if data_dir is not None else default_data_dir()
    for opt, v in (("download", download), ("verify", verify)):
        if not isinstance(v, bool):
            raise UserTypeError(f"{opt} must be True or False, got {v!r}")
    ds = info.load(data_dir, split, download, verify)
    if ds.shape != info.shape:
        raise UserError(f"{name} ({split}) in {data_dir}: expected images of shape {info.shape}, "
                        f"got {ds.shape}")
    return ds
