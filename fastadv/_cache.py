"""fastadv's per-user cache folder: ``$XDG_CACHE_HOME/fastadv`` or ``~/.cache/fastadv``."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The folder for the just-in-time build's records and the dataset checksum stamps."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastadv"
