"""Readers for the official file formats (no torchvision needed).

* MNIST / Fashion-MNIST **idx**: optional gzip, then a big-endian header ``0x00 0x00 <type> <ndim>``
  followed by ``ndim`` uint32 sizes, then the payload (type 0x08 = uint8, the only one used).
* CIFAR-10/100 **python batches**: a pickle of a dict with ``b'data'`` uint8 [N, 3072] (each row the
  1024 R, then G, then B values, row-major 32×32) and ``b'labels'`` (CIFAR-10) or
  ``b'fine_labels'``/``b'coarse_labels'`` (CIFAR-100). A pickle can name any function to call, so
  these are read by :class:`RestrictedUnpickler`, which builds only numpy arrays, bytes, strings,
  numbers, lists and dicts and refuses everything else (:class:`~fastadv.errors.DataIntegrityError`).
* SVHN **.mat** (cropped digits, format 2): ``X`` uint8 [32, 32, 3, N], ``y`` [N, 1] with the digit
  0 stored as label 10. Reading it needs SciPy.
"""
from __future__ import annotations

import codecs
import gzip
import io
import pickle
import zlib

import numpy as np
import torch

from ..errors import DataIntegrityError, MissingDependencyError, UserError

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_maybe_gzip(path: str) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == _GZIP_MAGIC else open  # decide by content, not by file name
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # truncated or damaged: the user's file
        raise DataIntegrityError(f"{path}: a damaged gzip file ({e}); delete it and download it "
                                 f"again") from e


def read_idx(path: str) -> np.ndarray:
    """Read an idx file (gzipped or not) into a numpy array of its declared shape."""
    raw = _read_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path}: not an idx file (bad magic {raw[:4]!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise UserError(f"{path}: idx header says shape {dims} ({expected} bytes of data) but the "
                        f"file holds {len(raw) - header} bytes (truncated or corrupt?)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def read_idx_images_labels(images_path: str, labels_path: str):
    """An MNIST-style pair of idx files → (uint8 [N, 1, H, W], int64 [N]) tensors."""
    x = read_idx(images_path)
    y = read_idx(labels_path)
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise UserError(f"{images_path} / {labels_path}: expected images [N, H, W] and labels [N], "
                        f"got {x.shape} and {y.shape}")
    return (torch.from_numpy(np.array(x, dtype=np.uint8)).unsqueeze(1),  # a writable copy
            torch.from_numpy(y.astype(np.int64)))


# What a CIFAR batch may build besides the pickle machine's own lists, dicts, strings and numbers:
# a numpy array (numpy's pickle calls _reconstruct(ndarray, shape, dtype), then sets its state),
# its dtype (protocol 5: _frombuffer(bytes, dtype, shape, order)), and the bytes of a Python 3 protocol-2 pickle (codecs.encode(text, "latin1")).
_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's own _reconstruct, wherever numpy keeps it


class _NDArrayType:
    """What the name ``numpy.ndarray`` unpickles to: a token only :func:`_ndarray` accepts (the
    real class, called directly, would build object-dtype arrays past :func:`_dtype`)."""


def _ndarray(subtype, shape, dtype):
    if subtype is not _NDArrayType:
        raise pickle.UnpicklingError(f"refusing to build an array of type {subtype!r}")
    return _RECONSTRUCT(np.ndarray, shape, _dtype(dtype))


def _dtype(spec, align=False, copy=True):
    dt = np.dtype(spec, align, copy)
    if dt.hasobject:  # an object array would unpickle arbitrary objects into its cells
        raise pickle.UnpicklingError("refusing an object-dtype array")
    return dt


def _frombuffer(buf, dtype, shape, order="C"):  # protocol 5's array (numpy's own _frombuffer)
    return np.frombuffer(buf, dtype=_dtype(dtype)).reshape(shape, order=order)


def _latin1(text, encoding="latin1"):
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refusing codecs.encode with {encoding!r}")
    return codecs.encode(text, "latin1")


_ALLOWED_GLOBALS = {
    **{(mod, "_reconstruct"): _ndarray for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(mod, "_frombuffer"): _frombuffer for mod in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): _NDArrayType,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays (no object dtype), bytes, str, numbers, lists and dicts
    only; any other global (``os.system``, ``builtins.eval``, a class) raises
    ``pickle.UnpicklingError`` before it is called (:func:`safe_pickle_load` reports it as a
    :class:`~fastadv.errors.DataIntegrityError`)."""

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a dataset pickle holds "
                                         f"arrays, strings, numbers, lists and dicts only") from None


def safe_pickle_load(path: str):
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (Python 2 pickles: ``str`` as bytes)."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # a refused global, a truncated file, or not a pickle at all
        raise DataIntegrityError(f"{path}: not a dataset pickle fastadv will read ({e})") from None


def read_cifar_batch(path: str, label_key: str = "labels"):
    """One CIFAR python batch → (uint8 [N, 3, 32, 32], int64 [N])."""
    d = safe_pickle_load(path)  # official batches are Python 2 pickles of bytes keys
    if not isinstance(d, dict):
        raise UserError(f"{path}: not a CIFAR python batch (a {type(d).__name__}, not a dict)")
    key = label_key.encode()
    if b"data" not in d or key not in d:
        raise UserError(f"{path}: not a CIFAR python batch with b'data' and b'{label_key}' "
                        f"(keys: {sorted(d)})")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path}: b'data' must be uint8 [N, 3072], got {data.shape}")
    labels = np.asarray(d[key], dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise UserError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    return (torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels))


def read_meta_names(path: str, key: str):
    """Class names from a CIFAR ``batches.meta``/``meta`` pickle (``key``: label_names/fine_label_names)."""
    d = safe_pickle_load(path)
    if not isinstance(d, dict) or key.encode() not in d:
        raise UserError(f"{path}: not a CIFAR meta file with b'{key}'")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in d[key.encode()]]


def read_svhn_mat(path: str):
    """An SVHN cropped-digits .mat file → (uint8 [N, 3, 32, 32], int64 [N] with 10 → 0)."""
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise MissingDependencyError(f"reading SVHN ({path}) needs SciPy: pip install scipy") from e
    try:
        m = loadmat(path)
    except Exception as e:  # noqa: BLE001 - scipy's errors for a damaged or foreign .mat file
        raise DataIntegrityError(f"{path}: not a readable SVHN .mat file ({type(e).__name__}: "
                                 f"{e}); delete it and download it again") from e
    if "X" not in m or "y" not in m:
        raise DataIntegrityError(f"{path}: an SVHN .mat file holds X and y, this one "
                                 f"{', '.join(k for k in m if not k.startswith('__'))}")
    x = np.asarray(m["X"], dtype=np.uint8)  # [32, 32, 3, N]
    y = np.asarray(m["y"], dtype=np.int64).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise UserError(f"{path}: expected X [32, 32, 3, N] and y [N, 1], got {x.shape}, {m['y'].shape}")
    y[y == 10] = 0  # SVHN stores the digit 0 as class 10
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))), torch.from_numpy(y)

