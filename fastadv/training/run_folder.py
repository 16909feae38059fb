"""The run folder: where a run's files live, and what fastadv guarantees about them.

``fastadv train`` writes ``last.pt`` (every epoch), ``best.pt`` (when PGD-20 accuracy improves),
``history.json`` and ``history.csv`` into one folder. :class:`RunFolder` makes that safe:

* **Checked before any work.** A path that is a file, a folder that cannot be created or written
  to, fails at once with one line (:class:`~fastadv.errors.RunFolderError`), not after an epoch.
* **One run at a time.** The folder is locked (``flock`` on ``.fastadv-lock``, released by the
  operating system when the process ends, however it ends); a second run refuses in one line.
* **Nothing replaced by accident.** A folder that holds a run is written to only to resume it or
  when told to overwrite it (see :func:`fastadv.train`).
* **Atomic files.** Each file is written to a temporary file with a unique name in the same folder,
  flushed to disk, then renamed over the old one: a crash, a kill or a full disk leaves the previous
  file whole. A failed write removes its temporary file; temporaries left by a killed process are
  removed when the next run takes the lock.

Lock caveat: ``flock`` is reliable on local disks; some network filesystems do not share it
between machines.
"""
from __future__ import annotations

import datetime
import errno
import os
import re
import shutil
import socket
import tempfile
from typing import BinaryIO, Callable, List

from ..errors import RunFolderError

