"""The official checksums of the pickled dataset files, verified on every read.

A CIFAR batch is a pickle, and reading a pickle is the one step where a planted file could do harm;
:class:`~fastadv.data.formats.RestrictedUnpickler` already refuses anything but arrays, strings,
numbers, lists and dicts. On top of that every CIFAR file is checked against the official md5
(the values torchvision uses) each time it is read. Hashing 180 MB on every run would cost about a
second, so a file that passed is stamped: its path, size, inode and change times go to
``<cache>/verified-files.json`` in the user's own cache folder (never beside the data, where whoever
planted a file could plant a stamp), and a file whose stamp still matches is not hashed again.
Any change to the file (its contents, a rename, a ``touch``) changes a time and forces a new hash.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Dict, Optional

from .._cache import cache_dir
from ..errors import DataIntegrityError
from .download import md5sum

OFFICIAL_MD5: Dict[str, Dict[str, str]] = {
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    "cifar100": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
}

_STAMPS = "verified-files.json"


def _stamp(path: str, md5: str) -> list:
    st = os.stat(path)
    return [md5, st.st_size, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns]


def _read_stamps() -> dict:
    try:
        with open(cache_dir() / _STAMPS) as f:
            stamps = json.load(f)
        return stamps if isinstance(stamps, dict) else {}
    except (OSError, ValueError):
        return {}  # no stamps yet, or a damaged file: hash again


def _write_stamps(stamps: dict) -> None:
    """Best effort (a stamp only saves time): a read-only cache just means hashing next time."""
    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{_STAMPS}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump(stamps, f)
        os.replace(tmp, folder / _STAMPS)
    except OSError:
        pass


def verify_official(path: str, dataset: str, verify: bool = True) -> None:
    """Raise :class:`DataIntegrityError` unless ``path`` is the official file of ``dataset`` with
    its name (an md5 check, skipped while the file's stamp is unchanged). ``verify=False``: no
    check (a file you made yourself; it is still read by the restricted unpickler)."""
    md5: Optional[str] = OFFICIAL_MD5[dataset].get(os.path.basename(path))
    if not verify or md5 is None:
        return
    key = os.path.realpath(path)
    stamps = _read_stamps()
    if stamps.get(key) == _stamp(path, md5):
        return
    got = md5sum(path)
    if got != md5:
        raise DataIntegrityError(
            f"{path}: not the official {dataset} file (md5 {got}, expected {md5}); delete it to "
            f"download it again, or, for a file you made yourself, pass verify_data=False (load_dataset: verify=False)")
    stamps[key] = _stamp(path, md5)
    _write_stamps(stamps)
