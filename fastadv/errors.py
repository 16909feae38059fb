"""The errors that mean "the user asked for or gave something wrong", not "fastadv has a bug".

Every check in fastadv raises a :class:`UserError` (or :class:`UserTypeError` for a value of the
wrong type); the command line prints those, the ``OSError`` of a file or folder and a failed
download as one line and exits with status 2. Any other exception, a plain ``ValueError`` or
``TypeError`` from inside torch or from fastadv's own code included, is a bug and keeps its
traceback (``--debug`` shows every traceback). Every class here is a ``ValueError`` (and
:class:`UserTypeError` also a ``TypeError``), so code that caught the built-in error of a bad
argument keeps working.
"""
from __future__ import annotations

import difflib
import errno
from typing import Iterable


class UserError(ValueError):
    """A bad option, file, folder or input, in a message that says what to do about it."""


class UserTypeError(UserError, TypeError):
    """An argument of the wrong type (a string where a bool belongs, an unknown keyword)."""


class MissingDependencyError(UserError, ImportError):
    """An optional package that this feature needs is not installed (the message says which)."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used: unreadable, truncated, foreign, or for another model."""


class RunFolderError(UserError):
    """A run folder that cannot be used: it holds another run, is locked, unwritable or full."""


class DataIntegrityError(UserError):
    """A dataset file that is not the official file it claims to be (wrong checksum or contents)."""


class NonFiniteLossError(UserError):
    """The training loss became NaN or inf (non-finite data, or a learning rate that diverges)."""


def did_you_mean(name, names: Iterable[str]) -> str:
    """`` (did you mean 'cifar10'?)`` for the closest of ``names`` to a mistyped ``name``, or ''."""
    close = difflib.get_close_matches(str(name).lower(), list(names), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# The errnos of a file or folder that the user can fix: missing, not allowed, read-only, full.
_USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP}


def is_user_error(e: BaseException) -> bool:
    """The command line's rule: a :class:`UserError`, the ``OSError`` of a file or folder that the
    user can fix (missing, not allowed, read-only, full), or a failed download is the user's to
    fix (one line, exit status 2); anything else is a bug (a traceback)."""
    from .data.download import DownloadError  # lazy: this module is imported by everything
    if isinstance(e, (UserError, DownloadError, FileNotFoundError, PermissionError,
                      IsADirectoryError, NotADirectoryError)):
        return True
    return isinstance(e, OSError) and (e.filename is not None or e.errno in _USER_ERRNOS)
