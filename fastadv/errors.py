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