RUN_FILES = ("last.pt", "best.pt", "history.json", "history.csv")
LOCK_FILE = ".fastadv-lock"
# The files fastadv's commands write beside a run's checkpoints (eval, detect, plot, audit-labels).
_DERIVED = re.compile(r"^(?:eval_.*\.json|detect_.*\.json|curves\.png|label_audit\.(?:csv|png))$")
# atomic_write's temporaries ("last.pt.k2j3_x.tmp") and those of older versions ("last.pt.tmp").
_TEMPORARY = re.compile(r"^(?:%s)\.(?:[A-Za-z0-9_]+\.)?tmp$" % "|".join(map(re.escape, RUN_FILES)))


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` by ``write(file)`` into a uniquely named temporary file beside it, fsync, then
    ``os.replace`` (atomic on POSIX and Windows). On any failure the temporary file is removed and
    ``path`` is untouched; an ``OSError`` (a full disk, a read-only folder) is raised as a
    :class:`RunFolderError` naming the file."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise RunFolderError(f"{path}: could not write it ({e.strerror or e})") from e
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; a run's files get the umask's usual mode
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise RunFolderError(f"{path}: could not write it ({e.strerror or e}); the previous "
                                 f"{name}, if any, is intact") from e
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


class RunFolder:
    """A run folder, checked and locked by :meth:`open` (or ``with RunFolder(path):``)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        self._lock = None  # the open lock file while we hold the lock
        self._created = False  # open() made the folder: close() removes it if nothing was written

    def __repr__(self) -> str:
        return f"RunFolder({self.path!r}, locked={self.locked})"

    @property
    def locked(self) -> bool:
        return self._lock is not None

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    # ------------------------------------------------------------------ checks
    def check_writable(self) -> None:
        """Create the folder if needed and prove that a file can be written in it."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunFolderError(f"out_dir: {self.path} exists and is not a folder; choose another "
                                 f"out_dir")
        try:
            os.makedirs(self.path, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=self.path)
            os.close(fd)
            os.remove(probe)
        except OSError as e:
            raise RunFolderError(f"out_dir: cannot write in {self.path} ({e.strerror or e}); choose "
                                 f"a folder you can write to") from e

    def check_free_space(self, model, optimizer=None) -> None:
        """Refuse to start when the disk cannot hold this run's checkpoints: last.pt and best.pt,
        plus the temporary file of a save (the model's tensors and the optimizer's per-parameter
        state: SGD's momentum buffer, Adam's two moments)."""
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        per_param = 0
        for g in (optimizer.param_groups if optimizer is not None else ()):
            per_param = max(per_param, 2 if "betas" in g else int(bool(g.get("momentum"))))
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        need = (size + per_param * params) * (3 - sum(
            os.path.isfile(self.file(n)) for n in ("last.pt", "best.pt")))
        free = shutil.disk_usage(self.path).free
        if free < need:
            raise RunFolderError(f"out_dir: only {free / 2**20:.1f} MB free on the disk of "
                                 f"{self.path}; this run needs about {need / 2**20:.1f} MB for "
                                 f"its checkpoints (last.pt, best.pt and a temporary copy while "
                                 f"saving); free some space or choose another out_dir")

    def run_files(self) -> List[str]:
        """The run files present (``last.pt``, ``best.pt``, ``history.json``, ``history.csv``)."""
        return [n for n in RUN_FILES if os.path.isfile(self.file(n))]

    # ------------------------------------------------------------------ the lock
    def open(self) -> "RunFolder":
        """Check the folder, take its lock (or raise naming the process that holds it), and remove
        temporary files that a killed run left behind."""
        created = not os.path.isdir(self.path)
        self.check_writable()
        for _ in range(10):
            try:
                lock = open(self.file(LOCK_FILE), "a+")
            except OSError as e:
                raise RunFolderError(f"out_dir: cannot create the lock file in {self.path} "
                                     f"({e.strerror or e})") from e
            try:
                _try_lock(lock)
            except OSError as e:
                busy = e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                lock.close()
                if not busy:  # e.g. ENOLCK: a filesystem without locks
                    raise RunFolderError(f"out_dir: cannot lock {self.path} ({e.strerror or e}); "
                                         f"choose a folder on a local disk") from e
                raise RunFolderError(f"out_dir: {self.path} is in use by another run ({holder}); "
                                     f"wait for it to finish or choose another out_dir") from None
            # A run that closed meanwhile may have removed the file we locked: lock the new one.
            try:
                same = os.fstat(lock.fileno()).st_ino == os.stat(self.file(LOCK_FILE)).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            lock.close()
        else:
            raise RunFolderError(f"out_dir: could not lock {self.path} (its lock file keeps "
                                 f"changing)")
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                   f"{datetime.datetime.now().isoformat(timespec='seconds')}\n")
        lock.flush()
        self._lock = lock
        self._created = created
        self.remove_stale_temporaries()
        return self

    def close(self) -> None:
        """Release the lock (the operating system also releases it when the process ends); a
        folder that :meth:`open` created and nothing was written to is removed."""
        if self._lock is not None:
            # A folder this run created and wrote nothing to (it failed first) is removed again.
            if self._created and os.listdir(self.path) == [LOCK_FILE]:
                try:
                    os.remove(self.file(LOCK_FILE))
                    os.rmdir(self.path)
                except OSError:  # another process got in meanwhile: leave the folder to it
                    pass
            _unlock(self._lock)
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "RunFolder":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ changes (under the lock)
    def remove_stale_temporaries(self) -> List[str]:
        """Delete temporaries of :func:`atomic_write` left by a killed run; only safe under the lock."""
        removed = []
        for name in os.listdir(self.path):
            if _TEMPORARY.match(name):
                os.remove(self.file(name))
                removed.append(name)
        return removed

    def clear(self) -> List[str]:
        """Delete the run files (``overwrite``), and what fastadv's commands derived from them
        (``eval_*.json``, ``detect_*.json``, ``curves.png``, ``label_audit.*``): the new run must
        not inherit an old ``best.pt`` or sit beside the old run's results."""
        self._require_lock()
        names = self.run_files() + sorted(n for n in os.listdir(self.path) if _DERIVED.match(n))
        for n in names:
            os.remove(self.file(n))
        return names

    def _require_lock(self) -> None:
        if self._lock is None:
            raise RuntimeError("RunFolder: take the lock (open()) before changing the folder")


def _try_lock(f) -> None:
    """An exclusive, non-blocking lock on the open file ``f``; ``OSError`` if someone holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock(f) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_UN)

