"""The errors that mean "the user asked for or gave something wrong", not "fastadv has a bug".

The command line prints a :class:`UserError` (and the ``ValueError``/``TypeError``/``OSError`` of a
bad option, file or folder) as one line and exits with status 2; any other exception is a bug and
keeps its traceback. Every class here is a ``ValueError``, so code that caught the ``ValueError``
of a bad argument keeps working.
"""
from __future__ import annotations


class UserError(ValueError):
    """A bad option, file, folder or input, in a message that says what to do about it."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used: unreadable, truncated, foreign, or for another model."""


class RunFolderError(UserError):
    """A run folder that cannot be used: it holds another run, is locked, unwritable or full."""


class DataIntegrityError(UserError):
    """A dataset file that is not the official file it claims to be (wrong checksum or contents)."""


class NonFiniteLossError(UserError):
    """The training loss became NaN or inf (non-finite data, or a learning rate that diverges)."""


def is_user_error(e: BaseException) -> bool:
    """The command line's rule: a :class:`UserError`, or the ``ValueError``/``TypeError``/
    ``OSError`` of a bad option, file or folder, or a failed download, is the user's to fix (one
    line, exit status 2); anything else is a bug (a traceback)."""
    from .data.download import DownloadError  # lazy: this module is imported by everything
    return isinstance(e, (ValueError, TypeError, OSError, DownloadError))
