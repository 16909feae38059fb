"""Download with a progress bar, md5 verification and an atomic rename.

A file is written to ``<dest>.part-<pid>`` next to its destination, its md5 checked, and only then
renamed onto ``dest`` (``os.replace`` is atomic on one filesystem), so an interrupted or corrupt
download never leaves a file that looks valid. Failures raise :class:`DownloadError`.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
from typing import Callable, Optional

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A dataset file could not be fetched or failed its checksum."""


def md5sum(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def check_md5(path: str, md5: Optional[str]) -> bool:
    """True if ``path`` exists and (when ``md5`` is given) has that md5."""
    return os.path.isfile(path) and (md5 is None or md5sum(path) == md5.lower())


def download_url(url: str, dest: str, md5: Optional[str] = None, progress: bool = True,
                 opener: Optional[Callable] = None, timeout: float = 60.0) -> str:
    """Fetch ``url`` to ``dest`` unless a file with the right md5 is already there; return ``dest``.

    ``opener(url, timeout=...)`` defaults to ``urllib.request.urlopen`` (http, https, file URLs).
    """
    if check_md5(dest, md5):
        return dest
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tmp = f"{dest}.part-{os.getpid()}"
    opener = opener or urllib.request.urlopen
    h = hashlib.md5()
    try:
        with opener(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            total = resp.headers.get("Content-Length") if getattr(resp, "headers", None) else None
            bar = None
            if progress:
                from tqdm.auto import tqdm
                bar = tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                           unit_divisor=1024, desc=os.path.basename(dest))
            try:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(chunk)
                    h.update(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
        if md5 is not None and h.hexdigest() != md5.lower():
            raise DownloadError(f"md5 mismatch for {url}: got {h.hexdigest()}, expected {md5}; "
                                f"the download is corrupt or the file changed upstream "
                                f"(nothing was written to {dest})")
        os.replace(tmp, dest)  # atomic: dest is either absent or complete and verified
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DownloadError(f"could not download {url}: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def extract_tar(archive: str, dest_dir: str) -> None:
    """Extract a (gzipped) tar archive into ``dest_dir``, refusing members that escape it."""
    root = os.path.realpath(dest_dir)
    with tarfile.open(archive, "r:*") as tar:
        for m in tar.getmembers():
            target = os.path.realpath(os.path.join(dest_dir, m.name))
            if os.path.commonpath([root, target]) != root or m.issym() or m.islnk():
                raise DownloadError(f"{archive}: refusing unsafe member {m.name!r}")
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the stdlib's safe extraction too
            tar.extractall(dest_dir, filter="data")
        else:  # pragma: no cover - older Pythons; members were checked above
            tar.extractall(dest_dir)

